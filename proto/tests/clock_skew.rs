//! Clock skew (issue #10 item 9): `fire_at_ms` is wall-clock time on the
//! coordinator's clock. With the coordinator's offset known
//! (`Agent::handle_clock_offset`), the keep-alive train fires at the right
//! local time and the R3 bounds apply to the converted time; without it the
//! agent behaves as before (a coordinator 10 s fast makes the punch fail with
//! no keep-alive sent).
#![allow(missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use natrix_proto::rendezvous::keepalive_token;
use natrix_proto::wire::{Keepalive, NodeId, PunchIntroduce};
use natrix_proto::{
    Agent, Channel, Config, Event, Instant, NatClass, PunchStage, Role, Transmit, TraversalError,
};

/// Our wall clock at `Instant::ZERO`.
const WALL_BASE_MS: u64 = 1_700_000_000_000;
const ME: NodeId = NodeId(10);
const PEER: NodeId = NodeId(11);
const COORD: NodeId = NodeId(1);

fn addr(id: NodeId) -> SocketAddr {
    SocketAddr::new([198, 51, 100, id.0 as u8].into(), 4000)
}

fn ms(v: u64) -> Instant {
    Instant::from_millis(v)
}

/// Our wall clock at `at`.
fn wall(at: Instant) -> u64 {
    WALL_BASE_MS + at.as_nanos() / 1_000_000
}

/// An agent with a session to the coordinator, classified Cone, knowing the
/// peer's announcement.
fn agent() -> Agent {
    let cfg = Config::builder().auto_reclassify(false).build().unwrap();
    let mut a = Agent::new(ME, addr(ME), cfg, 7);
    a.handle_session_up(COORD, addr(COORD)).unwrap();
    a.set_local_classification(NatClass::Cone, addr(ME));
    a.handle_peer_announcement(PEER, addr(PEER), NatClass::Cone)
        .unwrap();
    while a.poll_event().is_some() {}
    a
}

/// Delivers the coordinator's introduce of `PEER` at `at`, stamped with
/// `fire_at_ms` (the coordinator's clock).
fn introduce(a: &mut Agent, at: Instant, fire_at_ms: u64) {
    let intro = PunchIntroduce {
        peer: PEER,
        peer_reflex: addr(PEER),
        fire_at_ms,
    };
    a.handle_control(
        at,
        wall(at),
        COORD,
        addr(COORD),
        Channel::Rendezvous,
        &intro.to_bytes(),
    )
    .unwrap();
}

/// Runs the agent's timers from `from` to `until`, collecting (time, token) of
/// every keep-alive it sends and every event.
fn run(a: &mut Agent, from: Instant, until: Instant) -> (Vec<(Instant, u32)>, Vec<Event>) {
    let (mut sent, mut events) = (Vec::new(), Vec::new());
    let mut now = from;
    loop {
        while let Some(t) = a.poll_transmit() {
            if let Transmit::Datagram { to, payload, .. } = t {
                assert_eq!(to, addr(PEER));
                sent.push((now, Keepalive::decode(payload.as_bytes()).unwrap().punch_id));
            }
        }
        events.extend(std::iter::from_fn(|| a.poll_event()));
        match a.poll_timeout() {
            Some(t) if t <= until => {
                now = now.max(t);
                a.handle_timeout(now);
            }
            _ => return (sent, events),
        }
    }
}

fn deadline_failure(role: Role) -> Event {
    Event::PunchFailed {
        peer: PEER,
        punch_id: 0,
        role,
        error: TraversalError::DeadlinePassed {
            stage: PunchStage::Keepalive,
            deadline: Config::default().punch_deadline(),
        },
        elapsed: Duration::ZERO,
    }
}

/// Compares a failure ignoring punch id and elapsed time.
fn same_failure(e: &Event, want: &Event) -> bool {
    match (e, want) {
        (
            Event::PunchFailed {
                peer, role, error, ..
            },
            Event::PunchFailed {
                peer: p2,
                role: r2,
                error: e2,
                ..
            },
        ) => peer == p2 && role == r2 && error == e2,
        _ => false,
    }
}

