//! Running the `natrix` binary in the lab: keys, coordinators, `listen` and
//! `connect` peers, and reading their `--report` files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::kinds::PEER_PORT;
use crate::netns::run;
use crate::proc::Proc;
use crate::topo::{Internet, Site};
use crate::{LabError, Result};

/// The `natrix` binary and where its files go.
#[derive(Debug, Clone)]
pub struct Natrix {
    /// The binary.
    pub bin: PathBuf,
    /// Keys, reports and logs.
    pub dir: PathBuf,
    /// Extra flags for peers (`-vv` for debug logs).
    pub verbosity: String,
    /// More flags for `listen` and `connect` (say `--stun-server`).
    pub peer_flags: Vec<String>,
}

/// A coordinator the lab runs.
#[derive(Debug)]
pub struct Coordinator {
    /// The process.
    pub proc: Proc,
    /// Its dial string.
    pub dial: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Its key file (a restart reuses it).
    pub key_file: PathBuf,
}

impl Natrix {
    /// Writes a new key file; its public key.
    ///
    /// # Errors
    /// `natrix keygen` fails.
    pub fn keygen(&self, name: &str) -> Result<(PathBuf, String)> {
        let file = self.dir.join(format!("{name}.key"));
        let _ = std::fs::remove_file(&file);
        let path = file.to_string_lossy().into_owned();
        let out = run(&self.bin.to_string_lossy(), &["keygen", "--out", &path])?;
        let key = out.trim().to_owned();
        if !key.starts_with("natrix1") {
            return Err(LabError::Setup(format!("keygen printed {key:?}")));
        }
        Ok((file, key))
    }

    /// Starts coordinator `n` of the internet namespace (IPv4 or IPv6) and
    /// waits until it runs.
    ///
    /// # Errors
    /// It does not start.
    pub fn coordinator(&self, internet: &Internet, n: u8, v6: bool) -> Result<Coordinator> {
        let name = format!("coordinator{n}{}", if v6 { "v6" } else { "" });
        let (key_file, key) = self.keygen(&name)?;
        let addr = Internet::coordinator_addr(n, v6);
        let proc = self.start_coordinator(&internet.ns, &name, &key_file, addr)?;
        Ok(Coordinator {
            proc,
            dial: format!("{key}@{addr}"),
            addr,
            key_file,
        })
    }

    /// Starts a coordinator process (also used to restart one).
    ///
    /// # Errors
    /// It does not start or does not say it runs.
    pub fn start_coordinator(
        &self,
        ns: &str,
        name: &str,
        key_file: &Path,
        addr: SocketAddr,
    ) -> Result<Proc> {
        let args = vec![
            "coordinator".to_owned(),
            "--listen".to_owned(),
            addr.to_string(),
            "--key".to_owned(),
            key_file.to_string_lossy().into_owned(),
        ];
        let mut p = Proc::spawn(ns, name, &self.dir, &self.bin, &args, None)?;
        p.wait_log("coordinator running", Duration::from_secs(10))?;
        Ok(p)
    }

    /// Starts `natrix listen` (or, with `connect_to`, `natrix connect` to
    /// that key) on `site`'s peer, fed numbered lines labelled `name`.
    ///
    /// # Errors
    /// It does not start.
    pub fn peer(
        &self,
        site: &Site,
        name: &str,
        coordinators: &[&str],
        key_file: &Path,
        connect_to: Option<&str>,
    ) -> Result<Proc> {
        let bind = if site.kind.is_v6() {
            format!("[::]:{PEER_PORT}")
        } else {
            format!("0.0.0.0:{PEER_PORT}")
        };
        let mut args = vec![if connect_to.is_some() {
            "connect".to_owned()
        } else {
            "listen".to_owned()
        }];
        for c in coordinators {
            args.push("-c".to_owned());
            args.push((*c).to_owned());
        }
        args.extend(
            [
                "--key",
                &key_file.to_string_lossy(),
                "--bind",
                &bind,
                "--wait",
                "15",
                "--linger",
                "1",
                "--report",
                &self.report_path(name).to_string_lossy(),
                &self.verbosity,
            ]
            .map(str::to_owned),
        );
        args.extend(self.peer_flags.iter().cloned());
        if let Some(key) = connect_to {
            args.push(key.to_owned());
        }
        Proc::spawn(
            &site.peer_ns,
            name,
            &self.dir,
            &self.bin,
            &args,
            Some(name.to_owned()),
        )
    }

    /// Starts `natrix listen` on `b` (named `{tag}-B`) and, once it waits
    /// for a peer, `natrix connect` from `a` (`{tag}-A`) to it, both fed
    /// numbered lines; returns (A, B) once A says it is connected.
    ///
    /// # Errors
    /// Either does not start, or hangs.
    pub fn start_pair(
        &self,
        tag: &str,
        a: &Site,
        b: &Site,
        coordinators: &[&str],
    ) -> Result<(Proc, Proc)> {
        let (na, nb) = (format!("{tag}-A"), format!("{tag}-B"));
        let (ka, _) = self.keygen(&na)?;
        let (kb, key_b) = self.keygen(&nb)?;
        let mut pb = self.peer(b, &nb, coordinators, &kb, None)?;
        pb.wait_log("waiting for a peer to connect", Duration::from_secs(20))?;
        let mut pa = self.peer(a, &na, coordinators, &ka, Some(&key_b))?;
        pa.wait_log("connected to", Duration::from_secs(20))?;
        Ok((pa, pb))
    }

