//! Property tests for the codecs, the keep-alive schedule and the classifier.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use core::num::NonZeroU32;
use core::time::Duration;

use natrix_proto::classify::{Observation, classify};
use natrix_proto::schedule::{KeepaliveTrain, keepalive_send_offsets};
use natrix_proto::wire::{
    Hello, Keepalive, NatrixMessage, NodeId, PunchAck, PunchBind, PunchIntroduce, PunchRefusal,
    PunchReject, PunchRequest, ReflexRequest, ReflexResponse, RejectReason, RendezvousMessage,
    decode_addr, encode_addr, is_keepalive,
};
use proptest::prelude::*;

/// IPv4, IPv6 and IPv4-mapped IPv6 socket addresses (scope/flowinfo 0: not carried).
fn any_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0
        ))),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::from(ip).to_ipv6_mapped(),
            port,
            0,
            0
        ))),
    ]
}

fn any_node() -> impl Strategy<Value = NodeId> {
    any::<u64>().prop_map(NodeId)
}

fn any_message() -> impl Strategy<Value = RendezvousMessage> {
    prop_oneof![
        (any_node(), any::<u32>(), any_addr()).prop_map(|(target, id, self_reflex)| {
            RendezvousMessage::Request(PunchRequest {
                target,
                punch_id: NonZeroU32::new(id),
                self_reflex,
            })
        }),
        (any_node(), any_addr(), any::<u64>()).prop_map(|(peer, peer_reflex, fire_at_ms)| {
            RendezvousMessage::Introduce(PunchIntroduce {
                peer,
                peer_reflex,
                fire_at_ms,
            })
        }),
        (any_node(), any_node(), any::<u32>()).prop_map(|(from_peer, to_peer, punch_id)| {
            RendezvousMessage::Ack(PunchAck {
                from_peer,
                to_peer,
                punch_id,
            })
        }),
        (any_node(), any::<u32>(), any::<u8>()).prop_map(|(target, punch_id, r)| {
            RendezvousMessage::Reject(PunchReject {
                target,
                punch_id,
                reason: RejectReason::from_byte(r),
            })
        }),
    ]
}

