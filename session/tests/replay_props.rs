//! S2: the replay window, against a reference model and in unit cases.

use std::collections::HashSet;

use natrix_session::replay::{ReplayWindow, WINDOW};
use proptest::prelude::*;

/// The specification, with unbounded memory: accept a counter iff it was never
/// accepted before and it is greater than `highest - WINDOW`.
#[derive(Default)]
struct Model {
    seen: HashSet<u64>,
    highest: Option<u64>,
}

impl Model {
    fn acceptable(&self, c: u64) -> bool {
        if self.seen.contains(&c) {
            return false;
        }
        match self.highest {
            None => true,
            Some(h) => c > h || h - c < WINDOW,
        }
    }

    fn commit(&mut self, c: u64) -> bool {
        if !self.acceptable(c) {
            return false;
        }
        self.seen.insert(c);
        self.highest = Some(self.highest.map_or(c, |h| h.max(c)));
        true
    }
}

/// Counters that exercise the interesting places: near a moving base, small
/// values, word boundaries, the window edge and the top of the u64 range.
fn counter() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..3 * WINDOW,
        2 => (0u64..64).prop_map(|k| k * 64 + 63),
        2 => (0u64..4).prop_map(|k| k * WINDOW + WINDOW - 1),
        1 => (0u64..2 * WINDOW).prop_map(|d| u64::MAX - d),
        1 => any::<u64>(),
        1 => (0u64..10).prop_map(|k| 1u64 << (50 + k)),
    ]
}

