//! Network namespaces, veth pairs, addresses and nftables rulesets, and
//! their teardown.
//!
//! Every namespace the lab creates is named `nxl<pid>-<name>`, so a run
//! can find (and `natrix-lab cleanup` remove) what an earlier, killed run
//! left. Every veth lives inside the lab's namespaces from its creation
//! (`ip link add … netns A type veth peer … netns B`), and every nft table
//! inside a gateway namespace, so deleting the namespaces removes
//! everything; nothing is created in the host's own namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{LabError, Result};

/// The prefix of every namespace name the lab creates.
pub const PREFIX: &str = "nxl";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether Ctrl-C or SIGTERM arrived: every wait of the lab checks it and
/// stops with [`LabError::Interrupted`] (and the teardown runs).
#[must_use]
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Makes Ctrl-C and SIGTERM set [`interrupted`] instead of killing the
/// process (so the namespaces are torn down).
///
/// # Errors
/// The handler cannot be installed.
pub fn install_interrupt_handler() -> Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::Relaxed))
        .map_err(|e| LabError::Setup(format!("cannot install the signal handler: {e}")))
}

/// Runs `program args…`; its stdout on success, a [`LabError::Command`]
/// with its stderr otherwise.
///
/// # Errors
/// The program fails to start or exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: format!("cannot start: {e}"),
        })?;
    check(program, args, &out)
}

fn check(program: &str, args: &[&str], out: &Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: format!("{program} {}", args.join(" ")),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// Checks that the lab can run here: root, network namespaces, and the
/// tools (`ip`, `nft`, `conntrack`). Fails loudly: the lab never skips.
///
/// # Errors
/// What is missing, as [`LabError::Preflight`].
pub fn preflight() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if uid != "0" {
        return Err(LabError::Preflight(format!(
            "the lab needs root (network namespaces, nftables); effective uid is {uid}"
        )));
    }
    for (tool, arg, package) in [
        ("ip", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
        ("conntrack", "--version", "conntrack"),
        ("miniupnpd", "--version", "miniupnpd"),
        ("turnserver", "--version", "coturn"),
        ("turnutils_natdiscovery", "-h", "coturn"),
    ] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Err(LabError::Preflight(format!(
                "`{tool}` is not installed (Debian package {package})"
            )));
        }
    }
    let probe = format!("{PREFIX}{}-probe", std::process::id());
    run("ip", &["netns", "add", &probe])
        .map_err(|e| LabError::Preflight(format!("cannot create a network namespace: {e}")))?;
    let nft = run(
        "ip",
        &[
            "netns", "exec", &probe, "nft", "add", "table", "ip", "probe",
        ],
    );
    let _ = run("ip", &["netns", "del", &probe]);
    nft.map_err(|e| LabError::Preflight(format!("nftables does not work in a namespace: {e}")))?;
    Ok(())
}

/// The lab's namespaces: created through it, deleted (with every process
/// still running in them) by [`Lab::teardown`] or on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    /// Where rulesets and process logs go.
    pub dir: PathBuf,
    torn_down: bool,
}

impl Lab {
    /// A lab writing its files under `dir` (created).
    ///
    /// # Errors
    /// `dir` cannot be created.
    pub fn new(dir: &Path) -> Result<Lab> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LabError::Setup(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Lab {
            prefix: format!("{PREFIX}{}", std::process::id()),
            namespaces: Vec::new(),
            dir: dir.to_path_buf(),
            torn_down: false,
        })
    }

    /// Creates namespace `name` (its full name is returned): loopback up,
    /// IPv4 and IPv6 forwarding on.
    ///
    /// # Errors
    /// `ip netns add` or the sysctls fail.
    pub fn add_ns(&mut self, name: &str) -> Result<String> {
        let full = format!("{}-{name}", self.prefix);
        run("ip", &["netns", "add", &full])?;
        self.namespaces.push(full.clone());
        run("ip", &["-n", &full, "link", "set", "lo", "up"])?;
        self.exec(
            &full,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        Ok(full)
    }

    /// A veth pair: `a_if` in `a`, `b_if` in `b`, both up.
    ///
    /// # Errors
    /// `ip link` fails.
    pub fn veth(&self, a: &str, a_if: &str, b: &str, b_if: &str) -> Result<()> {
        run(
            "ip",
            &[
                "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
            ],
        )?;
        run("ip", &["-n", a, "link", "set", a_if, "up"])?;
        run("ip", &["-n", b, "link", "set", b_if, "up"])?;
        Ok(())
    }

    /// Adds `cidr` to `ifname` in `ns` (IPv6 without duplicate address
    /// detection, so it is usable at once).
    ///
    /// # Errors
    /// `ip addr` fails.
    pub fn addr(&self, ns: &str, ifname: &str, cidr: &str) -> Result<()> {
        if cidr.contains(':') {
            run(
                "ip",
                &["-n", ns, "addr", "add", cidr, "dev", ifname, "nodad"],
            )?;
        } else {
            run("ip", &["-n", ns, "addr", "add", cidr, "dev", ifname])?;
        }
        Ok(())
    }

    /// A route to `dst` (`default` or a prefix) via `via` in `ns`.
    ///
    /// # Errors
    /// `ip route` fails.
    pub fn route(&self, ns: &str, dst: &str, via: &str) -> Result<()> {
        let family = if via.contains(':') { "-6" } else { "-4" };
        run("ip", &[family, "-n", ns, "route", "add", dst, "via", via])?;
        Ok(())
    }

    /// Loads an nftables ruleset (one rule per line) into `ns`.
    ///
    /// # Errors
    /// `nft -f` rejects it.
    pub fn nft(&self, ns: &str, label: &str, ruleset: &str) -> Result<()> {
        let file = self.dir.join(format!("{ns}-{label}.nft"));
        std::fs::write(&file, ruleset)
            .map_err(|e| LabError::Setup(format!("cannot write {}: {e}", file.display())))?;
        let path = file.to_string_lossy().into_owned();
        self.exec(ns, &["nft", "-f", &path])?;
        Ok(())
    }

    /// Runs a command inside `ns`; its stdout.
    ///
    /// # Errors
    /// The command fails.
    pub fn exec(&self, ns: &str, cmd: &[&str]) -> Result<String> {
        let mut args = vec!["netns", "exec", ns];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }

    /// Kills every process in the lab's namespaces and deletes them. Runs
    /// once; also on drop.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        for ns in self.namespaces.drain(..).rev() {
            remove_namespace(&ns);
        }
    }

    /// This run's namespace prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Kills what runs in `ns` and deletes it (best effort).
fn remove_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-9", pid]);
        }
    }
    let _ = run("ip", &["netns", "del", ns]);
}

/// The lab namespaces that exist now (any run's).
#[must_use]
pub fn leftovers() -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect()
}

/// Removes every lab namespace (`natrix-lab cleanup`); the names removed.
#[must_use]
pub fn cleanup_all() -> Vec<String> {
    let found = leftovers();
    for ns in &found {
        remove_namespace(ns);
    }
    found
}
