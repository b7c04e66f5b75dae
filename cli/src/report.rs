//! `listen`/`connect --report FILE`: a JSON record of one run, for scripts
//! and the NAT lab (`lab/`), written when the command ends.
//!
//! Times are seconds on the node's clock (`t` = 0 when the node started), the
//! same origin as the `since t+…` of the status lines. The document (version
//! 1):
//!
//! ```json
//! {
//!   "version": 1,
//!   "role": "connect",
//!   "key": "natrix1…",
//!   "local": "0.0.0.0:4000",
//!   "exit": 0,
//!   "classification": { "class": "cone", "reflex": "203.0.113.7:4000", "profile": "EIM/APDF" },
//!   "opened": 0.41,
//!   "first_datagram": 0.53,
//!   "datagrams": { "sent": 12, "received": 11 },
//!   "events": [ { "t": 0.41, "event": "path", "kind": "relayed", "reason": "opened", … } ],
//!   "path": { "kind": "direct", "remote": "203.0.113.9:4000", … },
//!   "port_mapping": { "active": true, "external": "203.0.113.7:4000", "renewals": 3 },
//!   "stats": { "keepalives_sent": 2, "punches_attempted": 1, … }
//! }
//! ```
//!
//! `classification.profile` is the NAT's mapping and filtering this node
//! announced (C8, measured with `--behaviour-server`), `null` when none was
//! measured. `opened` is when the connection came to exist on this side, and
//! `first_datagram` when its first datagram reached this side; both are
//! `null` if that never happened. `events` lists every path change, failed
//! upgrade, relay refusal and end, in order. `stats` holds the node's
//! punching counters (`natrix_proto::Stats`): requester and responder punch
//! counts, keep-alives, matrix verdicts, birthday attempts (N2) and path
//! upgrades; `port_mapping` the port mapping's part of the same `Stats`
//! (P7: installed now, its external address, renewals since install;
//! inactive without `--port-mapping`); `spray` the driver's birthday sockets (opened, failed, pinned
//! paths now). `path` is the
//! connection's path when the command ended, `null` if the connection had
//! already ended (its last `path` event then says where it was).

use std::net::SocketAddr;
use std::path::Path;

use natrix_tokio::{ChangeReason, NatClass, Node, PathInfo, PathKind};
use serde_json::{Value, json};

use crate::error::{CliError, CliResult};

/// What one run saw, filled in as it goes.
#[derive(Debug, Default)]
pub(crate) struct Record {
    opened: Option<f64>,
    first_datagram: Option<f64>,
    sent: u64,
    received: u64,
    events: Vec<Value>,
}

impl Record {
    /// The connection exists, at node time `t`.
    pub(crate) fn opened(&mut self, t: f64) {
        self.opened.get_or_insert(t);
    }

    /// A datagram arrived at `t`.
    pub(crate) fn received(&mut self, t: f64) {
        self.first_datagram.get_or_insert(t);
        self.received += 1;
    }

    /// A datagram was sent.
    pub(crate) fn sent(&mut self) {
        self.sent += 1;
    }

    /// The path changed.
    pub(crate) fn path(&mut self, info: &PathInfo, reason: ChangeReason) {
        if reason == ChangeReason::Opened {
            // The connection's own record of its opening is the earliest.
            let t = info.since.since_origin().as_secs_f64();
            self.opened = Some(self.opened.map_or(t, |o| o.min(t)));
        }
        let mut ev = path_json(info);
        ev["event"] = json!("path");
        ev["t"] = json!(info.since.since_origin().as_secs_f64());
        ev["reason"] = json!(reason_name(reason));
        self.events.push(ev);
    }

    /// Anything else that happened at `t`: `event` names it, `detail` says
    /// what.
    pub(crate) fn note(&mut self, t: f64, event: &str, detail: String) {
        self.events
            .push(json!({ "t": t, "event": event, "detail": detail }));
    }

    /// Writes the document to `file` (a small file: written at once).
    ///
    /// # Errors
    /// The file cannot be written.
    pub(crate) fn write(
        &self,
        file: &Path,
        role: &str,
        node: &Node,
        exit: i32,
        path: Option<PathInfo>,
    ) -> CliResult<()> {
        let s = node.stats();
        let d = node.driver_stats();
        let classification = node.classification().map(|a| {
            json!({
                "class": class_name(a.class),
                "reflex": a.reflex.to_string(),
                "profile": a.profile.map(|p| p.to_string()),
            })
        });
        let doc = json!({
            "version": 1,
            "role": role,
            "key": node.public_key().map(|k| k.to_string()),
            "local": node.local_addr().to_string(),
            "exit": exit,
            "classification": classification,
            "opened": self.opened,
            "first_datagram": self.first_datagram,
            "datagrams": { "sent": self.sent, "received": self.received },
            "events": self.events,
            "path": path.as_ref().map(path_json),
            "port_mapping": {
                "active": s.port_mapping_active,
                "external": s.port_mapping_external.map(|a| a.to_string()),
                "renewals": s.port_mapping_renewals,
            },
            "spray": {
                "sockets_opened": d.spray_sockets_opened,
                "socket_failures": d.spray_socket_failures,
                "pinned_paths": d.pinned_paths,
            },
            "stats": {
                "punches_attempted": s.punches_attempted,
                "punches_succeeded": s.punches_succeeded,
                "punch_timeouts": s.punch_timeouts,
                "punches_skipped": s.punches_skipped,
                "direct_paths": s.direct_paths,
                "relay_fallbacks": s.relay_fallbacks,
                "responder_trains": s.responder_trains,
                "responder_successes": s.responder_successes,
                "keepalives_sent": s.keepalives_sent,
                "keepalives_accepted": s.keepalives_accepted,
                "keepalives_dropped": s.keepalives_dropped,
                "keepalives_predicted": s.keepalives_predicted,
                "birthday_attempts": s.birthday_attempts,
                "birthday_successes": s.birthday_successes,
                "birthday_refused": s.birthday_refused,
                "spray_datagrams": s.spray_datagrams,
                "predictions_taken": s.predictions_taken,
                "upgrades_attempted": s.upgrades_attempted,
                "upgrades_succeeded": s.upgrades_succeeded,
            },
        });
        let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        crate::common::create_parent_dir(file)?;
        std::fs::write(file, text + "\n").map_err(|e| {
            CliError::failure(format!("cannot write the report {}: {e}", file.display()))
        })
    }
}

fn path_json(info: &PathInfo) -> Value {
    let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string());
    json!({
        "kind": match info.kind { PathKind::Direct => "direct", PathKind::Relayed => "relayed" },
        "remote": if info.kind == PathKind::Direct { addr(Some(info.remote)) } else { None },
        "rtt_ms": info.rtt.map(|r| r.as_secs_f64() * 1e3),
        "last_upgrade_error": info.last_upgrade_error.as_ref().map(ToString::to_string),
    })
}

fn reason_name(r: ChangeReason) -> &'static str {
    match r {
        ChangeReason::Opened => "opened",
        ChangeReason::Upgraded => "upgraded",
        ChangeReason::DirectDead => "direct_dead",
        ChangeReason::Rebound => "rebound",
        ChangeReason::SessionLost => "session_lost",
    }
}

/// `open`, `cone`, `symmetric` or `unknown`.
fn class_name(c: NatClass) -> &'static str {
    c.tag().trim_start_matches("nat:")
}
