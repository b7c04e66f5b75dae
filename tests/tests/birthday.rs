//! N2: birthday punching's success curve, measured in the simulator beside
//! the birthday prediction (`natrix_proto::spray::birthday_success`).
//!
//! The hard side sits behind the simulator's symmetric NAT with random port
//! allocation (address-and-port-dependent mapping and filtering): its
//! `SprayMachine` opener sends one datagram from each of `n` sockets to the
//! easy side's reflex, each making a mapping on a random port that admits
//! exactly that reflex. Then the easy side's prober (its reflex stable, a
//! public address here) sends `k` probes to distinct random ports of the
//! hard side's IP; a probe the NAT lets in is a success, which ends the
//! attempt. Both machines run under their caps in virtual time. 1,000 seeds
//! per point; the seeds are fixed, so the numbers are too.
//!
//! `cargo test -p natrix-tests --test birthday -- --nocapture` prints the
//! table `docs/performance.md` shows.
#![allow(missing_docs)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use natrix_proto::spray::{SprayConfig, SprayMachine, SprayOutcome, SpraySide, birthday_success};
use natrix_proto::wire::NodeId;
use natrix_proto::{Instant, Rng};
use natrix_sim::nat::{Filtering, Mapping, Nat, NatConfig, PortAllocation};

const SEEDS: u64 = 1000;

/// One punch: whether a probe got in, how many probes it took, and the
/// virtual time from the first probe to the hit.
fn punch(seed: u64, sockets: u16, probes: u16) -> (bool, u16, Duration) {
    let hard_ip: IpAddr = "203.0.113.7".parse().unwrap();
    let easy: SocketAddr = "198.51.100.9:4000".parse().unwrap();
    let mut nat = Nat::new(
        NatConfig::new(
            Mapping::AddressAndPortDependent,
            Filtering::AddressAndPortDependent,
        )
        .allocation(PortAllocation::Random),
        hard_ip,
    );
    let mut nat_rng = Rng::new(seed ^ 0x006e_6174);
    let config = SprayConfig {
        sockets,
        max_probes: probes,
        ..SprayConfig::default()
    };
    let (hard, easy_id) = (NodeId(1), NodeId(2));
    // The hard side: every socket sends once toward the easy reflex.
    let mut opener = SprayMachine::new(config, seed);
    opener
        .start(Instant::ZERO, easy_id, SpraySide::Opener, easy, easy.ip())
        .expect("the easy side's session IP");
    // Virtual time jumps from one due datagram (or deadline) to the next.
    let mut now = Instant::ZERO;
    while opener.stats().datagrams < u64::from(sockets) {
        while let Some(t) = opener.poll_transmit(now) {
            let internal = SocketAddr::new("10.0.0.2".parse().unwrap(), 40_000 + t.socket);
            nat.outbound(now, internal, t.to, &mut nat_rng);
        }
        match opener.poll_timeout() {
            Some(next) if next > now => now = next,
            _ => break,
        }
    }
    // The easy side probes the hard side's IP.
    let mut prober = SprayMachine::new(config, seed.rotate_left(17));
    let started = now;
    prober
        .start(
            now,
            hard,
            SpraySide::Prober,
            SocketAddr::new(hard_ip, 9),
            hard_ip,
        )
        .expect("the hard side's session IP");
    loop {
        while let Some(t) = prober.poll_transmit(now) {
            if nat.inbound(now, easy, t.to.port()).is_some() {
                prober.handle_success(hard, t.to);
            }
        }
        if let Some(e) = prober.poll_event() {
            let hit = matches!(e.outcome, SprayOutcome::Succeeded { .. });
            return (hit, e.sent, now.saturating_duration_since(started));
        }
        // The next probe, or the deadline (which ends the attempt).
        now = prober.poll_timeout().map_or(now, |next| next.max(now));
        prober.handle_timeout(now);
    }
}

#[test]
fn n2_simulated_success_follows_the_birthday_curve() {
    println!(
        "| sockets | probes | predicted | measured (1000 seeds) | mean probes to a hit | mean time to a hit |"
    );
    println!("|---|---|---|---|---|---|");
    for (sockets, probes) in [(64, 256), (128, 256), (256, 128), (256, 256), (256, 512)] {
        let (mut hits, mut probes_used, mut time) = (0u64, 0u64, Duration::ZERO);
        for seed in 0..SEEDS {
            let (hit, sent, t) = punch(seed, sockets, probes);
            if hit {
                hits += 1;
                probes_used += u64::from(sent);
                time += t;
            }
        }
        let measured = hits as f64 / SEEDS as f64;
        let predicted = birthday_success(u32::from(sockets), u32::from(probes));
        let mean_probes = probes_used as f64 / hits.max(1) as f64;
        let mean_time = time / u32::try_from(hits.max(1)).unwrap();
        println!(
            "| {sockets} | {probes} | {:.1} % | {:.1} % | {mean_probes:.0} | {mean_time:.2?} |",
            predicted * 100.0,
            measured * 100.0
        );
        // Binomial: within 4 standard deviations of the prediction.
        let sigma = (predicted * (1.0 - predicted) / SEEDS as f64).sqrt();
        assert!(
            (measured - predicted).abs() <= 4.0 * sigma + 0.005,
            "{sockets} sockets, {probes} probes: measured {measured}, predicted {predicted}"
        );
        // A hit never takes more probes than the cap.
        assert!(mean_probes <= f64::from(probes));
    }
}
