//! The relay (S3) and connections (S4, D2) on the networked control plane.
//!
//! Every packet the session endpoint sends to a relay route's address
//! ([`RelayRoute`]) leaves inside a relay frame on the session with that
//! route's coordinator; a forward frame from a coordinator we dialled goes
//! back into the endpoint as a packet from the route's address. A serving
//! node forwards frames between its peers under the [`RelayServer`]'s
//! quotas. The decisions about paths are `natrix_session::path`'s; this is
//! only the plumbing between it, the endpoint and the node's task.

use natrix_proto::wire::NodeId;
use natrix_proto::{Instant, TraversalError};
use natrix_session::path::{Applied, PathEvent, PathInfo, RelayRoute};
use natrix_session::relay::{
    CH_RELAY, MAX_RELAYED_PACKET, Quota, Refusal, RelayFrame, encode_forward_into, encode_refused,
};
use natrix_session::{DatagramKind, PublicKey, classify};
use tracing::{debug, trace};

use super::SessionControl;
use crate::control::{ControlError, ControlInput};

impl SessionControl {
    /// Sends `packet` (a sealed session packet of ours) along `route`: in a
    /// forward frame on the session with the route's coordinator.
    pub(super) fn relay_out(&mut self, now: Instant, route: RelayRoute, packet: &[u8]) {
        let Some(coordinator) = self
            .coordinator_slots
            .get(usize::from(route.via))
            .copied()
            .filter(|k| self.live.contains(k))
        else {
            self.unroutable += 1;
            trace!(route = %route.addr(), "relayed packet without a live coordinator session dropped");
            return;
        };
        let mut frame = [0u8; natrix_session::MAX_PAYLOAD];
        let n = match encode_forward_into(route.peer, packet, &mut frame) {
            Ok(n) => n,
            Err(e) => {
                self.unroutable += 1;
                debug!(route = %route.addr(), error = %e, "packet does not fit a relay frame; dropped");
                return;
            }
        };
        self.send_frame(now, &coordinator, &frame[..n]);
    }

    /// Seals a relay frame on `to`'s session (unreliable, like the packets
    /// it carries).
    fn send_frame(&mut self, now: Instant, to: &PublicKey, frame: &[u8]) {
        let mut buf = self.packet_buffer();
        match self.endpoint.send(now, to, CH_RELAY, frame, &mut buf) {
            Ok(Some((addr, len))) => {
                debug_assert!(!RelayRoute::is_relay(&addr), "relay frames never nest");
                self.push_datagram(now, addr, len, buf);
            }
            Ok(None) => self.recycle(buf),
            Err(e) => {
                self.recycle(buf);
                trace!(peer = %to, error = %e, "relay frame not sent");
            }
        }
    }

