//! The one-socket demultiplexer: every datagram has exactly one kind.

use natrix_proto::wire::{Keepalive, NodeId, is_keepalive};
use natrix_session::demux::{
    COOKIE_REPLY_LEN, DatagramKind, HANDSHAKE_INIT_LEN, HANDSHAKE_RESPONSE_LEN, PacketType,
    TRANSPORT_MIN_LEN, classify,
};
use proptest::prelude::*;

/// The STUN rule, restated independently of the crate.
fn stun_rule(d: &[u8]) -> bool {
    d.len() >= 20 && d[0] >> 6 == 0 && d[4..8] == [0x21, 0x12, 0xA4, 0x42]
}

/// The session rule, restated independently of the crate.
fn session_rule(d: &[u8]) -> Option<PacketType> {
    if d.len() < 4 || d[1..4] != [0, 0, 0] {
        return None;
    }
    let (ty, ok) = match d[0] {
        0xA1 => (PacketType::HandshakeInit, d.len() == 144),
        0xA2 => (PacketType::HandshakeResponse, d.len() == 108),
        0xA3 => (PacketType::CookieReply, d.len() == 64),
        0xA4 => (PacketType::Transport, d.len() >= 33),
        _ => return None,
    };
    ok.then_some(ty)
}

/// Checks that `d` matches exactly one rule and that `classify` names it.
fn assert_exactly_one(d: &[u8]) -> DatagramKind {
    let kind = classify(d);
    let keepalive = is_keepalive(d);
    let stun = stun_rule(d);
    let session = session_rule(d);
    let matched = usize::from(keepalive) + usize::from(stun) + usize::from(session.is_some());
    assert!(matched <= 1, "{d:02x?} matches {matched} rules");
    assert_eq!(kind == DatagramKind::Keepalive, keepalive, "{d:02x?}");
    assert_eq!(kind == DatagramKind::Stun, stun, "{d:02x?}");
    match kind {
        DatagramKind::Session(ty) => assert_eq!(Some(ty), session, "{d:02x?}"),
        _ => assert_eq!(session, None, "{d:02x?}"),
    }
    assert_eq!(kind == DatagramKind::Unknown, matched == 0, "{d:02x?}");
    kind
}

fn session_packet(ty: PacketType, len: usize) -> Vec<u8> {
    let mut d = vec![0x5a; len];
    d[0] = ty as u8;
    d[1..4].fill(0);
    d
}

fn stun_binding_request() -> Vec<u8> {
    let mut d = vec![0u8; 20];
    d[0..2].copy_from_slice(&[0x00, 0x01]); // Binding request
    d[4..8].copy_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    d[8..20].copy_from_slice(&[7; 12]); // transaction id
    d
}

#[test]
fn lengths_are_the_documented_sums() {
    assert_eq!(HANDSHAKE_INIT_LEN, 144);
    assert_eq!(HANDSHAKE_RESPONSE_LEN, 108);
    assert_eq!(COOKIE_REPLY_LEN, 64);
    assert_eq!(TRANSPORT_MIN_LEN, 33);
    // S5: neither answer to an init is larger than the init.
    const _: () = assert!(HANDSHAKE_RESPONSE_LEN <= HANDSHAKE_INIT_LEN);
    const _: () = assert!(COOKIE_REPLY_LEN < HANDSHAKE_INIT_LEN);
}

#[test]
fn packet_type_bytes() {
    for (ty, byte) in PacketType::ALL.into_iter().zip(0xA1..=0xA4u8) {
        assert_eq!(ty as u8, byte);
        assert_eq!(ty.to_byte(), byte);
        assert_eq!(PacketType::from_byte(byte), Some(ty));
    }
    for byte in (0..=255u8).filter(|b| !(0xA1..=0xA4).contains(b)) {
        assert_eq!(PacketType::from_byte(byte), None);
    }
    assert_eq!(PacketType::Transport.exact_len(), None);
    assert_eq!(PacketType::HandshakeInit.exact_len(), Some(144));
}

#[test]
fn keepalives_are_keepalives() {
    let ka = Keepalive {
        sender: NodeId(0x0123_4567_89ab_cdef),
        punch_id: 42,
    };
    let bytes = ka.to_bytes();
    assert_eq!(assert_exactly_one(&bytes), DatagramKind::Keepalive);
    // One byte more or less is not.
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert_eq!(assert_exactly_one(&longer), DatagramKind::Unknown);
    assert_eq!(
        assert_exactly_one(&bytes[..bytes.len() - 1]),
        DatagramKind::Unknown
    );
}

