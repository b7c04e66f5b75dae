//! A tour of the natrix wire format: decodes the worked examples of the wire
//! spec byte for byte, round-trips one of every other message, shows a typed
//! decode error, and prints the pair matrix computed by `pair_action`.
//!
//! `cargo run -p natrix-proto --example wire_tour`
//!
//! Nothing is sent anywhere; the addresses are documentation ranges.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use natrix_proto::wire::{
    Keepalive, NodeId, PunchAck, PunchIntroduce, PunchReject, PunchRequest, ReflexResponse,
    RejectReason, RendezvousMessage,
};
use natrix_proto::{NatClass, pair_action};

fn hex(s: &str) -> Result<Vec<u8>, String> {
    let digits: String = s.split_whitespace().collect();
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in {s:?}"));
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn show(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn check(name: &str, wire: &[u8], reencoded: &[u8]) -> Result<(), String> {
    if wire == reencoded {
        println!("  re-encoded identically ({} bytes)", wire.len());
        Ok(())
    } else {
        Err(format!(
            "{name}: re-encoding differs\n  wire: {}\n  ours: {}",
            show(wire),
            show(reencoded)
        ))
    }
}

/// A v1 `PunchRequest`'s bytes, to corrupt.
fn messages_first_v1(reflex: SocketAddr) -> Vec<u8> {
    let (b, n) = PunchRequest {
        target: NodeId(2),
        punch_id: None,
        self_reflex: reflex,
    }
    .to_bytes();
    b[..n].to_vec()
}

fn main() -> Result<(), String> {
    println!("Worked example 1: PunchRequest v2");
    let wire = hex("01 0102030405060708 0A0B0C0D 04 C0000207 000000000000000000000000 2329")?;
    let req = PunchRequest::decode(&wire).map_err(|e| e.to_string())?;
    println!("  target      {:?}", req.target);
    println!("  punch_id    {:#010x}", req.punch_id_or_zero());
    println!("  self_reflex {}", req.self_reflex);
    let (enc, len) = req.to_bytes();
    check("PunchRequest", &wire, &enc[..len])?;

    println!("Worked example 2: keep-alive");
    let wire = hex("5048 0807060504030201 4D3C2B1A")?;
    let ka = Keepalive::decode(&wire).map_err(|e| e.to_string())?;
    println!("  sender      {:?}", ka.sender);
    println!("  punch_id    {:#010x}", ka.punch_id);
    check("Keepalive", &wire, &ka.to_bytes())?;

    println!("Round trips:");
    let reflex: SocketAddr = "198.51.100.4:40000".parse().map_err(|e| format!("{e}"))?;
    let v6: SocketAddr = "[2001:db8::9]:443".parse().map_err(|e| format!("{e}"))?;
    let messages = [
        RendezvousMessage::Request(PunchRequest {
            target: NodeId(2),
            punch_id: None,
            self_reflex: reflex,
        }),
        RendezvousMessage::Request(PunchRequest {
            target: NodeId(2),
            punch_id: NonZeroU32::new(7),
            self_reflex: v6,
        }),
        RendezvousMessage::Introduce(PunchIntroduce {
            peer: NodeId(1),
            peer_reflex: reflex,
            fire_at_ms: 1_700_000_000_500,
        }),
        RendezvousMessage::Ack(PunchAck {
            from_peer: NodeId(1),
            to_peer: NodeId(2),
            punch_id: 7,
        }),
        RendezvousMessage::Reject(PunchReject {
            target: NodeId(2),
            punch_id: 7,
            reason: RejectReason::ReflexMismatch,
        }),
    ];
    for m in messages {
        let (enc, len) = m.to_bytes();
        let back = RendezvousMessage::decode(&enc[..len]).map_err(|e| e.to_string())?;
        if back != m {
            return Err(format!("{m:?} decoded as {back:?}"));
        }
        println!("  {len:>2} B  {}", show(&enc[..len]));
    }
    let resp = ReflexResponse { observed: v6 };
    let back = ReflexResponse::decode(&resp.to_bytes()).map_err(|e| e.to_string())?;
    println!("  19 B  reflex response for {}", back.observed);

    // An unknown reason byte is still a reject.
    let mut rej = PunchReject {
        target: NodeId(2),
        punch_id: 7,
        reason: RejectReason::RateLimited,
    }
    .to_bytes();
    rej[13] = 0x9C;
    let odd = PunchReject::decode(&rej).map_err(|e| e.to_string())?;
    println!("  reason byte 0x9c decodes as: {}", odd.reason);

    println!("Malformed input is a typed error:");
    let mut bad_family = messages_first_v1(reflex);
    bad_family[9] = 5;
    for bad in [&bad_family[..], &[0x01, 0, 0][..], &[0x09; 14][..]] {
        let err = RendezvousMessage::decode(bad).expect_err("malformed");
        println!("  {:<44} -> {err}", show(bad));
    }

    println!("Pair matrix (local class down, remote class across):");
    let classes = [
        NatClass::Open,
        NatClass::Cone,
        NatClass::Symmetric,
        NatClass::Unknown,
    ];
    print!("{:<15}", "");
    for remote in classes {
        print!("{:<15}", remote.tag());
    }
    println!();
    for local in classes {
        print!("{:<15}", local.tag());
        for remote in classes {
            print!("{:<15}", pair_action(local, remote).name());
        }
        println!();
    }
    Ok(())
}
