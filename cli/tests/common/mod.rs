//! What the CLI's test files share: the binary, a scratch directory, a key
//! file.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The built `natrix` binary.
pub const NATRIX: &str = env!("CARGO_BIN_EXE_natrix");

/// How long any one process may take.
pub const BOUND: Duration = Duration::from_secs(60);

/// A scratch directory (for key files), removed when dropped, also when a
/// test fails.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory whose name says which test made it.
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "natrix-cli-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// `file` inside it.
    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new key file at `path` (`natrix keygen`); its public key.
pub fn keygen(path: &Path) -> String {
    let out = Command::new(NATRIX)
        .args(["keygen", "--out"])
        .arg(path)
        .output()
        .expect("run natrix keygen");
    assert!(out.status.success(), "keygen failed: {out:?}");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Two ports, `p` on 127.0.0.1 and `q` on 127.0.0.2, with both free on both
/// IPs at the moment of the check: (127.0.0.1:p, 127.0.0.2:q).
pub fn free_port_pair() -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
    let a = std::net::UdpSocket::bind("127.0.0.1:0").ok()?;
    let p = a.local_addr().ok()?.port();
    let b = std::net::UdpSocket::bind("127.0.0.2:0").ok()?;
    let q = b.local_addr().ok()?.port();
    let _c = std::net::UdpSocket::bind(("127.0.0.1", q)).ok()?;
    let _d = std::net::UdpSocket::bind(("127.0.0.2", p)).ok()?;
    Some((a.local_addr().ok()?, b.local_addr().ok()?))
}
