//! What the commands share: key files, dial strings, starting a peer node
//! and waiting for its coordinators, and the progress line.

use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use natrix_driver_core::DatagramFilter;
use natrix_session::keyfile::{self, KeyFileError};
use natrix_tokio::{
    Dial, Keypair, NatClass, Node, NodeConfig, PathConfig, PublicKey, SessionConfig,
    SessionControl, SessionControlConfig, Tokio, os_seed,
};

use crate::error::{CliError, CliResult, Exit};

/// The default key file: `$NATRIX_KEY`, else `~/.config/natrix/key`, else
/// `natrix.key` in the working directory.
#[must_use]
pub(crate) fn default_key_path() -> PathBuf {
    if let Some(p) = std::env::var_os("NATRIX_KEY") {
        return PathBuf::from(p);
    }
    match std::env::var_os("HOME") {
        Some(home) => Path::new(&home).join(".config/natrix/key"),
        None => PathBuf::from("natrix.key"),
    }
}

/// Reads the key file at `path`.
///
/// # Errors
/// [`Exit::KeyFile`] with the key file layer's explanation.
pub(crate) fn load_key(path: &Path) -> CliResult<Keypair> {
    keyfile::load(path).map_err(key_error)
}

/// Reads the key file at `path`, creating it with a fresh identity when
/// there is none (`created` says which).
///
/// # Errors
/// [`Exit::KeyFile`].
pub(crate) fn load_or_create_key(path: &Path) -> CliResult<(Keypair, bool)> {
    let existed = path.exists();
    create_parent_dir(path)?;
    let kp = keyfile::load_or_create(path, os_seed).map_err(key_error)?;
    Ok((kp, !existed))
}

/// Creates the directory a key file goes in.
///
/// # Errors
/// [`Exit::KeyFile`].
pub(crate) fn create_parent_dir(path: &Path) -> CliResult<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::new(
                Exit::KeyFile,
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
    }
    Ok(())
}

fn key_error(e: KeyFileError) -> CliError {
    CliError::new(Exit::KeyFile, e.to_string())
        .hint("create one with `natrix keygen --out FILE`, or pass --key FILE")
}

/// Parses a dial string (`natrix1…@host:port`) and resolves its host.
///
/// # Errors
/// [`Exit::Usage`] for a malformed string, [`Exit::NoCoordinator`] when the
/// host does not resolve.
pub(crate) fn resolve_dial(s: &str) -> CliResult<(PublicKey, SocketAddr)> {
    let dial: Dial = s.parse().map_err(|e| {
        CliError::usage(format!("bad dial string {s:?}: {e}"))
            .hint("a dial string is the coordinator's public key, '@', and host:port, as `natrix coordinator` prints it")
    })?;
    if let Some(addr) = dial.socket_addr() {
        return Ok((dial.key, addr));
    }
    let addr = (dial.host.as_str(), dial.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            CliError::new(
                Exit::NoCoordinator,
                format!("cannot resolve the coordinator's host {:?}", dial.host),
            )
            .hint("check the host name, or use an IP address")
        })?;
    Ok((dial.key, addr))
}

/// Parses a peer's printable public key.
///
/// # Errors
/// [`Exit::Usage`].
pub(crate) fn parse_key(s: &str) -> CliResult<PublicKey> {
    s.parse().map_err(|e| {
        CliError::usage(format!("bad public key {s:?}: {e}"))
            .hint("a public key looks like `natrix1…`; `natrix keygen` prints yours")
    })
}

/// How to start a peer node.
#[derive(Clone)]
pub(crate) struct PeerOptions {
    /// Where to bind (port 0: any).
    pub bind: SocketAddr,
    /// Coordinators (key, address), in order of preference.
    pub coordinators: Vec<(PublicKey, SocketAddr)>,
    /// Connections' path timers.
    pub paths: PathConfig,
    /// Publish this classification instead of measuring it (a node with
    /// one coordinator cannot measure it: C4 needs two destination IPs).
    pub classification: Option<(NatClass, SocketAddr)>,
    /// Drops matching outgoing datagrams (the demo's imitation of a NAT).
    pub filter: Option<DatagramFilter>,
    /// The agent's configuration (punch deadline, budgets).
    pub agent: natrix_proto::Config,
    /// Port mapping on the gateway (off unless asked for).
    pub port_mapping: Option<natrix_tokio::PortMapConfig>,
    /// STUN servers the classification sweeps ask (C8).
    pub stun_servers: Vec<SocketAddr>,
    /// The RFC 5780 server to measure the NAT's behaviour against (C8).
    pub behaviour_server: Option<SocketAddr>,
}

impl PeerOptions {
    /// Defaults: bound at `bind`, these coordinators, default timers, the
    /// classification measured, no filter.
    pub(crate) fn new(bind: SocketAddr, coordinators: Vec<(PublicKey, SocketAddr)>) -> Self {
        PeerOptions {
            bind,
            coordinators,
            paths: PathConfig::default(),
            classification: None,
            filter: None,
            agent: natrix_proto::Config::default(),
            port_mapping: None,
            stun_servers: Vec::new(),
            behaviour_server: None,
        }
    }
}

