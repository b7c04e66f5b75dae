//! Performance numbers from the simulator (issue #7, items 5–7):
//!
//! 5. time from `request_punch` to a direct path across RTTs, against the
//!    theoretical minimum, with the adaptive lead (R9) and with the original
//!    protocol's fixed 500 ms lead, side by side in the same run;
//! 6. keep-alive packets per successful punch with R10, against trains that
//!    run to the deadline (acks withheld, as in the original protocol);
//! 7. simulator speed: the full pair matrix, and 10,000 simulated punches
//!    (every run dials four real Noise IK sessions, so most of the time is
//!    the sessions' crypto);
//! 8. connections (issue #13): the one-way latency the relay adds, and the
//!    time from a direct path going dark to traffic on the relay, against
//!    the configured dead-path timeout.
//!
//! `cargo run --release -p natrix-sim --example perf`

use std::time::{Duration, Instant as WallClock};

use natrix_proto::Config;
use natrix_session::path::{ChangeReason, PathConfig, PathEvent, PathKind};
use natrix_sim::LinkConfig;
use natrix_sim::preset::Preset;
use natrix_sim::scenario::{Outcome, PairScenario, Traffic, topology};
use natrix_sim::{HostId, World};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

fn main() {
    let adaptive = Config::default();
    // The original protocol: always a 500 ms lead. A margin equal to the lead
    // makes R9 choose min(500, rtt/2 + 500) = 500.
    let fixed = Config::builder()
        .fire_lead_margin(Duration::from_millis(500))
        .build()
        .expect("valid");

    println!("5. Time to a direct path (restricted cone x port-restricted cone)");
    println!("   every host has one-way access latency RTT/4, so every RTT is the column value");
    println!(
        "   {:>7} {:>9} {:>12} {:>10} {:>10} {:>10}",
        "RTT", "minimum", "1.2x+10ms", "adaptive", "fixed-500", "target"
    );
    for rtt in [10u64, 20, 50, 100, 200, 300] {
        let one_way = Duration::from_micros(rtt * 1_000 / 4);
        // Request to R, introduce to the farther end, one keep-alive across:
        // each is one host-to-host crossing of RTT/2.
        let minimum = Duration::from_micros(rtt * 1_000 / 2 * 3);
        let target = minimum.mul_f64(1.2) + Duration::from_millis(10);
        let mut times = Vec::new();
        for config in [&adaptive, &fixed] {
            let mut s = PairScenario::new(Preset::RestrictedCone, Preset::PortRestrictedCone);
            s.latency = [one_way; 3];
            s.config = config.clone();
            let r = s.run(1);
            assert_eq!(r.outcome, Outcome::Punched);
            times.push(r.time_to_direct.expect("punched"));
        }
        println!(
            "   {:>5}ms {:>7.1}ms {:>10.1}ms {:>8.1}ms {:>8.1}ms {:>10}",
            rtt,
            ms(minimum),
            ms(target),
            ms(times[0]),
            ms(times[1]),
            if times[0] <= target { "met" } else { "MISSED" }
        );
    }

    println!();
    println!("6. Keep-alive packets per successful punch (both sides, 10 ms links)");
    for (a, b) in [
        (Preset::FullCone, Preset::FullCone),
        (Preset::PortRestrictedCone, Preset::PortRestrictedCone),
        (Preset::RestrictedCone, Preset::Symmetric),
    ] {
        let mut counts = Vec::new();
        for drop_acks in [false, true] {
            let mut s = PairScenario::new(a, b);
            s.drop_acks = drop_acks;
            let r = s.run(1);
            assert_eq!(r.outcome, Outcome::Punched);
            counts.push(r.keepalives);
        }
        println!(
            "   {:<16} x {:<16} with R10: {:>3}   train to the deadline: {:>3}",
            a.name(),
            b.name(),
            counts[0],
            counts[1]
        );
    }

    println!();
    println!("7. Simulator speed");
    let t = WallClock::now();
    let mut cells = 0;
    for a in Preset::ALL {
        for b in Preset::ALL {
            let _ = PairScenario::new(a, b).run(1);
            cells += 1;
        }
    }
    println!("   full pair matrix ({cells} cells): {:.1?}", t.elapsed());
    let t = WallClock::now();
    let mut s = PairScenario::new(Preset::PortRestrictedCone, Preset::RestrictedCone);
    s.link = LinkConfig {
        loss: 0.1,
        duplicate: 0.01,
        jitter: Duration::from_millis(5),
        ..LinkConfig::default()
    };
    let mut punched = 0;
    for seed in 0..10_000 {
        if s.run(seed).outcome == Outcome::Punched {
            punched += 1;
        }
    }
    println!(
        "   10,000 simulated punches (10% loss, each with its own topology, four session handshakes and classification): {:.1?} ({punched} punched)",
        t.elapsed()
    );

    println!();
    connections();
}