/// Arbitrary bytes biased towards the interesting lengths and kind bytes.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (
            0u8..6,
            prop::sample::select(vec![13usize, 18, 20, 27, 31, 35])
        )
            .prop_flat_map(|(kind, rest)| {
                proptest::collection::vec(any::<u8>(), rest).prop_map(move |mut v| {
                    v.insert(0, kind);
                    v
                })
            }),
        proptest::collection::vec(any::<u8>(), 12).prop_map(|v| [b"PH".as_slice(), &v].concat()),
        // A valid address block with random family / padding noise.
        (any_addr(), any::<u8>(), 0usize..19, any::<u8>()).prop_map(|(a, fam, at, b)| {
            let mut v = encode_addr(&a).to_vec();
            v[0] = fam % 8;
            v[at] ^= b;
            v
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn every_rendezvous_message_round_trips(m in any_message()) {
        let (buf, len) = m.to_bytes();
        prop_assert_eq!(RendezvousMessage::decode(&buf[..len]), Ok(m));
        let mut exact = vec![0u8; len];
        prop_assert_eq!(m.encode(&mut exact), Ok(len));
        prop_assert_eq!(&exact[..], &buf[..len]);
        // One byte short is an encode error, never a panic or a partial write count.
        let mut short = vec![0u8; len - 1];
        prop_assert!(m.encode(&mut short).is_err());
    }

    #[test]
    fn addr_reflex_and_keepalive_round_trip(a in any_addr(), sender in any_node(), id in any::<u32>()) {
        prop_assert_eq!(decode_addr(&encode_addr(&a)), Ok(a));
        let r = ReflexResponse { observed: a };
        prop_assert_eq!(ReflexResponse::decode(&r.to_bytes()), Ok(r));
        let k = Keepalive { sender, punch_id: id };
        prop_assert_eq!(Keepalive::decode(&k.to_bytes()), Ok(k));
        prop_assert!(is_keepalive(&k.to_bytes()));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics_and_ok_is_canonical(bytes in wire_bytes()) {
        if let Ok(m) = RendezvousMessage::decode(&bytes) {
            let (buf, len) = m.to_bytes();
            prop_assert_eq!(&buf[..len], &bytes[..]);
        }
        if let Ok(a) = decode_addr(&bytes) {
            prop_assert_eq!(&encode_addr(&a)[..], &bytes[..]);
        }
        if let Ok(r) = ReflexResponse::decode(&bytes) {
            prop_assert_eq!(&r.to_bytes()[..], &bytes[..]);
        }
        prop_assert_eq!(ReflexRequest::decode(&bytes).is_ok(), bytes.is_empty());
        if let Ok(k) = Keepalive::decode(&bytes) {
            prop_assert_eq!(&k.to_bytes()[..], &bytes[..]);
        }
    }

    #[test]
    fn keepalive_predicate_agrees_with_decoder(bytes in wire_bytes()) {
        prop_assert_eq!(is_keepalive(&bytes), Keepalive::decode(&bytes).is_ok());
    }

    #[test]
    fn r3_offsets_never_panic_and_are_bounded(
        fire in any::<u64>(),
        now in any::<u64>(),
        secs in any::<u64>(),
        nanos in 0u32..1_000_000_000,
    ) {
        let deadline = Duration::new(secs, nanos);
        let o = keepalive_send_offsets(fire, now, deadline);
        prop_assert!(o[0] <= o[1] && o[1] <= o[2]);
        prop_assert!(o[0] <= deadline);
        prop_assert!(o[2] <= deadline.saturating_add(Duration::from_millis(250)));
    }

    #[test]
    fn train_is_ordered_bounded_and_finite(
        fire in any::<u64>(),
        now in any::<u64>(),
        deadline_ms in 0u64..20_000,
    ) {
        let deadline = Duration::from_millis(deadline_ms);
        let offsets: Vec<_> = KeepaliveTrain::new(fire, now, deadline).take(1_000).collect();
        prop_assert!(offsets.len() >= 3);
        prop_assert!(offsets.len() as u64 <= 3 + deadline_ms / 250);
        prop_assert_eq!(&offsets[..3], &keepalive_send_offsets(fire, now, deadline)[..]);
        for w in offsets.windows(2) {
            prop_assert!(w[0] < w[1]);
        }
        for o in &offsets {
            prop_assert!(*o <= deadline + Duration::from_millis(250));
        }
    }

    #[test]
    fn classification_is_order_independent(
        bind_port in 1u16..6,
        wildcard in any::<bool>(),
        obs in proptest::collection::vec((0u64..6, 0u8..3, 1u16..6), 0..10),
        seed in any::<u64>(),
    ) {
        let bind = if wildcard {
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), bind_port)
        } else {
            SocketAddr::new(Ipv4Addr::new(203, 0, 113, 0).into(), bind_port)
        };
        let ifaces: [IpAddr; 1] = [Ipv4Addr::new(203, 0, 113, 1).into()];
        let all = observations_from(&obs);
        // Keep only the last observation per peer: that is what classify must use.
        let mut last: Vec<Observation> = Vec::new();
        for o in &all {
            last.retain(|x| x.peer != o.peer);
            last.push(*o);
        }
        let deduped = classify(bind, &ifaces, &last);
        prop_assert_eq!(classify(bind, &ifaces, &all), deduped);
        // Any permutation of distinct-peer observations gives the same result.
        let mut shuffled = last.clone();
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(classify(bind, &ifaces, &shuffled), deduped);
    }
}

fn any_natrix() -> impl Strategy<Value = NatrixMessage> {
    prop_oneof![
        any::<u8>().prop_map(|version| NatrixMessage::Hello(Hello { version })),
        (any_node(), any::<u64>(), 1u32..).prop_map(|(peer, fire_at_ms, id)| {
            NatrixMessage::Bind(PunchBind {
                peer,
                fire_at_ms,
                punch_id: NonZeroU32::new(id).unwrap(),
            })
        }),
        (any_node(), any::<u32>(), any::<u8>(), any::<bool>()).prop_map(
            |(peer, punch_id, r, refused)| {
                let m = PunchRefusal {
                    peer,
                    punch_id,
                    reason: RejectReason::from_byte(r),
                };
                if refused {
                    NatrixMessage::Refused(m)
                } else {
                    NatrixMessage::Refuse(m)
                }
            }
        ),
    ]
}

