//! C8: STUN servers as sweep destinations. A node may list STUN servers;
//! a sweep sends each a Binding request from the node socket, and an answer
//! — the sweep's transaction id, from that server — is an observation with
//! the server's IP as its destination (C4), alongside peers.
#![allow(missing_docs)]

use std::net::SocketAddr;

use natrix_proto::wire::NodeId;
use natrix_proto::wire::stun::{self, BindingResponse, Message};
use natrix_proto::{
    Agent, Config, DatagramVerdict, Event, Instant, NatClass, ReclassifyOutcome, SweepOutcome,
    Transmit,
};

fn bind() -> SocketAddr {
    "10.0.0.2:4000".parse().unwrap()
}

fn quiet() -> Config {
    Config::builder()
        .auto_reclassify(false)
        .build()
        .expect("valid")
}

fn agent(servers: &[&str]) -> Agent {
    let mut a = Agent::new(NodeId(1), bind(), quiet(), 7);
    let servers: Vec<SocketAddr> = servers.iter().map(|s| s.parse().unwrap()).collect();
    a.set_stun_servers(&servers);
    a
}

/// The Binding requests the agent sent: (server, transaction id).
fn requests(a: &mut Agent) -> Vec<(SocketAddr, stun::TransactionId)> {
    std::iter::from_fn(|| a.poll_transmit())
        .filter_map(|t| match t {
            Transmit::Datagram { local, to, payload } => {
                assert_eq!(local, bind(), "sent from the node socket");
                match stun::decode(payload.as_bytes()) {
                    Ok(Message::Request(r)) => Some((to, r.transaction)),
                    other => panic!("not a Binding request: {other:?}"),
                }
            }
            _ => None,
        })
        .collect()
}

fn answer(transaction: stun::TransactionId, mapped: &str) -> Vec<u8> {
    let mut buf = [0u8; 128];
    let resp = BindingResponse {
        transaction,
        mapped: mapped.parse().unwrap(),
        other_address: None,
        response_origin: None,
    };
    let n = stun::encode_success(&resp, false, &mut buf).expect("fits");
    buf[..n].to_vec()
}

fn outcomes(a: &mut Agent) -> Vec<SweepOutcome> {
    std::iter::from_fn(|| a.poll_event())
        .filter_map(|e| match e {
            Event::SweepFinished { outcome, .. } => Some(outcome),
            _ => None,
        })
        .collect()
}

fn at(ms: u64) -> Instant {
    Instant::from_millis(ms)
}

#[test]
fn c8_stun_servers_alone_classify_the_nat() {
    let mut a = agent(&["198.51.100.1:3478", "198.51.100.2:3478"]);
    assert!(matches!(
        a.reclassify(at(0)),
        ReclassifyOutcome::Started { .. }
    ));
    let sent = requests(&mut a);
    assert_eq!(sent.len(), 2, "one Binding request per server");
    for (server, txid) in &sent {
        let v = a.handle_datagram(at(20), bind(), *server, &answer(*txid, "203.0.113.9:51000"));
        assert_eq!(v, DatagramVerdict::Consumed);
    }
    match outcomes(&mut a).as_slice() {
        [SweepOutcome::Committed(c)] => {
            assert_eq!(c.class, NatClass::Cone);
            assert_eq!(c.reflex, Some("203.0.113.9:51000".parse().unwrap()));
        }
        other => panic!("{other:?}"),
    }
    // Two servers saw two different ports: symmetric.
    a.reclassify(at(1_000));
    let sent = requests(&mut a);
    for (i, (server, txid)) in sent.iter().enumerate() {
        let seen = format!("203.0.113.9:{}", 51_000 + i);
        let v = a.handle_datagram(at(1_020), bind(), *server, &answer(*txid, &seen));
        assert_eq!(v, DatagramVerdict::Consumed);
    }
    assert!(matches!(
        outcomes(&mut a).as_slice(),
        [SweepOutcome::Committed(c)] if c.class == NatClass::Symmetric
    ));
}

#[test]
fn c8_c4_two_stun_servers_on_one_ip_are_one_destination() {
    let mut a = agent(&["198.51.100.1:3478", "198.51.100.1:3479"]);
    assert_eq!(
        a.reclassify(at(0)),
        ReclassifyOutcome::InsufficientDestinations { destinations: 1 }
    );
    assert!(requests(&mut a).is_empty(), "nothing sent");
}

