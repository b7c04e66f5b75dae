//! Target `demux`: `classify` never panics and puts every datagram into exactly
//! one kind, each kind matching its rule restated here independently.
#![no_main]

use natrix_proto::wire::is_keepalive;
use natrix_session::demux::{DatagramKind, PacketType, classify};

/// STUN: at least 20 bytes, top two bits of byte 0 zero, magic cookie at 4..8.
fn stun_rule(d: &[u8]) -> bool {
    d.len() >= 20
        && d.first().is_some_and(|b| b >> 6 == 0)
        && d.get(4..8) == Some(&[0x21, 0x12, 0xA4, 0x42][..])
}

/// Session: tag 0xA1..=0xA4, three zero bytes, the type's length rule.
fn session_rule(d: &[u8]) -> Option<PacketType> {
    if d.get(1..4) != Some(&[0, 0, 0][..]) {
        return None;
    }
    let (ty, ok) = match d.first()? {
        0xA1 => (PacketType::HandshakeInit, d.len() == 144),
        0xA2 => (PacketType::HandshakeResponse, d.len() == 108),
        0xA3 => (PacketType::CookieReply, d.len() == 64),
        0xA4 => (PacketType::Transport, d.len() >= 33),
        _ => return None,
    };
    ok.then_some(ty)
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let kind = classify(data);
    let keepalive = is_keepalive(data);
    let stun = stun_rule(data);
    let session = session_rule(data);
    let matched = usize::from(keepalive) + usize::from(stun) + usize::from(session.is_some());
    assert!(matched <= 1, "rules overlap on {data:02x?}");
    assert_eq!(kind == DatagramKind::Keepalive, keepalive);
    assert_eq!(kind == DatagramKind::Stun, stun);
    match kind {
        DatagramKind::Session(ty) => assert_eq!(Some(ty), session),
        _ => assert_eq!(session, None),
    }
    assert_eq!(kind == DatagramKind::Unknown, matched == 0);
});
