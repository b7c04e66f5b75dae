//! `natrix keygen`, `natrix coordinator` and `natrix sim` run as a user runs
//! them: the built binary, its stdout and its exit code.

#![allow(missing_docs)]

use std::process::Command;

use natrix_session::keyfile;
use natrix_session::{Dial, PublicKey};

mod common;
use common::*;

fn natrix() -> Command {
    Command::new(NATRIX)
}

#[test]
fn keygen_writes_a_key_file_and_prints_its_public_key() {
    let dir = TempDir::new("keygen");
    let path = dir.0.join("sub/key");
    let out = natrix()
        .args(["keygen", "--out"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let printed: PublicKey = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .parse()
        .expect("a public key on stdout");
    let kp = keyfile::load(&path).expect("a valid key file");
    assert_eq!(kp.public(), printed);
}

#[test]
fn coordinator_prints_a_dial_string_with_its_key_and_stops() {
    let dir = TempDir::new("coordinator");
    let key = dir.0.join("key");
    let out = natrix()
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--run-for",
            "1",
            "--key",
        ])
        .arg(&key)
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).expect("utf-8");
    let dial: Dial = line.trim().parse().expect("a dial string on stdout");
    assert_eq!(dial.key, keyfile::load(&key).expect("created").public());
    let addr = dial.socket_addr().expect("an IP address");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let err = String::from_utf8(out.stderr).expect("utf-8");
    assert!(err.contains("created a new identity"), "{err}");
}

#[test]
fn coordinator_refuses_a_bad_relay_quota_as_a_usage_error() {
    let dir = TempDir::new("quota");
    let out = natrix()
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--relay-rate",
            "0",
            "--run-for",
            "1",
            "--key",
        ])
        .arg(dir.0.join("key"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("relay quota"));
}

#[test]
fn sim_json_has_every_cell() {
    let out = natrix()
        .args(["sim", "--json", "--seed", "3"])
        .output()
        .expect("runs");
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["seed"], 3);
    let cells = doc["cells"].as_array().expect("cells");
    assert_eq!(cells.len(), 49);
    for c in cells {
        assert!(c["a"].is_string() && c["b"].is_string(), "{c}");
        assert!(c["outcome"].is_string(), "{c}");
        assert!(c["keepalives"].is_u64(), "{c}");
        assert!(
            c["time_to_direct_ms"].is_u64() || c["time_to_direct_ms"].is_null(),
            "{c}"
        );
    }
    let open = cells
        .iter()
        .find(|c| c["a"] == "open" && c["b"] == "open")
        .expect("open x open");
    assert_eq!(open["outcome"], "direct");
}

#[test]
fn sim_refuses_a_loss_outside_zero_to_one() {
    let out = natrix()
        .args(["sim", "--loss", "1.5"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn coordinator_on_a_port_in_use_says_so() {
    let dir = TempDir::new("inuse");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = natrix()
        .args(["coordinator", "--run-for", "1", "--listen"])
        .arg(addr.to_string())
        .arg("--key")
        .arg(dir.0.join("key"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("in use"),
        "{err}"
    );
}

#[test]
fn a_closed_stdout_pipe_ends_quietly_with_success() {
    use std::process::Stdio;
    let mut child = natrix()
        .args(["sim", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    // The reader goes away before the matrix (about a second of work) is
    // written: the write fails with a broken pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("exits");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
