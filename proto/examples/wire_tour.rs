//! A tour of the natrix wire format: decodes the worked examples of the wire
//! spec byte for byte, round-trips one of every other message, shows typed
//! decode errors (including the two canonical-encoding rejections), and prints
//! the pair matrix computed by `pair_action`.
//!
//! `cargo run -p natrix-proto --example wire_tour`
//!
//! Any mismatch makes `main` return an error, so the process exits non-zero.
//! Nothing is sent anywhere; the addresses are documentation ranges.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use natrix_proto::wire::{
    Keepalive, NodeId, PunchAck, PunchIntroduce, PunchReject, PunchRequest, ReflexResponse,
    RejectReason, RendezvousMessage,
};
use natrix_proto::{NatClass, pair_action};

/// Parses hex digits, ignoring whitespace.
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

/// Formats bytes as space-separated hex.
fn show(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails unless `reencoded` is exactly `wire`.
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

fn addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

fn worked_examples() -> Result<(), String> {
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
    check("Keepalive", &wire, &ka.to_bytes())
}

fn round_trips(v4: SocketAddr, v6: SocketAddr) -> Result<(), String> {
    println!("Round trips (encode, decode, compare):");
    let messages = [
        (
            "request v1",
            RendezvousMessage::Request(PunchRequest {
                target: NodeId(2),
                punch_id: None,
                self_reflex: v4,
            }),
        ),
        (
            "request v2",
            RendezvousMessage::Request(PunchRequest {
                target: NodeId(2),
                punch_id: NonZeroU32::new(7),
                self_reflex: v6,
            }),
        ),
        (
            "introduce",
            RendezvousMessage::Introduce(PunchIntroduce {
                peer: NodeId(1),
                peer_reflex: v4,
                fire_at_ms: 1_700_000_000_500,
            }),
        ),
        (
            "ack",
            RendezvousMessage::Ack(PunchAck {
                from_peer: NodeId(1),
                to_peer: NodeId(2),
                punch_id: 7,
            }),
        ),
        (
            "reject",
            RendezvousMessage::Reject(PunchReject {
                target: NodeId(2),
                punch_id: 7,
                reason: RejectReason::ReflexMismatch,
            }),
        ),
    ];
    for (name, m) in messages {
        let (enc, len) = m.to_bytes();
        let back = RendezvousMessage::decode(&enc[..len]).map_err(|e| e.to_string())?;
        if back != m {
            return Err(format!("{m:?} decoded as {back:?}"));
        }
        println!("  {name:<12}{len:>2} B  {}", show(&enc[..len]));
    }

    let resp = ReflexResponse { observed: v6 };
    let enc = resp.to_bytes();
    let back = ReflexResponse::decode(&enc).map_err(|e| e.to_string())?;
    if back != resp {
        return Err(format!("{resp:?} decoded as {back:?}"));
    }
    println!("  {:<12}{:>2} B  {}", "reflex resp", enc.len(), show(&enc));
    println!("              observed {}", back.observed);

    // An unknown reason byte is still a reject, and the byte survives re-encoding.
    let mut rej = PunchReject {
        target: NodeId(2),
        punch_id: 7,
        reason: RejectReason::RateLimited,
    }
    .to_bytes();
    rej[13] = 0x9C;
    let odd = PunchReject::decode(&rej).map_err(|e| e.to_string())?;
    println!("  reject with reason byte 0x9c decodes as: {}", odd.reason);
    if odd.reason != RejectReason::Unspecified(0x9C) {
        return Err(format!("reason 0x9c decoded as {:?}", odd.reason));
    }
    check("PunchReject (unknown reason)", &rej, &odd.to_bytes())
}

fn malformed(v4: SocketAddr) -> Result<(), String> {
    println!("Malformed input is a typed error:");
    let (v1, n) = PunchRequest {
        target: NodeId(2),
        punch_id: None,
        self_reflex: v4,
    }
    .to_bytes();
    let v1 = &v1[..n];

    let mut bad_family = v1.to_vec();
    bad_family[9] = 5; // ADDR family byte
    let mut bad_padding = v1.to_vec();
    bad_padding[14] = 1; // first byte of the IPv4 padding
    let (v2, n) = PunchRequest {
        target: NodeId(2),
        punch_id: NonZeroU32::new(7),
        self_reflex: v4,
    }
    .to_bytes();
    let mut zero_id = v2[..n].to_vec();
    zero_id[9..13].fill(0); // the reserved punch id 0
    let mut trailing = v1.to_vec();
    trailing.push(0);

    let cases: [(&str, &[u8]); 6] = [
        ("family 5", &bad_family),
        ("padding", &bad_padding),
        ("v2 id 0", &zero_id),
        ("trailing", &trailing),
        ("short", &[0x01, 0, 0]),
        ("kind 0x09", &[0x09; 14]),
    ];
    for (name, bad) in cases {
        match RendezvousMessage::decode(bad) {
            Err(err) => println!("  {name:<10} {:>2} B -> {err}", bad.len()),
            Ok(m) => return Err(format!("{name}: malformed input decoded as {m:?}")),
        }
    }
    Ok(())
}

fn pair_matrix() {
    println!("Pair matrix (local class down, remote class across):");
    let classes = [
        NatClass::Open,
        NatClass::Cone,
        NatClass::Symmetric,
        NatClass::Unknown,
    ];
    let mut rows = vec![
        std::iter::once(String::new())
            .chain(classes.iter().map(|c| c.tag().to_string()))
            .collect::<Vec<_>>(),
    ];
    for local in classes {
        rows.push(
            std::iter::once(local.tag().to_string())
                .chain(
                    classes
                        .iter()
                        .map(|&remote| pair_action(local, remote).name().to_string()),
                )
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..=classes.len())
        .map(|col| rows.iter().map(|r| r[col].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:<w$}"))
            .collect();
        println!("  {}", cells.join("  ").trim_end());
    }
}

fn main() -> Result<(), String> {
    let v4 = addr("198.51.100.4:40000")?;
    let v6 = addr("[2001:db8::9]:443")?;
    worked_examples()?;
    round_trips(v4, v6)?;
    malformed(v4)?;
    pair_matrix();
    Ok(())
}
