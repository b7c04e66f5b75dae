//! natrix against real NATs: the Linux kernel's conntrack NAT, configured
//! with nftables inside network namespaces, with the real `natrix` binary
//! running in them.
//!
//! - [`netns`]: namespaces, veths, rulesets, teardown (also on failure and
//!   Ctrl-C), the preflight check (root, namespaces, tools);
//! - [`kinds`]: the NAT kinds as nftables rulesets, and the simulator
//!   preset each is compared with;
//! - [`topo`]: the internet namespace with the coordinators, and sites (a
//!   peer behind its gateways);
//! - [`proc`] and [`natrix`]: the processes, with logs, fed stdin and
//!   `--report` files;
//! - [`matrix`]: every pair of kinds, classified, connected, compared with
//!   the simulator cell by cell;
//! - [`scenarios`]: failures the simulator cannot fake (conntrack flush,
//!   rebinding, a blackholed path, a coordinator restart);
//! - [`portmap`]: `natrix map` against miniupnpd (PCP, NAT-PMP, UPnP-IGD);
//! - [`stun`]: STUN behaviour discovery and coturn interop (C8).
//!
//! `docs/nat-lab.md` describes the lab and how to run it.

pub mod kinds;
pub mod matrix;
pub mod natrix;
pub mod netns;
pub mod portmap;
pub mod proc;
pub mod scenarios;
pub mod stun;
pub mod stun_bench;
pub mod topo;

/// What can stop the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The machine cannot run the lab (not root, no namespaces, a tool
    /// missing). The lab never skips: this is a failure.
    #[error("the lab cannot run here: {0}")]
    Preflight(String),
    /// Building the topology failed.
    #[error("setup failed: {0}")]
    Setup(String),
    /// A command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr.
        detail: String,
    },
    /// A process did not do what it should in time (it was killed).
    #[error("{name}: {what}\n--- last lines of its log ---\n{log}")]
    Process {
        /// The process.
        name: String,
        /// What went wrong.
        what: String,
        /// The end of its stderr.
        log: String,
    },
    /// A `--report` file is missing or malformed.
    #[error("report {file}: {detail}")]
    Report {
        /// The file.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

/// The lab's results.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
