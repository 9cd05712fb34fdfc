//! What the sidecar reports about each connection: one structured record per handshake
//! failure, authorization decision and close. The data plane calls these hooks and nothing
//! else, so metrics and the audit log hang off one place.

use std::net::SocketAddr;

use warden_identity::{HandshakeFailure, SpiffeId};
use warden_policy::{Decision, Direction};

use crate::registry::CloseReason;

#[derive(Debug, Default)]
pub struct Telemetry {}

impl Telemetry {
    pub fn handshake_failed(
        &self,
        direction: Direction,
        listener: &str,
        conn_id: u64,
        peer_addr: SocketAddr,
        failure: HandshakeFailure,
        detail: &str,
    ) {
        tracing::warn!(
            target: "warden::audit",
            event = "handshake",
            direction = direction.as_str(),
            listener,
            conn_id,
            %peer_addr,
            result = failure.as_label(),
            detail,
            "handshake failed"
        );
    }

    #[allow(clippy::too_many_arguments)]
    pub fn decision(
        &self,
        direction: Direction,
        listener: &str,
        conn_id: u64,
        peer_addr: SocketAddr,
        peer: &SpiffeId,
        decision: &Decision<'_>,
        policy_version: u64,
    ) {
        let verdict = if decision.allowed { "allow" } else { "deny" };
        let rule = match decision.reason {
            warden_policy::Reason::Matched { rule } => rule,
            _ => "",
        };
        tracing::info!(
            target: "warden::audit",
            event = "authz",
            direction = direction.as_str(),
            listener,
            conn_id,
            %peer_addr,
            peer_id = peer.as_str(),
            decision = verdict,
            reason = decision.reason.as_label(),
            rule,
            policy_version,
            "connection {verdict}ed"
        );
    }

    pub fn closed(
        &self,
        direction: Direction,
        listener: &str,
        conn_id: u64,
        reason: CloseReason,
        rx: u64,
        tx: u64,
    ) {
        tracing::debug!(
            target: "warden::audit",
            event = "close",
            direction = direction.as_str(),
            listener,
            conn_id,
            reason = reason.as_label(),
            rx,
            tx,
            "connection closed"
        );
    }
}
