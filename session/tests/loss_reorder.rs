//! Handshake and transport under random loss, delay and reordering.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::Net;
use natrix_session::{SessionConfig, SessionEvent};
use proptest::prelude::*;

/// splitmix64: the network's own deterministic randomness.
fn mix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sessions_survive_loss_and_reordering(
        seed in any::<u64>(),
        loss_pct in 0u64..35,
        jitter_ms in 0u64..300,
        n in 1usize..60,
    ) {
        let mut net = Net::new();
        let a = net.add(1, "192.0.2.1:4000", SessionConfig::default(), 11);
        let b = net.add(2, "198.51.100.2:5000", SessionConfig::default(), 22);
        let mut state = seed;
        net.fate = Some(Box::new(move |_| {
            if mix(&mut state) % 100 < loss_pct {
                None
            } else {
                Some(Duration::from_millis(5 + mix(&mut state) % (jitter_ms + 1)))
            }
        }));
        net.connect(a, b);
        let mut sent = BTreeSet::new();
        let mut t = 0;
        while t < 120 {
            // The application redials after a failed handshake.
            for e in net.take_events(a) {
                if matches!(e, SessionEvent::HandshakeFailed { .. } | SessionEvent::Down { .. }) {
                    net.connect(a, b);
                }
            }
            if sent.len() < n && net.up(a, b) {
                let i = u32::try_from(sent.len()).unwrap();
                net.send(a, b, 16, &i.to_be_bytes());
                sent.insert(i.to_be_bytes().to_vec());
            }
            net.run_for(Duration::from_millis(250));
            t += 1;
        }
        // Let what is in flight land, still redialling as the application
        // does: an idle session whose keep-alives were lost twice in a row
        // is declared dead (30 s without a word), maybe in these last
        // seconds, and the redial brings it back.
        for _ in 0..40 {
            for e in net.take_events(a) {
                if matches!(e, SessionEvent::HandshakeFailed { .. } | SessionEvent::Down { .. }) {
                    net.connect(a, b);
                }
            }
            net.run_for(Duration::from_millis(250));
        }
        let got: Vec<Vec<u8>> = net.take_data(b).into_iter().map(|d| d.3).collect();
        let unique: BTreeSet<Vec<u8>> = got.iter().cloned().collect();
        prop_assert_eq!(unique.len(), got.len(), "no duplicates");
        prop_assert!(unique.is_subset(&sent), "nothing invented");
        let (sa, sb) = (net.nodes[a].ep.stats(), net.nodes[b].ep.stats());
        // Reordering never looks like forgery, and the network never duplicates.
        prop_assert_eq!(sa.decrypt_failures + sb.decrypt_failures, 0);
        prop_assert_eq!(sa.replays_dropped + sb.replays_dropped, 0);
        prop_assert_eq!(sa.malformed + sb.malformed + sa.mac1_failures + sb.mac1_failures, 0);
        if loss_pct == 0 {
            prop_assert_eq!(unique.len(), sent.len(), "no loss: everything arrives");
        }
        if loss_pct < 20 {
            prop_assert!(net.up(a, b), "session up at the end");
        }
    }
}
