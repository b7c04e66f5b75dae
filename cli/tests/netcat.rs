//! `natrix listen` and `natrix connect` as a user runs them: a coordinator
//! on loopback, the two peers as separate processes, lines piped both ways.
//!
//! Every wait has a generous bound; every child is killed if a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// A running `natrix`: killed when dropped (a failing test leaves nothing
/// behind); stdout and stderr are collected by threads.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// What a finished process left.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn collect(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

impl Proc {
    fn spawn(name: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(NATRIX)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run natrix");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(collect);
        let stderr = child.stderr.take().map(collect);
        Proc {
            name: name.to_owned(),
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Writes `text` to stdin and closes it.
    fn feed(&mut self, text: &str) {
        let mut stdin = self.stdin.take().expect("stdin still open");
        stdin.write_all(text.as_bytes()).expect("write stdin");
    }

    /// Waits for the process to exit (killing it after `BOUND`).
    fn finish(mut self) -> Finished {
        drop(self.stdin.take());
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break Some(s);
            }
            if start.elapsed() > BOUND {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = self.child.wait();
        let stdout = self.stdout.take().map(|h| h.join().unwrap_or_default());
        let stderr = self.stderr.take().map(|h| h.join().unwrap_or_default());
        let text =
            |b: Option<Vec<u8>>| String::from_utf8_lossy(&b.unwrap_or_default()).into_owned();
        let (stdout, stderr) = (text(stdout), text(stderr));
        let Some(status) = status else {
            panic!(
                "{} did not exit within {BOUND:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
                self.name
            );
        };
        Finished {
            status,
            stdout,
            stderr,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A coordinator on `listen` for 60 s, and its dial string.
fn coordinator(dir: &TempDir, listen: &str) -> (Proc, String) {
    coordinator_with(dir, listen, &[]).expect("the coordinator prints its dial string")
}

/// [`coordinator`] with more flags; `None` when it exits without printing
/// a dial string (one of its addresses was taken).
fn coordinator_with(dir: &TempDir, listen: &str, extra: &[&str]) -> Option<(Proc, String)> {
    let key = dir.path("coordinator.key");
    let mut child = Command::new(NATRIX)
        .args([
            "coordinator",
            "--listen",
            listen,
            "--run-for",
            "60",
            "--key",
        ])
        .arg(&key)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run natrix coordinator");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().map(collect);
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut out = BufReader::new(stdout);
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        let _ = tx.send(line);
        let mut rest = Vec::new();
        let _ = out.read_to_end(&mut rest);
        rest
    });
    let proc = Proc {
        name: "coordinator".into(),
        child,
        stdin: None,
        stdout: Some(reader),
        stderr,
    };
    let dial = rx.recv_timeout(BOUND).ok()?.trim().to_owned();
    if !(dial.starts_with("natrix1") && dial.contains('@')) {
        eprintln!("not a dial string: {dial:?}");
        return None;
    }
    Some((proc, dial))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Runs listen and connect (with `connect_extra` arguments), one line into
/// each; returns (listen, connect).
fn session(coordinator_addr: &str, name: &str, connect_extra: &[&str]) -> (Finished, Finished) {
    let dir = TempDir::new(name);
    let (coord, dial) = coordinator(&dir, coordinator_addr);
    let listen_key_file = dir.path("listen.key");
    let listen_key = keygen(&listen_key_file);
    let connect_key_file = dir.path("connect.key");

    let mut args = vec!["listen", "--coordinator", &dial, "--linger", "3"];
    args.extend(["--key", path_str(&listen_key_file)]);
    let mut listen = Proc::spawn("listen", &args);
    listen.feed("hello from listen\n");

    let mut args = vec!["connect", "--coordinator", &dial, "--linger", "3"];
    args.extend(["--key", path_str(&connect_key_file)]);
    args.extend(connect_extra);
    args.push(&listen_key);
    let mut connect = Proc::spawn("connect", &args);
    connect.feed("hello from connect\n");

    let connect = connect.finish();
    let listen = listen.finish();
    drop(coord);
    (listen, connect)
}

fn assert_got(side: &str, f: &Finished, line: &str) {
    assert!(
        f.status.success(),
        "{side} exited with {:?}\nstdout:\n{}\nstderr:\n{}",
        f.status,
        f.stdout,
        f.stderr
    );
    assert!(
        f.stdout.lines().any(|l| l == line),
        "{side} did not print {line:?}\nstdout:\n{}\nstderr:\n{}",
        f.stdout,
        f.stderr
    );
}

#[test]
fn listen_and_connect_pipe_lines_both_ways() {
    let (listen, connect) = session("127.0.0.1:0", "pipe", &[]);
    assert_got("listen", &listen, "hello from connect");
    assert_got("connect", &connect, "hello from listen");
    // Status on stderr: who, the path, how it ended.
    assert!(
        listen.stderr.contains("listening as natrix1"),
        "{}",
        listen.stderr
    );
    assert!(
        listen.stderr.contains("accepted natrix1"),
        "{}",
        listen.stderr
    );
    assert!(
        connect.stderr.contains("connected to natrix1"),
        "{}",
        connect.stderr
    );
    assert!(
        connect
            .stderr
            .contains("path: relayed via coordinator 127.0.0.1:"),
        "{}",
        connect.stderr
    );
    // It ended on its own stdin's end, or on the listener's close (both
    // linger after their stdin ends; whichever closes first tells the other).
    assert!(
        connect.stderr.contains("stdin ended") || connect.stderr.contains("the peer closed it"),
        "{}",
        connect.stderr
    );
    // The connecting side created its identity and said so.
    assert!(
        connect.stderr.contains("created a new identity"),
        "{}",
        connect.stderr
    );
}

#[test]
fn listen_and_connect_over_ipv6_loopback() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let (listen, connect) = session("[::1]:0", "ipv6", &[]);
    assert_got("listen", &listen, "hello from connect");
    assert_got("connect", &connect, "hello from listen");
    assert!(
        connect
            .stderr
            .contains("path: relayed via coordinator [::1]:"),
        "{}",
        connect.stderr
    );
}

#[test]
fn datagram_framing_is_raw_and_quiet_is_quiet() {
    let dir = TempDir::new("datagram");
    let (coord, dial) = coordinator(&dir, "127.0.0.1:0");
    let listen_key_file = dir.path("listen.key");
    let listen_key = keygen(&listen_key_file);
    let connect_key_file = dir.path("connect.key");
    let common = ["--framing", "datagram", "--linger", "3", "-q"];

    let mut args = vec!["listen", "--coordinator", &dial];
    args.extend(["--key", path_str(&listen_key_file)]);
    args.extend(common);
    let mut listen = Proc::spawn("listen", &args);
    listen.feed("no newline from listen");

    let mut args = vec!["connect", "--coordinator", &dial];
    args.extend(["--key", path_str(&connect_key_file)]);
    args.extend(common);
    args.push(&listen_key);
    let mut connect = Proc::spawn("connect", &args);
    connect.feed("no newline from connect");

    let connect = connect.finish();
    let listen = listen.finish();
    drop(coord);
    for (side, f, want) in [
        ("listen", &listen, "no newline from connect"),
        ("connect", &connect, "no newline from listen"),
    ] {
        assert!(f.status.success(), "{side}: {:?}\n{}", f.status, f.stderr);
        assert_eq!(f.stdout, want, "{side} stdout (stderr: {})", f.stderr);
        assert_eq!(f.stderr, "", "{side} with -q prints nothing on stderr");
    }
}

#[test]
fn require_direct_succeeds_on_loopback() {
    let (listen, connect) = session(
        "127.0.0.1:0",
        "direct",
        &["--require-direct", "--direct-timeout", "40"],
    );
    assert_got("listen", &listen, "hello from connect");
    assert_got("connect", &connect, "hello from listen");
    assert!(
        connect.stderr.contains("path: direct to 127.0.0.1:"),
        "{}",
        connect.stderr
    );
}

/// C8: one coordinator plus a STUN server (a second coordinator's address:
/// coordinators answer STUN) are two destinations, so `listen` measures its
/// NAT class instead of publishing a guess; on loopback, Open.
#[test]
fn c8_one_coordinator_and_a_stun_server_measure_the_class() {
    if std::net::UdpSocket::bind("127.0.0.2:0").is_err() {
        eprintln!("skipping: no 127.0.0.2 on this host");
        return;
    }
    let dir = TempDir::new("stun-server");
    let (coord, dial) = coordinator(&dir, "127.0.0.1:0");
    let dir2 = TempDir::new("stun-server-2");
    let (stun, stun_dial) = coordinator(&dir2, "127.0.0.2:0");
    let stun_addr = stun_dial.split('@').nth(1).expect("host:port").to_owned();
    let key_file = dir.path("listen.key");
    keygen(&key_file);
    let args = [
        "listen",
        "--coordinator",
        &dial,
        "--stun-server",
        &stun_addr,
        "--key",
        path_str(&key_file),
        "--linger",
        "0",
        "-v",
    ];
    let (measured, seen) = stderr_until(&args, 0, |line| {
        line.contains("NAT class: Open, public address 127.0.0.1:")
    });
    let text = seen.join("\n");
    assert!(
        measured
            && text.contains("measuring the NAT class with 1 coordinator(s) and 1 STUN server(s)"),
        "stderr:\n{text}"
    );
    drop((coord, stun));
}

/// C8: `listen --behaviour-server` measures the NAT's mapping and filtering
/// against a coordinator serving RFC 5780 (`--stun-alternate`) and
/// announces them with its class: on loopback, no NAT and no filter,
/// EIM/EIF.
#[test]
fn c8_listen_measures_and_announces_the_nat_profile() {
    if std::net::UdpSocket::bind("127.0.0.2:0").is_err() {
        eprintln!("skipping: no 127.0.0.2 on this host");
        return;
    }
    let dir = TempDir::new("behaviour");
    // Four addresses (both IPs × both ports) must be free: retry when a
    // test running beside this one takes one first.
    let (_coord, dial, primary) = (0..20)
        .find_map(|_| {
            let (primary, alt) = free_port_pair()?;
            let (p, dial) = coordinator_with(
                &dir,
                &primary.to_string(),
                &["--stun-alternate", &alt.to_string()],
            )?;
            Some((p, dial, primary))
        })
        .expect("a coordinator on 127.0.0.1 and 127.0.0.2 within 20 tries");
    let key_file = dir.path("listen.key");
    keygen(&key_file);
    let primary = primary.to_string();
    let args = [
        "listen",
        "--coordinator",
        &dial,
        "--behaviour-server",
        &primary,
        "--key",
        path_str(&key_file),
        "--linger",
        "0",
    ];
    // The summary follows the behaviour line.
    let (measured, seen) = stderr_until(&args, 1, |line| line.contains("NAT behaviour ("));
    let text = seen.join("\n");
    assert!(measured, "stderr:\n{text}");
    assert!(
        text.contains(&format!("NAT behaviour ({primary}): no NAT, EIM, EIF")),
        "stderr:\n{text}"
    );
    assert!(text.contains("EIM/EIF, announced"), "stderr:\n{text}");
    assert!(text.contains("no NAT and no filtering"), "stderr:\n{text}");
}

/// Runs `natrix ARGS`, collects its stderr lines until one satisfies `done`
/// (and `more` lines after it) or [`BOUND`] passes, then kills it. Returns
/// whether `done` was seen, and the lines.
fn stderr_until(args: &[&str], more: usize, done: impl Fn(&str) -> bool) -> (bool, Vec<String>) {
    let mut child = Command::new(NATRIX)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run natrix");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let start = Instant::now();
    let found = loop {
        let Ok(line) = rx.recv_timeout(BOUND.saturating_sub(start.elapsed())) else {
            break false;
        };
        let found = done(&line);
        seen.push(line);
        if found {
            for _ in 0..more {
                if let Ok(next) = rx.recv_timeout(Duration::from_secs(5)) {
                    seen.push(next);
                }
            }
            break true;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    (found, seen)
}