/// Mean one-way latency of the datagrams `to` received from `from` over
/// `kind`, among those sent at or after `since`.
fn latency(
    w: &World,
    tr: &Traffic,
    dir: usize,
    to: HostId,
    from: HostId,
    kind: PathKind,
    since: natrix_proto::Instant,
) -> Option<Duration> {
    let from = w.id(from);
    let (mut sum, mut n) = (Duration::ZERO, 0u32);
    for d in w
        .host(to)
        .conns
        .inbox
        .iter()
        .filter(|d| d.from == from && d.kind == kind)
    {
        let seq = u64::from_be_bytes(d.bytes.get(..8)?.try_into().ok()?);
        let sent = tr.sent_at(dir, seq)?;
        if sent >= since {
            sum += d.at.saturating_duration_since(sent);
            n += 1;
        }
    }
    (n > 0).then(|| sum / n)
}

fn connections() {
    println!(
        "8. Connections (restricted cone x port-restricted cone; every access link 10 ms one way)"
    );
    let config = Config::default();
    let dead_after = PathConfig::default().dead_after;
    let (mut direct, mut relayed) = (Vec::new(), Vec::new());
    let mut fallbacks = Vec::new();
    let mut worst_gap = Duration::ZERO;
    let seeds = 20u64;
    for seed in 0..seeds {
        let mut t = topology(
            seed,
            Preset::RestrictedCone,
            Preset::PortRestrictedCone,
            LinkConfig::default(),
            [Duration::from_millis(10); 3],
            &config,
        );
        let (a, b, r) = (t.a.host, t.b.host, t.r);
        let w = &mut t.world;
        w.open_connection(a, b, r).expect("opens");
        let mut tr = Traffic::new(a, b, Duration::from_millis(20));
        tr.run(w, Duration::from_secs(3));
        let steady = w.now();
        tr.run(w, Duration::from_secs(3));
        if let Some(l) = latency(w, &tr, 0, b, a, PathKind::Direct, steady) {
            direct.push(l);
        }
        let dark = w.now();
        w.set_blackhole(a, b, true);
        tr.run(w, Duration::from_secs(12));
        for h in [a, b] {
            let moved = w.host(h).conns.events.iter().find_map(|(at, e)| match e {
                PathEvent::Changed {
                    reason: ChangeReason::DirectDead,
                    ..
                } if *at >= dark => Some(*at),
                _ => None,
            });
            if let Some(m) = moved {
                fallbacks.push(m.saturating_duration_since(dark));
            }
        }
        let on_relay = dark + Duration::from_secs(9);
        if let Some(l) = latency(w, &tr, 0, b, a, PathKind::Relayed, on_relay) {
            relayed.push(l);
        }
        w.run_for(Duration::from_secs(1));
        worst_gap = worst_gap.max(tr.report(w).loss_window[0]);
    }
    let mean =
        |v: &[Duration]| v.iter().sum::<Duration>() / u32::try_from(v.len().max(1)).unwrap_or(1);
    let (d, r) = (mean(&direct), mean(&relayed));
    println!(
        "   one-way latency, steady state ({seeds} seeds): direct {:.1} ms, relayed {:.1} ms: the relay adds {:.1} ms ({:.2}x)",
        ms(d),
        ms(r),
        ms(r.saturating_sub(d)),
        r.as_secs_f64() / d.as_secs_f64().max(f64::EPSILON)
    );
    let max = fallbacks.iter().max().copied().unwrap_or_default();
    let min = fallbacks.iter().min().copied().unwrap_or_default();
    println!(
        "   direct path dark -> traffic on the relay ({} ends): min {:.0} ms, mean {:.0} ms, max {:.0} ms; dead_after {:.0} ms; max / dead_after = {:.2} (goal <= 1.5)",
        fallbacks.len(),
        ms(min),
        ms(mean(&fallbacks)),
        ms(max),
        ms(dead_after),
        max.as_secs_f64() / dead_after.as_secs_f64()
    );
    println!(
        "   longest run of lost datagrams (A -> B, any seed): {:.0} ms",
        ms(worst_gap)
    );
    assert_eq!(fallbacks.len(), 2 * seeds as usize, "every end fell back");
}