/// Arbitrary bytes biased towards natrix kinds and lengths.
fn natrix_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..32),
        (
            0x0Eu8..0x16,
            prop::sample::select(vec![0usize, 1, 2, 12, 13, 14, 19, 20, 21, 22])
        )
            .prop_flat_map(|(kind, rest)| {
                proptest::collection::vec(any::<u8>(), rest).prop_map(move |mut v| {
                    v.insert(0, kind);
                    v
                })
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn natrix_messages_round_trip(m in any_natrix()) {
        let (buf, len) = m.to_bytes();
        prop_assert_eq!(len, m.encoded_len());
        prop_assert_eq!(NatrixMessage::decode(&buf[..len]), Ok(m));
        let mut short = vec![0u8; len - 1];
        prop_assert!(m.encode(&mut short).is_err());
        // Never mistaken for a rendezvous message, nor the other way round.
        prop_assert!(RendezvousMessage::decode(&buf[..len]).is_err());
    }

    #[test]
    fn natrix_decoding_never_panics_and_ok_is_canonical(bytes in natrix_bytes()) {
        if let Ok(m) = NatrixMessage::decode(&bytes) {
            let (buf, len) = m.to_bytes();
            prop_assert_eq!(&buf[..len], &bytes[..]);
        }
        prop_assert!(NatrixMessage::decode(&bytes).is_err() || RendezvousMessage::decode(&bytes).is_err());
    }

    /// Issue #11, finding 13: with more distinct peers than `classify`
    /// considers (32), the result still does not depend on arrival order.
    #[test]
    fn c2_classification_of_more_than_32_peers_does_not_depend_on_arrival_order(
        ports in proptest::collection::vec(7000u16..7003, 33..80),
        peer_base in 0u64..1000,
        seed in any::<u64>(),
    ) {
        let bind = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 2).into(), 4000);
        let obs: Vec<Observation> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| Observation {
                // Ids spread so that arrival order and id order differ.
                peer: NodeId(peer_base + (i as u64 * 7919) % 1009),
                reflex: SocketAddr::new(Ipv4Addr::new(203, 0, 113, 1).into(), *port),
            })
            .collect();
        let want = classify(bind, &[], &obs);
        let mut shuffled = obs.clone();
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(classify(bind, &[], &shuffled), want);
        let mut reversed = obs.clone();
        reversed.reverse();
        prop_assert_eq!(classify(bind, &[], &reversed), want);
    }
}

#[test]
fn c2_the_33rd_peer_counts_the_same_wherever_it_arrives() {
    // 32 peers saw port 7000, one saw 7001: the class must not depend on
    // whether the odd one arrives first or last.
    let bind = SocketAddr::new(Ipv4Addr::new(10, 0, 0, 2).into(), 4000);
    let at = |peer: u64, port: u16| Observation {
        peer: NodeId(peer),
        reflex: SocketAddr::new(Ipv4Addr::new(203, 0, 113, 1).into(), port),
    };
    let mut obs: Vec<_> = (10..42).map(|p| at(p, 7000)).collect();
    obs.push(at(1, 7001));
    let last = classify(bind, &[], &obs);
    obs.rotate_right(1);
    let first = classify(bind, &[], &obs);
    assert_eq!(first, last);
    assert_eq!(first.observations, 32);
}

fn observations_from(obs: &[(u64, u8, u16)]) -> Vec<Observation> {
    obs.iter()
        .map(|(peer, ip, port)| Observation {
            peer: NodeId(*peer),
            reflex: SocketAddr::new(Ipv4Addr::new(203, 0, 113, *ip).into(), *port),
        })
        .collect()
}