    /// A relay frame from session peer `peer` (node `node`).
    pub(super) fn relay_in(
        &mut self,
        now: Instant,
        wall_ms: u64,
        peer: PublicKey,
        node: NodeId,
        bytes: &[u8],
    ) {
        let frame = match RelayFrame::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                trace!(%peer, error = %e, "bad relay frame dropped");
                return;
            }
        };
        let from_coordinator = self.coordinator_slots.iter().position(|k| *k == peer);
        match (frame, from_coordinator) {
            // A packet of another peer's session with us, through a
            // coordinator we dialled.
            (RelayFrame::Forward { peer: far, packet }, Some(slot)) => {
                if !matches!(classify(packet), DatagramKind::Session(_)) {
                    trace!(coordinator = %peer, "relayed bytes that are no session packet dropped");
                    return;
                }
                let Ok(via) = u16::try_from(slot) else {
                    return;
                };
                let route = RelayRoute { via, peer: far };
                self.session_datagram(now, wall_ms, route.addr(), packet);
            }
            (RelayFrame::Refused { peer: target, .. }, Some(_)) => {
                if let Some(refusal) = frame.refusal() {
                    debug!(coordinator = %peer, ?target, %refusal, "relay refused our frame (S3)");
                    self.push_input(ControlInput::RelayRefused {
                        peer: target,
                        refusal,
                    });
                }
            }
            // A peer asks us, a coordinator, to forward.
            (RelayFrame::Forward { peer: to, packet }, None) if self.serve => {
                self.serve_forward(now, peer, node, to, packet);
            }
            _ => trace!(%peer, "relay frame not for us dropped"),
        }
    }

    /// Forwards `packet` from `from` to node `to` if the quotas allow;
    /// otherwise tells `from` why (at most once a second per pair).
    fn serve_forward(
        &mut self,
        now: Instant,
        from: PublicKey,
        from_node: NodeId,
        to: NodeId,
        packet: &[u8],
    ) {
        let target = self
            .endpoint
            .peer_by_node_id(to)
            .filter(|k| self.live.contains(k));
        let verdict = match self.relay.as_mut() {
            Some(relay) => relay.forward(now, from_node, to, packet.len(), target.is_some()),
            None => {
                let notify = self.disabled_notices.allow(now, from_node, to);
                Err(natrix_session::relay::Refused {
                    refusal: Refusal::new(Quota::Disabled, std::time::Duration::ZERO),
                    notify,
                })
            }
        };
        match (verdict, target) {
            (Ok(()), Some(target)) => {
                let mut frame = [0u8; natrix_session::MAX_PAYLOAD];
                if let Ok(n) = encode_forward_into(from_node, packet, &mut frame) {
                    trace!(from = ?from_node, ?to, len = packet.len(), "relayed");
                    self.send_frame(now, &target, &frame[..n]);
                }
            }
            (Ok(()), None) => {}
            (Err(refused), _) => {
                trace!(%from, ?to, refusal = %refused.refusal, "relay frame refused");
                if refused.notify {
                    let notice = encode_refused(to, refused.refusal);
                    self.send_frame(now, &from, &notice);
                }
            }
        }
        debug_assert!(packet.len() <= MAX_RELAYED_PACKET);
    }

    /// Carries out what the connections asked for and passes on what they
    /// report.
    pub(super) fn drain_paths(&mut self, now: Instant) {
        while let Some(action) = self.paths.poll_action() {
            let mut buf = self.packet_buffer();
            match self.paths.apply(&mut self.endpoint, now, action, &mut buf) {
                Applied::Send(to, len) => self.push_datagram(now, to, len, buf),
                Applied::Punch { peer, via } => {
                    self.recycle(buf);
                    self.push_input(ControlInput::RequestPunch { peer, via });
                }
                Applied::Nothing => self.recycle(buf),
            }
        }
        while let Some(ev) = self.paths.poll_event() {
            if let PathEvent::ClosedByPeer { peer } = ev {
                self.endpoint.close(now, &peer);
                self.push_input(ControlInput::ConnectionClosed {
                    peer,
                    error: None,
                    by_peer: true,
                });
            } else {
                self.push_input(ControlInput::Path(ev));
            }
        }
    }

    /// A session came up on relay route `route`: ours if we opened it,
    /// else a peer's connection to accept.
    pub(super) fn accept_relayed(&mut self, now: Instant, peer: PublicKey, route: RelayRoute) {
        if self.paths.contains(&peer) {
            self.paths.on_session_up(now, &peer);
            return;
        }
        let Some(via) = self.coordinator_slots.get(usize::from(route.via)).copied() else {
            return;
        };
        match self.paths.open(now, peer, route, via.node_id(), false) {
            Ok(_) => {
                self.paths.on_session_up(now, &peer);
                debug!(%peer, coordinator = %via, "connection accepted on the relay");
                self.push_input(ControlInput::Accepted { peer });
            }
            Err(e) => {
                debug!(%peer, error = %e, "connection refused");
                self.endpoint.close(now, &peer);
            }
        }
    }

    /// A connection's session ended: the side that opened it dials again
    /// through the relay (the connection waits there); on the accepting side
    /// the connection ends (the other side dials again if it still wants it,
    /// and that is a new connection to accept).
    pub(super) fn connection_session_down(&mut self, now: Instant, peer: PublicKey) {
        let Some(info) = self.paths.info(&peer) else {
            return;
        };
        if !self.paths.is_dialler(&peer) {
            debug!(%peer, "accepted connection's session ended; connection closed");
            self.paths.close(&peer);
            self.push_input(ControlInput::ConnectionClosed {
                peer,
                error: None,
                by_peer: false,
            });
            return;
        }
        self.paths.on_session_down(now, &peer);
        let route = self.paths.relay_route(&peer);
        if let Some(route) = route {
            debug!(%peer, path = %info.kind, "connection's session ended; dialling again through the relay");
            if let Err(e) = self
                .endpoint
                .connect(now, self.last_wall_ms, peer, route.addr())
            {
                debug!(%peer, error = %e, "redial refused");
            }
        }
    }

    /// Opens a connection to `peer` on the relay of coordinator `via`.
    pub(super) fn open(
        &mut self,
        now: Instant,
        wall_ms: u64,
        peer: PublicKey,
        via: PublicKey,
    ) -> Result<PathInfo, ControlError> {
        if let Some(info) = self.paths.info(&peer) {
            return Ok(info);
        }
        let slot = self
            .coordinator_slots
            .iter()
            .position(|k| *k == via)
            .and_then(|s| u16::try_from(s).ok())
            .filter(|_| self.live.contains(&via))
            .ok_or(ControlError::NoSession(via.node_id()))?;
        if peer == self.endpoint.public_key() || self.coordinators.contains_key(&peer) {
            return Err(ControlError::Session(
                "a connection needs a peer other than this node and its coordinators",
            ));
        }
        let route = RelayRoute {
            via: slot,
            peer: peer.node_id(),
        };
        if self.endpoint.session(&peer).is_some() {
            // A session exists (a direct dial): it moves to the relay route,
            // and upgrades from there like any other.
            self.endpoint.set_addr(&peer, route.addr());
        } else {
            self.endpoint
                .connect(now, wall_ms, peer, route.addr())
                .map_err(|e| {
                    debug!(%peer, error = %e, "connection dial refused");
                    ControlError::Session("dial refused by the session layer")
                })?;
        }
        let info = self
            .paths
            .open(now, peer, route, via.node_id(), true)
            .map_err(|_| ControlError::Session("too many connections"))?;
        if self.endpoint.session(&peer).is_some() {
            self.paths.on_session_up(now, &peer);
        }
        Ok(info)
    }

    /// Punch outcomes for connections.
    pub(super) fn on_punch_outcome(
        &mut self,
        now: Instant,
        peer: NodeId,
        outcome: Result<std::net::SocketAddr, TraversalError>,
    ) {
        if let Some(key) = self.endpoint.peer_by_node_id(peer) {
            self.paths.on_punch(now, &key, outcome);
        }
    }
}
