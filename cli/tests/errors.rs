//! The documented exit codes and messages for what users get wrong: bad
//! arguments (2), key file problems (3), a coordinator that does not answer
//! (4), a peer nobody knows (5); and help texts with examples.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use std::time::{Duration, Instant};

mod common;
use common::*;

/// A child killed when dropped.
struct Guard(Option<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `natrix args…` with stdin closed, within `BOUND`.
fn natrix<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let child = Command::new(NATRIX)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run natrix");
    let mut guard = Guard(Some(child));
    let start = Instant::now();
    while let Some(c) = guard.0.as_mut() {
        if c.try_wait().expect("try_wait").is_some() {
            break;
        }
        assert!(
            start.elapsed() < BOUND,
            "natrix did not exit within {BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The outputs are small: they fit the pipes' buffers.
    let child = guard.0.take().expect("child");
    child.wait_with_output().expect("output")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts exit code `code` and that stderr contains each of `words`.
fn assert_exit(out: &Output, code: i32, words: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr:\n{err}");
    for w in words {
        assert!(err.contains(w), "stderr lacks {w:?}:\n{err}");
    }
}

/// A dial string for a coordinator key on a UDP port nobody listens on.
fn silent_dial(dir: &TempDir) -> String {
    let key = keygen(&dir.path("nobody.key"));
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind")
        .port();
    format!("{key}@127.0.0.1:{port}")
}

#[test]
fn bad_dial_string_exits_2_and_names_it() {
    let dir = TempDir::new("dial");
    let peer = keygen(&dir.path("peer.key"));
    let key = dir.path("me.key");
    let key = key.to_str().expect("utf-8");
    for bad in ["no-at-sign", "natrix1abc@127.0.0.1:7000", "@127.0.0.1:7000"] {
        let out = natrix(["connect", "--coordinator", bad, "--key", key, &peer]);
        assert_exit(&out, 2, &["bad dial string", bad, "hint:"]);
        let out = natrix(["listen", "--coordinator", bad, "--key", key]);
        assert_exit(&out, 2, &["bad dial string"]);
    }
    // A typo in the dial string is reported before the key file is created.
    assert!(!dir.path("me.key").exists());
}

#[test]
fn bad_peer_key_exits_2() {
    let dir = TempDir::new("peerkey");
    let dial = silent_dial(&dir);
    let out = natrix(["connect", "--coordinator", &dial, "natrix1notakey"]);
    assert_exit(&out, 2, &["bad public key", "natrix1notakey"]);
}

#[test]
fn unknown_flag_and_missing_arguments_exit_2() {
    let out = natrix(["connect", "--no-such-flag"]);
    assert_exit(&out, 2, &["--no-such-flag"]);
    let out = natrix(["listen"]);
    assert_exit(&out, 2, &["--coordinator"]);
    let out = natrix(["no-such-command"]);
    assert_exit(&out, 2, &["no-such-command"]);
    let out = natrix(["listen", "-c", "x", "--framing", "bytes"]);
    assert_exit(&out, 2, &["--framing"]);
}

#[test]
fn garbage_key_file_exits_3() {
    let dir = TempDir::new("garbage");
    let dial = silent_dial(&dir);
    let key = dir.path("garbage.key");
    std::fs::write(&key, "this is not a key\n").expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let key = key.to_str().expect("utf-8");
    let out = natrix([
        "listen",
        "--coordinator",
        &dial,
        "--key",
        key,
        "--wait",
        "1",
    ]);
    assert_exit(&out, 3, &["garbage.key", "malformed"]);
}

#[cfg(unix)]
#[test]
fn key_file_readable_by_others_exits_3() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("open");
    let dial = silent_dial(&dir);
    let key = dir.path("open.key");
    keygen(&key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let key = key.to_str().expect("utf-8");
    let out = natrix([
        "listen",
        "--coordinator",
        &dial,
        "--key",
        key,
        "--wait",
        "1",
    ]);
    assert_exit(&out, 3, &["open.key"]);
}

#[test]
fn keygen_twice_to_one_path_exits_3() {
    let dir = TempDir::new("keygen");
    let key = dir.path("k.key");
    let first = keygen(&key);
    assert!(first.starts_with("natrix1"), "{first}");
    let out = natrix([Path::new("keygen"), Path::new("--out"), &key]);
    assert_exit(&out, 3, &["k.key", "hint:"]);
    // The first identity is intact.
    assert_eq!(keygen_public(&key), first);
}

/// The public key of an existing key file, as `connect` prints it.
fn keygen_public(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read key file");
    assert!(text.starts_with("natrix-secret-key-v1 "), "{text}");
    let dir = TempDir::new("pub");
    let dial = silent_dial(&dir);
    let out = natrix([
        "connect",
        "--coordinator",
        &dial,
        "--wait",
        "1",
        "--key",
        path.to_str().expect("utf-8"),
        &keygen(&dir.path("other.key")),
    ]);
    let err = stderr(&out);
    err.split_whitespace()
        .skip_while(|w| *w != "is")
        .nth(1)
        .unwrap_or_else(|| panic!("no public key in:\n{err}"))
        .to_owned()
}

#[test]
fn silent_coordinator_exits_4() {
    let dir = TempDir::new("silent");
    let dial = silent_dial(&dir);
    let peer = keygen(&dir.path("peer.key"));
    let key = dir.path("me.key");
    let key = key.to_str().expect("utf-8");
    let out = natrix([
        "connect",
        "--coordinator",
        &dial,
        "--key",
        key,
        "--wait",
        "1",
        &peer,
    ]);
    assert_exit(&out, 4, &["no session with coordinator", "hint:"]);
    let out = natrix([
        "listen",
        "--coordinator",
        &dial,
        "--key",
        key,
        "--wait",
        "1",
    ]);
    assert_exit(&out, 4, &["no session with coordinator"]);
}

#[test]
fn unknown_peer_exits_5() {
    let dir = TempDir::new("unknown");
    let child = Command::new(NATRIX)
        .args([
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--run-for",
            "60",
            "--key",
        ])
        .arg(dir.path("coordinator.key"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run natrix coordinator");
    let mut coordinator = Guard(Some(child));
    let mut dial = String::new();
    let out = coordinator.0.as_mut().and_then(|c| c.stdout.take());
    BufReader::new(out.expect("stdout"))
        .read_line(&mut dial)
        .expect("dial string");
    let nobody = keygen(&dir.path("nobody.key"));
    let key = dir.path("me.key");
    let out = natrix([
        "connect",
        "--coordinator",
        dial.trim(),
        "--key",
        key.to_str().expect("utf-8"),
        "--wait",
        "1",
        &nobody,
    ]);
    assert_exit(&out, 5, &["not online", &nobody, "hint:"]);
    drop(coordinator);
}

#[test]
fn help_texts_exit_0_with_examples() {
    let out = natrix(["--help"]);
    assert!(out.status.success());
    assert!(stdout(&out).contains("Exit codes"), "{}", stdout(&out));
    for cmd in ["connect", "listen"] {
        let out = natrix([cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help: {}", stderr(&out));
        let text = stdout(&out);
        for w in ["Example", "--coordinator", "--framing", "--linger"] {
            assert!(text.contains(w), "{cmd} --help lacks {w:?}:\n{text}");
        }
    }
}