#[test]
fn stun_messages_are_stun() {
    let req = stun_binding_request();
    assert_eq!(assert_exactly_one(&req), DatagramKind::Stun);
    // With attributes.
    let mut resp = req.clone();
    resp[0..2].copy_from_slice(&[0x01, 0x01]);
    resp.extend_from_slice(&[0x00, 0x20, 0x00, 0x08, 0, 1, 0x12, 0x34, 1, 2, 3, 4]);
    assert_eq!(assert_exactly_one(&resp), DatagramKind::Stun);
    // Too short, wrong cookie, top bits set.
    assert_eq!(assert_exactly_one(&req[..19]), DatagramKind::Unknown);
    let mut bad = req.clone();
    bad[7] ^= 1;
    assert_eq!(assert_exactly_one(&bad), DatagramKind::Unknown);
    for top in [0x40, 0x80, 0xC0] {
        let mut bad = req.clone();
        bad[0] |= top;
        assert_eq!(assert_exactly_one(&bad), DatagramKind::Unknown);
    }
}

#[test]
fn session_packets_are_session_of_their_type() {
    for ty in PacketType::ALL {
        let d = session_packet(ty, ty.min_len());
        assert_eq!(assert_exactly_one(&d), DatagramKind::Session(ty));
        // One byte short is never a session packet.
        assert_eq!(assert_exactly_one(&d[..d.len() - 1]), DatagramKind::Unknown);
        // A non-zero reserved byte is not either.
        for i in 1..4 {
            let mut bad = d.clone();
            bad[i] = 1;
            assert_eq!(assert_exactly_one(&bad), DatagramKind::Unknown);
        }
        // One byte longer: only transport packets vary in length.
        let longer = session_packet(ty, ty.min_len() + 1);
        let want = if ty == PacketType::Transport {
            DatagramKind::Session(ty)
        } else {
            DatagramKind::Unknown
        };
        assert_eq!(assert_exactly_one(&longer), want);
    }
    // Transport of any size up to a large datagram.
    for len in TRANSPORT_MIN_LEN..1500 {
        let d = session_packet(PacketType::Transport, len);
        assert_eq!(classify(&d), DatagramKind::Session(PacketType::Transport));
    }
    // Neighbouring tag bytes are not session packets.
    for tag in [0xA0, 0xA5, 0x21, 0xFF] {
        let mut d = session_packet(PacketType::Transport, 100);
        d[0] = tag;
        assert_eq!(assert_exactly_one(&d), DatagramKind::Unknown);
    }
}

#[test]
fn other_datagrams_are_unknown() {
    for d in [
        &b""[..],
        b"\xa4",
        b"\xa4\x00\x00\x00",
        b"hello, application",
        b"PH",
        b"PHxxxxxxxxxxx",
        &[0u8; 1200],
        &[0xffu8; 64],
    ] {
        assert_eq!(assert_exactly_one(d), DatagramKind::Unknown, "{d:02x?}");
    }
}

/// Datagrams biased towards the interesting prefixes, so each kind and each
/// near miss is generated often.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    let bytes = prop::collection::vec(any::<u8>(), 0..1600);
    let lens = prop_oneof![
        Just(14usize),
        Just(COOKIE_REPLY_LEN),
        Just(HANDSHAKE_RESPONSE_LEN),
        Just(HANDSHAKE_INIT_LEN),
        Just(TRANSPORT_MIN_LEN),
        15usize..25,
        30usize..40,
        60usize..70,
        100usize..150,
        0usize..1500,
    ];
    let prefixes = prop_oneof![
        Just(vec![]),
        Just(b"PH".to_vec()),
        Just(vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42]),
        (0u8..0x40).prop_map(|b| vec![b, 0, 0, 0, 0x21, 0x12, 0xA4, 0x42]),
        (0xA0u8..=0xA5).prop_map(|b| vec![b, 0, 0, 0]),
        (0xA1u8..=0xA4, any::<[u8; 3]>()).prop_map(|(b, r)| vec![b, r[0], r[1], r[2]]),
    ];
    prop_oneof![
        bytes,
        (prefixes, lens, any::<u8>()).prop_map(|(prefix, len, fill)| {
            let mut d = vec![fill; len];
            for (dst, src) in d.iter_mut().zip(prefix) {
                *dst = src;
            }
            d
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// classify never panics, and: Keepalive ⇔ is_keepalive, Stun ⇔ the STUN
    /// rule, Session(t) ⇔ the session rule for t, Unknown ⇔ none of them.
    #[test]
    fn every_datagram_has_exactly_one_kind(d in datagram()) {
        assert_exactly_one(&d);
    }

    /// Fully arbitrary bytes, short ones included.
    #[test]
    fn classify_is_total(d in prop::collection::vec(any::<u8>(), 0..64)) {
        assert_exactly_one(&d);
    }
}
