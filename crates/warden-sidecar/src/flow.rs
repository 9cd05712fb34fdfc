//! The steps every connection takes, whichever listener accepted it:
//!
//! 1. accept, holding a connection slot (`workers.rs`: `accept_loop`);
//! 2. the TLS handshake, timed and classified (`tls::timed_handshake`);
//! 3. the peer's share of connection slots ([`take_share`], inbound);
//! 4. register, then decide against the policy in force ([`decide`]): one road for every
//!    decision, static rules included;
//! 5. connect the other side, with its timeout ([`connect`]);
//! 6. relay until either side ends ([`open`], then `relay::relay`), then report the close
//!    ([`report_close`]) and leave the registry ([`leave`]) while the sockets are still
//!    open: whoever sees the connection close can already read its metric, its audit record
//!    and the connection list without it.
//!
//! `inbound.rs` and `outbound.rs` are these steps in each direction's order (inbound
//! handshakes first, outbound decides first so a denied call costs the upstream nothing).
//! A new kind of listener or protocol is a new module that strings the same steps.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use warden_identity::{PeerSlot, SpiffeId};
use warden_policy::Direction;

use crate::registry::{CloseReason, Registration};
use crate::shared::Shared;
use crate::telemetry::PeerLabels;

/// One connection's identity for reporting: its labels, id and the address it came from.
pub(crate) struct Conn<'a> {
    pub shared: &'a Shared,
    pub labels: &'a PeerLabels,
    pub id: u64,
    pub addr: SocketAddr,
}

/// Registers the connection (so a policy change that lands now finds it) and decides it
/// against the policy in force; the decision is counted and audited either way.
pub(crate) fn register_and_decide(
    conn: &Conn<'_>,
    direction: Direction,
    listener: &Arc<str>,
    peer: &SpiffeId,
) -> (Registration, bool) {
    // Register before deciding: a policy change that lands in between then either finds
    // this connection in the registry or is already visible to the decision below.
    let registration = conn.shared.registry.register(
        conn.id,
        direction,
        listener.clone(),
        peer.clone(),
        conn.addr,
    );
    let allowed = decide(conn, direction, listener, peer);
    (registration, allowed)
}

/// Decides `peer` on `listener` against the policy in force, counting and auditing it.
pub(crate) fn decide(
    conn: &Conn<'_>,
    direction: Direction,
    listener: &Arc<str>,
    peer: &SpiffeId,
) -> bool {
    let policy = conn.shared.policy.load();
    let decision = policy.decide(direction, listener, peer);
    conn.shared
        .telemetry
        .decision(conn.labels, conn.id, conn.addr, &decision, policy.version());
    decision.allowed
}

/// The peer's share of connection slots (`limits.max_connections_per_peer`), or `None`
/// when it holds all of it (then the refusal is counted and audited).
pub(crate) fn take_share(
    conn: &Conn<'_>,
    direction: Direction,
    listener: &Arc<str>,
    peer: &SpiffeId,
) -> Option<PeerSlot<SpiffeId>> {
    let share = conn.shared.per_peer.acquire(peer);
    if share.is_none() {
        conn.shared.telemetry.refused_at_limit(
            direction,
            listener,
            conn.addr,
            Some(conn.labels),
            "limits.max_connections_per_peer",
        );
    }
    share
}

/// Which side [`connect`] dials, for its log lines.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dial {
    /// The local app (inbound).
    App,
    /// The upstream sidecar (outbound).
    Upstream,
}

/// Connects to `target` within `limits.connect_timeout`. A failure is logged and reported
/// as a close with reason `error`.
pub(crate) async fn connect<A>(conn: &Conn<'_>, target: A, dial: Dial) -> Option<TcpStream>
where
    A: tokio::net::ToSocketAddrs + std::fmt::Display,
{
    let limit = conn.shared.limits.connect_timeout;
    let failure = match tokio::time::timeout(limit, TcpStream::connect(&target)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            return Some(stream);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no connection within limits.connect_timeout".to_owned(),
    };
    match dial {
        Dial::App => {
            tracing::warn!(conn_id = conn.id, forward = %target, error = %failure, "local app unreachable")
        }
        Dial::Upstream => {
            tracing::warn!(conn_id = conn.id, connect = %target, error = %failure, "upstream unreachable")
        }
    }
    conn.shared
        .telemetry
        .closed(conn.labels, conn.id, conn.addr, CloseReason::Error, 0, 0);
    None
}

/// The relay's counters for an allowed connection: its byte stats (shared with the
/// registry's view) and its meters (the `bytes` metric). The relay itself is awaited by the
/// caller (`relay::relay`), not in a helper future here: a helper taking the TLS stream by
/// value would hold a second copy of its state for the connection's whole life (about
/// 1.3 KiB per idle connection, measured with the mesh harness).
pub(crate) fn open(
    conn: &Conn<'_>,
    registration: &Registration,
) -> (Arc<crate::registry::ConnStats>, crate::metrics::ConnMeters) {
    (
        registration.stats.clone(),
        conn.shared.telemetry.open(conn.labels),
    )
}

/// Takes an ended connection off the registry (the admin list, policy re-checks). Called
/// before its sockets are dropped, so that the close a peer sees comes after it.
pub(crate) fn leave(registration: Registration) {
    drop(registration);
}

/// Reports the end of a relayed connection, with why and its bytes.
pub(crate) fn report_close(
    conn: &Conn<'_>,
    reason: CloseReason,
    stats: &crate::registry::ConnStats,
) {
    conn.shared.telemetry.closed(
        conn.labels,
        conn.id,
        conn.addr,
        reason,
        stats.rx(),
        stats.tx(),
    );
}