/// Mostly-increasing sequences with reordering, duplicates and jumps.
fn sequence() -> impl Strategy<Value = Vec<u64>> {
    prop_oneof![
        prop::collection::vec(counter(), 0..400),
        // A base that climbs, with local jitter around it.
        (
            0u64..u64::MAX / 2,
            prop::collection::vec((0u64..WINDOW + 200, -2000i64..200), 0..400)
        )
            .prop_map(|(base, steps)| {
                let mut at = base;
                steps
                    .into_iter()
                    .map(|(step, jitter)| {
                        at = at.saturating_add(step / 16);
                        at.saturating_add_signed(jitter)
                    })
                    .collect()
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The window agrees with the model on every check and commit, for any
    /// sequence of counters in any order: each counter accepted at most once,
    /// nothing `<= highest - WINDOW` accepted, every fresh counter within the
    /// window accepted.
    #[test]
    fn window_matches_the_model(seq in sequence()) {
        let mut w = ReplayWindow::new();
        let mut m = Model::default();
        let mut accepted = HashSet::new();
        for c in seq {
            let expect = m.acceptable(c);
            prop_assert_eq!(w.check(c), expect, "check({})", c);
            // check changes nothing.
            prop_assert_eq!(w.check(c), expect, "check({}) again", c);
            let before = m.highest;
            let got = w.commit(c);
            prop_assert_eq!(got, m.commit(c), "commit({})", c);
            if got {
                prop_assert!(accepted.insert(c), "{} accepted twice", c);
                if let Some(h) = before {
                    prop_assert!(c > h || h - c < WINDOW, "{} too old for {}", c, h);
                }
            }
            // Committed counters are now refused.
            prop_assert!(!w.check(c));
            prop_assert!(!w.commit(c));
        }
    }

    /// After any history, every not-yet-seen counter within the window is
    /// still accepted (probes every counter of the window, not just the ones
    /// the sequence touched).
    #[test]
    fn fresh_counters_within_the_window_are_accepted(seq in sequence()) {
        let mut w = ReplayWindow::new();
        let mut m = Model::default();
        for c in &seq {
            w.commit(*c);
            m.commit(*c);
        }
        if let Some(h) = m.highest {
            let low = h.saturating_sub(WINDOW + 70);
            let high = h.saturating_add(70);
            for c in low..=high {
                prop_assert_eq!(w.check(c), m.acceptable(c), "h={} c={}", h, c);
            }
        }
    }
}

#[test]
fn s2_replayed_and_too_old_counters_are_rejected() {
    let mut w = ReplayWindow::new();
    assert!(w.commit(0));
    assert!(!w.commit(0), "replay of 0");
    assert!(w.commit(10_000));
    assert!(!w.commit(10_000), "replay of 10000");
    // Too old: 10_000 - WINDOW and everything below.
    assert!(!w.check(10_000 - WINDOW));
    assert!(!w.commit(10_000 - WINDOW));
    assert!(!w.commit(1));
    // The oldest acceptable one, once.
    assert!(w.check(10_000 - WINDOW + 1));
    assert!(w.commit(10_000 - WINDOW + 1));
    assert!(!w.commit(10_000 - WINDOW + 1));
    // Out of order within the window.
    for c in (9_000..10_000).rev() {
        assert!(w.commit(c), "{c}");
    }
    for c in 9_000..=10_000 {
        assert!(!w.commit(c), "replay {c}");
    }
}

#[test]
fn window_is_at_least_2048() {
    const _: () = assert!(WINDOW >= 2048);
    assert_eq!(ReplayWindow::WINDOW, WINDOW);
}

#[test]
fn fresh_window_accepts_anything_once() {
    for c in [0, 1, 63, 64, WINDOW, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
        let mut w = ReplayWindow::default();
        assert!(w.check(c));
        assert!(w.commit(c));
        assert!(!w.check(c));
        assert!(!w.commit(c));
    }
}

#[test]
fn check_does_not_change_state() {
    let mut w = ReplayWindow::new();
    for c in [5, 3, 100, 99] {
        assert!(w.commit(c));
    }
    let before = w.clone();
    for c in 0..10_000 {
        let _ = w.check(c);
    }
    assert_eq!(w, before);
}

#[test]
fn in_order_stream_accepts_everything_and_forgets_nothing_recent() {
    let mut w = ReplayWindow::new();
    for c in 0..100_000u64 {
        assert!(w.commit(c), "{c}");
    }
    for c in 100_000 - WINDOW..100_000 {
        assert!(!w.check(c));
    }
    assert!(w.check(100_000));
}

#[test]
fn jump_larger_than_the_window_forgets_the_old_bits() {
    let mut w = ReplayWindow::new();
    for c in 0..200 {
        assert!(w.commit(c));
    }
    // Jump so far that the ring wraps many times; old bits in slots reused
    // for the new window must not make fresh counters look replayed.
    let far = 200 + 10 * WINDOW + 37;
    assert!(w.commit(far));
    for c in far - WINDOW + 1..far {
        assert!(w.check(c), "{c} is fresh");
    }
    assert!(!w.check(far - WINDOW));
    assert!(!w.check(199));
    // Jumps of exactly one ring's worth and a bit.
    for jump in [
        WINDOW - 1,
        WINDOW,
        WINDOW + 1,
        WINDOW + 63,
        WINDOW + 64,
        WINDOW + 65,
    ] {
        let mut w = ReplayWindow::new();
        for c in 1000..1000 + WINDOW {
            assert!(w.commit(c));
        }
        let top = 1000 + WINDOW - 1 + jump;
        assert!(w.commit(top));
        for c in top - WINDOW + 1..top {
            let seen = (1000..1000 + WINDOW).contains(&c);
            assert_eq!(w.check(c), !seen, "jump {jump} c {c}");
        }
    }
}

#[test]
fn top_of_the_counter_range() {
    let mut w = ReplayWindow::new();
    assert!(w.commit(u64::MAX - 5));
    assert!(w.commit(u64::MAX));
    assert!(!w.commit(u64::MAX));
    assert!(w.commit(u64::MAX - 1));
    assert!(!w.commit(u64::MAX - 5));
    assert!(w.commit(u64::MAX - WINDOW + 1));
    assert!(!w.check(u64::MAX - WINDOW));
    assert!(!w.check(0));
}