impl std::fmt::Debug for PeerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerOptions")
            .field("bind", &self.bind)
            .field("coordinators", &self.coordinators)
            .field("classification", &self.classification)
            .field("filter", &self.filter.is_some())
            .finish_non_exhaustive()
    }
}

/// Starts a peer node with `keypair` (on the current tokio runtime).
///
/// # Errors
/// [`Exit::Failure`] when the socket cannot be bound (port in use).
pub(crate) fn spawn_peer(keypair: Keypair, opts: &PeerOptions) -> CliResult<Node> {
    let key = keypair.public();
    let control = SessionControl::new(
        keypair,
        SessionControlConfig {
            session: SessionConfig::default(),
            coordinators: opts.coordinators.clone(),
            paths: opts.paths,
            ..SessionControlConfig::default()
        },
        os_seed(),
    );
    let mut config = NodeConfig::for_key(&key, opts.bind);
    config.datagram_filter = opts.filter.clone();
    config.agent = opts.agent.clone();
    config.port_mapping.clone_from(&opts.port_mapping);
    config.stun_servers.clone_from(&opts.stun_servers);
    config.behaviour_server = opts.behaviour_server;
    let node = Node::spawn(Tokio, config, control).map_err(|e| {
        CliError::failure(format!("cannot start the node on {}: {e}", opts.bind))
            .hint("is the port in use? pick another with --bind, or use port 0")
    })?;
    if let Some((class, reflex)) = opts.classification {
        node.set_local_classification(class, reflex);
    }
    Ok(node)
}

/// Waits until `node` has a session with every coordinator in `keys`, or
/// `patience` passes.
///
/// # Errors
/// [`Exit::NoCoordinator`], naming the ones that did not answer.
pub(crate) async fn wait_coordinators(
    node: &Node,
    keys: &[(PublicKey, SocketAddr)],
    patience: Duration,
    progress: &mut Progress,
) -> CliResult<()> {
    let start = Instant::now();
    loop {
        let mut missing = Vec::new();
        for (k, addr) in keys {
            if node.session(*k).await.is_none() {
                missing.push((*k, *addr));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= patience {
            let names: Vec<String> = missing.iter().map(|(k, a)| format!("{k}@{a}")).collect();
            return Err(CliError::new(
                Exit::NoCoordinator,
                format!(
                    "no session with coordinator {} after {patience:?}",
                    names.join(", ")
                ),
            )
            .hint("is it running and reachable over UDP? does the key in the dial string match the key it prints?"));
        }
        progress.update(&format!(
            "waiting for {} coordinator(s) ({:.0?})",
            missing.len(),
            start.elapsed()
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A status line on stderr: rewritten in place on a terminal, plain lines
/// (only when the text changes) otherwise.
#[derive(Debug)]
pub(crate) struct Progress {
    terminal: bool,
    last: String,
    quiet: bool,
}

impl Progress {
    /// A progress line on stderr.
    #[must_use]
    pub(crate) fn new(quiet: bool) -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last: String::new(),
            quiet,
        }
    }

    /// Shows `text` as the current status.
    pub(crate) fn update(&mut self, text: &str) {
        if self.quiet || text == self.last {
            return;
        }
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K{text}");
        } else if strip_timer(text) != strip_timer(&self.last) {
            let _ = writeln!(err, "{text}");
        }
        let _ = err.flush();
        self.last = text.to_owned();
    }

    /// Ends the status line with `text` as a line of its own.
    pub(crate) fn finish(&mut self, text: &str) {
        self.clear();
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// Prints a line of its own (the status line, if any, is redrawn
    /// after); nothing with `--quiet`.
    pub(crate) fn line(&mut self, text: &str) {
        if self.quiet {
            return;
        }
        let status = std::mem::take(&mut self.last);
        self.clear();
        eprintln!("{text}");
        if self.terminal && !status.is_empty() {
            self.update(&status);
        }
    }

    /// Removes the status line (on a terminal) without printing anything.
    pub(crate) fn clear(&mut self) {
        if self.terminal && !self.last.is_empty() {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
        self.last.clear();
    }
}

/// A status line without its trailing "(…)" timer, so that plain-line
/// output prints a line per state, not per tick.
fn strip_timer(s: &str) -> &str {
    match s.rfind(" (") {
        Some(i) if s.ends_with(')') => &s[..i],
        _ => s,
    }
}

/// Ctrl-C, or SIGTERM on Unix.
pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// `value` of `flag` as `host:port`, resolved to its first address.
///
/// # Errors
/// [`Exit::Usage`] when it does not parse or resolve.
pub(crate) fn resolve_host_port(flag: &str, value: &str) -> CliResult<SocketAddr> {
    use std::net::ToSocketAddrs;
    value
        .to_socket_addrs()
        .map_err(|e| CliError::usage(format!("bad {flag} {value:?}: {e}")))?
        .next()
        .ok_or_else(|| CliError::usage(format!("{flag} {value:?} resolves to no address")))
}