/// A coordinator 10 s ahead of us stamps `fire_at_ms` = its wall + 500 ms.
const AHEAD_MS: i64 = 10_000;

#[test]
fn clock_offset_converts_fire_time() {
    // Requester side, the coordinator's offset known.
    let mut a = agent();
    a.handle_clock_offset(COORD, AHEAD_MS).unwrap();
    a.request_punch(ms(0), PEER, COORD).unwrap();
    let t_intro = ms(20);
    let fire_at_ms = wall(t_intro) + AHEAD_MS as u64 + 500;
    introduce(&mut a, t_intro, fire_at_ms);
    let (sent, events) = run(&mut a, t_intro, ms(1_100));
    assert!(events.is_empty(), "{events:?}");
    let times: Vec<Instant> = sent.iter().map(|(t, _)| *t).collect();
    // Opener at lead, +100, +250, then the 250 ms grid — 500 ms after the
    // introduce on our clock.
    assert_eq!(times, [ms(520), ms(620), ms(770), ms(1_020)]);
    // The token comes from the wire value, which the peer shares.
    let token = keepalive_token(ME, PEER, fire_at_ms);
    assert!(sent.iter().all(|(_, k)| *k == token));
    // The peer's keep-alive (same token) confirms the punch.
    let ka = Keepalive {
        sender: PEER,
        punch_id: token,
    };
    let _ = a.handle_datagram(ms(1_100), addr(ME), addr(PEER), &ka.to_bytes());
    let (_, events) = run(&mut a, ms(1_100), ms(1_100));
    assert!(
        matches!(events.as_slice(), [Event::PunchSucceeded { peer, role: Role::Requester, .. }] if *peer == PEER),
        "{events:?}"
    );
}

#[test]
fn without_the_offset_a_fast_coordinator_fails_the_punch() {
    // Today's behaviour, kept when no estimate is known: the fire time reads
    // 10.5 s ahead, is clamped to the 5 s deadline, and the deadline ends the
    // punch before any keep-alive leaves.
    let mut a = agent();
    a.request_punch(ms(0), PEER, COORD).unwrap();
    introduce(&mut a, ms(20), wall(ms(20)) + AHEAD_MS as u64 + 500);
    let (sent, events) = run(&mut a, ms(20), ms(10_000));
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(events.len(), 1);
    assert!(
        same_failure(&events[0], &deadline_failure(Role::Requester)),
        "{events:?}"
    );
}

#[test]
fn clock_offset_converts_fire_time_for_a_responder() {
    // Unsolicited introduce, the coordinator 10 s ahead: on time with the
    // offset, never without it.
    for known in [true, false] {
        let mut b = agent();
        if known {
            b.handle_clock_offset(COORD, AHEAD_MS).unwrap();
        }
        introduce(&mut b, ms(40), wall(ms(40)) + AHEAD_MS as u64 + 500);
        let (sent, events) = run(&mut b, ms(40), ms(10_000));
        if known {
            assert_eq!(sent.first().map(|(t, _)| *t), Some(ms(540)));
        } else {
            assert!(sent.is_empty(), "{sent:?}");
        }
        assert!(
            same_failure(&events[0], &deadline_failure(Role::Responder)),
            "{events:?}"
        );
    }
}

#[test]
fn a_slow_coordinator_no_longer_fires_at_once() {
    // A coordinator 10 s behind: its fire time reads as 9.5 s in the past,
    // which means "now" without the offset; with it, 500 ms from now.
    for (known, first) in [(true, 520), (false, 20)] {
        let mut a = agent();
        if known {
            a.handle_clock_offset(COORD, -AHEAD_MS).unwrap();
        }
        a.request_punch(ms(0), PEER, COORD).unwrap();
        introduce(&mut a, ms(20), wall(ms(20)) - AHEAD_MS as u64 + 500);
        let (sent, _) = run(&mut a, ms(20), ms(1_000));
        assert_eq!(sent.first().map(|(t, _)| *t), Some(ms(first)), "{known}");
    }
}