#[test]
fn c8_a_stun_answer_counts_only_with_its_transaction_from_its_server() {
    let mut a = agent(&["198.51.100.1:3478", "198.51.100.2:3478"]);
    a.reclassify(at(0));
    let sent = requests(&mut a);
    let (s1, t1) = sent[0];
    let (s2, t2) = sent[1];
    let mut wrong = t1;
    wrong[0] ^= 1;
    let stranger: SocketAddr = "192.0.2.66:3478".parse().unwrap();
    for (from, txid) in [(s1, wrong), (stranger, t1), (s2, t1), (s1, t2)] {
        let v = a.handle_datagram(at(10), bind(), from, &answer(txid, "192.0.2.66:1"));
        assert_eq!(v, DatagramVerdict::NotOurs, "{from} {txid:?}");
    }
    // Garbage and requests are not ours either.
    assert_eq!(
        a.handle_datagram(at(10), bind(), s1, b"hello"),
        DatagramVerdict::NotOurs
    );
    assert!(outcomes(&mut a).is_empty(), "the sweep still waits");
    // The right answers still count afterwards.
    for (s, t) in [(s1, t1), (s2, t2)] {
        let v = a.handle_datagram(at(20), bind(), s, &answer(t, "203.0.113.9:51000"));
        assert_eq!(v, DatagramVerdict::Consumed);
    }
    assert!(matches!(
        outcomes(&mut a).as_slice(),
        [SweepOutcome::Committed(c)] if c.class == NatClass::Cone
    ));
    // A late duplicate after the sweep is not ours.
    assert_eq!(
        a.handle_datagram(at(30), bind(), s1, &answer(t1, "192.0.2.66:1")),
        DatagramVerdict::NotOurs
    );
}

#[test]
fn c8_a_silent_stun_server_expires_without_stalling_the_sweep() {
    let mut a = agent(&["198.51.100.1:3478", "198.51.100.2:3478"]);
    a.reclassify(at(0));
    let sent = requests(&mut a);
    let v = a.handle_datagram(
        at(10),
        bind(),
        sent[0].0,
        &answer(sent[0].1, "203.0.113.9:51000"),
    );
    assert_eq!(v, DatagramVerdict::Consumed);
    // The other never answers: at its probe timeout (3 s, before the 5 s
    // sweep deadline) it just loses its observation (C2: too few, kept).
    let due = a.poll_timeout().expect("a deadline");
    assert!(due <= at(3_000), "{due:?}");
    a.handle_timeout(at(3_000));
    assert_eq!(
        outcomes(&mut a),
        vec![SweepOutcome::TooFewObservations { observations: 1 }]
    );
}

#[test]
fn c8_unusable_stun_addresses_are_dropped_and_the_list_is_bounded() {
    let many: Vec<String> = (1..=20).map(|i| format!("198.51.100.{i}:3478")).collect();
    let mut list: Vec<&str> = vec![
        "0.0.0.0:3478",
        "224.0.0.1:3478",
        "198.51.100.1:0",
        "255.255.255.255:3478",
    ];
    list.extend(many.iter().map(String::as_str));
    let mut a = agent(&list);
    a.reclassify(at(0));
    let sent = requests(&mut a);
    assert_eq!(sent.len(), natrix_proto::discovery::MAX_STUN_SERVERS);
    assert!(
        sent.iter()
            .all(|(s, _)| s.ip().to_string().starts_with("198.51.100.") && s.port() == 3478)
    );
}

#[test]
fn c8_c4_a_stun_server_at_a_peers_ip_is_that_peers_destination() {
    // A peer with a session at 198.51.100.1, and STUN servers at that IP and
    // at another: the sweep asks the peer and only the other server.
    let mut a = agent(&["198.51.100.1:3478", "198.51.100.2:3478"]);
    a.handle_session_up(NodeId(9), "198.51.100.1:7000".parse().unwrap())
        .expect("room");
    let _ = std::iter::from_fn(|| a.poll_transmit()).count();
    assert!(matches!(
        a.reclassify(at(0)),
        ReclassifyOutcome::Started { .. }
    ));
    let sent = requests(&mut a);
    assert_eq!(
        sent.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec!["198.51.100.2:3478".parse::<SocketAddr>().unwrap()]
    );
}