    /// Where peer `name`'s `--report` goes.
    #[must_use]
    pub fn report_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Reads peer `name`'s report.
    ///
    /// # Errors
    /// Missing or malformed.
    pub fn report(&self, name: &str) -> Result<PeerReport> {
        let file = self.report_path(name);
        let bad = |detail: String| LabError::Report {
            file: file.display().to_string(),
            detail,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| bad(e.to_string()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        PeerReport::from_json(&v).ok_or_else(|| bad("missing fields".to_owned()))
    }
}

/// What a peer's `--report` says (the fields the lab uses).
#[derive(Debug, Clone, Default)]
pub struct PeerReport {
    /// Exit code.
    pub exit: i64,
    /// The class it measured (`open`, `cone`, `symmetric`).
    pub class: Option<String>,
    /// Its public address as measured.
    pub reflex: Option<String>,
    /// The NAT profile it announced (`EIM/APDF`), when it measured one.
    pub profile: Option<String>,
    /// Node time the connection opened.
    pub opened: Option<f64>,
    /// Node time the first datagram arrived.
    pub first_datagram: Option<f64>,
    /// Datagrams received.
    pub received: u64,
    /// Path changes: (node time, kind, reason, remote).
    pub paths: Vec<(f64, String, String, Option<String>)>,
    /// Failed upgrades: (node time, error).
    pub upgrade_failures: Vec<(f64, String)>,
    /// The path at the end (`direct` or `relayed`).
    pub final_kind: Option<String>,
    /// The punch counters.
    pub stats: Value,
    /// The node's port mapping (P7): `active`, `external`, `renewals`
    /// (`null` from an older binary).
    pub port_mapping: Value,
    /// The driver's birthday sockets (N2): `sockets_opened`,
    /// `socket_failures`, `pinned_paths` (`null` from an older binary).
    pub spray: Value,
}

impl PeerReport {
    fn from_json(v: &Value) -> Option<PeerReport> {
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        let mut r = PeerReport {
            exit: v.get("exit")?.as_i64()?,
            class: v
                .pointer("/classification/class")
                .and_then(Value::as_str)
                .map(str::to_owned),
            reflex: v
                .pointer("/classification/reflex")
                .and_then(Value::as_str)
                .map(str::to_owned),
            profile: v
                .pointer("/classification/profile")
                .and_then(Value::as_str)
                .map(str::to_owned),
            opened: f("opened"),
            first_datagram: f("first_datagram"),
            received: v.pointer("/datagrams/received")?.as_u64()?,
            final_kind: v
                .pointer("/path/kind")
                .and_then(Value::as_str)
                .map(str::to_owned),
            stats: v.get("stats")?.clone(),
            spray: v.get("spray").cloned().unwrap_or(Value::Null),
            port_mapping: v.get("port_mapping").cloned().unwrap_or(Value::Null),
            ..PeerReport::default()
        };
        for e in v.get("events")?.as_array()? {
            let t = e.get("t").and_then(Value::as_f64).unwrap_or(0.0);
            let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned);
            match s("event").as_deref() {
                Some("path") => r.paths.push((
                    t,
                    s("kind").unwrap_or_default(),
                    s("reason").unwrap_or_default(),
                    s("remote"),
                )),
                Some("upgrade_failed") => r
                    .upgrade_failures
                    .push((t, s("detail").unwrap_or_default())),
                _ => {}
            }
        }
        if r.final_kind.is_none() {
            // The connection had ended when the report was written: its
            // last path change says where it was.
            r.final_kind = r.paths.last().map(|p| p.1.clone());
        }
        Some(r)
    }

    /// A punch counter.
    #[must_use]
    pub fn stat(&self, name: &str) -> u64 {
        self.stats.get(name).and_then(Value::as_u64).unwrap_or(0)
    }

    /// A counter of the driver's birthday sockets (N2).
    #[must_use]
    pub fn spray_stat(&self, name: &str) -> u64 {
        self.spray.get(name).and_then(Value::as_u64).unwrap_or(0)
    }

    /// Seconds from opening to the first datagram received.
    #[must_use]
    pub fn time_to_first_datagram(&self) -> Option<f64> {
        Some(self.first_datagram? - self.opened?)
    }

    /// Seconds from opening to the first upgrade to a direct path.
    #[must_use]
    pub fn time_to_direct(&self) -> Option<f64> {
        let t = self
            .paths
            .iter()
            .find(|(_, kind, reason, _)| kind == "direct" && reason == "upgraded")?
            .0;
        Some(t - self.opened?)
    }
}