#[test]
fn fire_time_bounds_apply_to_the_converted_time() {
    // Raw, the fire time is 500 ms ahead; on our clock (the coordinator is
    // 10 s behind) it is 10.5 s ahead: clamped to the deadline, so the punch
    // ends with no keep-alive sent.
    let mut a = agent();
    a.handle_clock_offset(COORD, -AHEAD_MS).unwrap();
    a.request_punch(ms(0), PEER, COORD).unwrap();
    introduce(&mut a, ms(20), wall(ms(20)) + 500);
    let (sent, events) = run(&mut a, ms(20), ms(10_000));
    assert!(sent.is_empty(), "{sent:?}");
    assert!(
        same_failure(&events[0], &deadline_failure(Role::Requester)),
        "{events:?}"
    );
    // An absurd offset saturates instead of overflowing: fire "now".
    let mut a = agent();
    a.handle_clock_offset(COORD, i64::MAX).unwrap();
    a.request_punch(ms(0), PEER, COORD).unwrap();
    introduce(&mut a, ms(20), 5);
    let (sent, _) = run(&mut a, ms(20), ms(100));
    assert_eq!(sent.first().map(|(t, _)| *t), Some(ms(20)));
}

#[test]
fn the_requester_deadline_is_not_shifted() {
    // The punch deadline counts from request_punch on the monotonic clock,
    // whatever the coordinator's offset.
    for offset in [AHEAD_MS, -AHEAD_MS, 0] {
        let mut a = agent();
        a.handle_clock_offset(COORD, offset).unwrap();
        a.request_punch(ms(0), PEER, COORD).unwrap();
        introduce(
            &mut a,
            ms(20),
            wall(ms(20)).saturating_add_signed(offset) + 500,
        );
        let (sent, events) = run(&mut a, ms(20), ms(10_000));
        assert_eq!(sent.first().map(|(t, _)| *t), Some(ms(520)), "{offset}");
        assert!(sent.iter().all(|(t, _)| *t < ms(5_000)));
        let Event::PunchFailed { elapsed, .. } = events[0] else {
            panic!("{events:?}");
        };
        assert_eq!(elapsed, Config::default().punch_deadline(), "{offset}");
    }
}

#[test]
fn the_offset_is_forgotten_with_the_session() {
    let mut a = agent();
    a.handle_clock_offset(COORD, AHEAD_MS).unwrap();
    a.handle_session_down(ms(0), COORD);
    a.handle_session_up(COORD, addr(COORD)).unwrap();
    a.request_punch(ms(0), PEER, COORD).unwrap();
    introduce(&mut a, ms(20), wall(ms(20)) + AHEAD_MS as u64 + 500);
    let (sent, _) = run(&mut a, ms(20), ms(10_000));
    assert!(
        sent.is_empty(),
        "the old estimate must not survive: {sent:?}"
    );
    // An offset alone is a directory entry: a peer seen only through its
    // offset disappears again when its session goes down.
    let mut a = agent();
    let known = a.known_peers();
    a.handle_clock_offset(NodeId(99), 5).unwrap();
    assert_eq!(a.known_peers(), known + 1);
    a.handle_session_down(ms(0), NodeId(99));
    assert_eq!(a.known_peers(), known);
}

#[test]
fn a_full_directory_refuses_the_offset() {
    let cfg = Config::builder()
        .auto_reclassify(false)
        .max_known_peers(1)
        .build()
        .unwrap();
    let mut a = Agent::new(ME, addr(ME), cfg, 7);
    a.handle_session_up(COORD, addr(COORD)).unwrap();
    assert!(a.handle_clock_offset(COORD, 1).is_ok());
    assert_eq!(
        a.handle_clock_offset(PEER, 1),
        Err(natrix_proto::DirectoryFull)
    );
}
