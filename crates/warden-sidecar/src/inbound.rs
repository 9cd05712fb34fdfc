//! Inbound: accept mTLS from a peer sidecar, authorize its SPIFFE ID for this listener, and
//! only then open a connection to the local app. A refused peer never reaches the app.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use warden_identity::HandshakeFailure;
use warden_identity::svid::spiffe_id_of;
use warden_policy::Direction;

use crate::Shared;
use crate::readahead::ReadAhead;
use crate::registry::CloseReason;

pub(crate) struct InboundListener {
    pub name: Arc<str>,
    pub forward: String,
    pub acceptor: TlsAcceptor,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: Arc<InboundListener>,
    tcp: TcpStream,
    peer_addr: SocketAddr,
    permits: crate::Permits,
) {
    const DIR: Direction = Direction::Inbound;
    let conn_id = shared.registry.next_id();
    let name = &*listener.name;
    let _ = tcp.set_nodelay(true);
    let limits = shared.limits;
    let started = std::time::Instant::now();
    let handshake = listener
        .acceptor
        .accept(ReadAhead::new(tcp))
        .into_fallible();
    let tls = match crate::tls::timed_handshake(limits.handshake_timeout, handshake).await {
        Ok(tls) => tls,
        Err((failure, detail, socket)) => {
            shared.telemetry.handshake_failed(
                DIR,
                &listener.name,
                conn_id,
                peer_addr,
                failure,
                &detail,
                None,
                started,
            );
            // Closed only now, after the failure is counted and audited.
            drop(socket);
            return;
        }
    };
    // The handshake is over: free its slot now, so `max_pending_handshakes` counts only
    // connections still negotiating (the connection slot stays until the task ends).
    let crate::Permits {
        _connection,
        handshake,
    } = permits;
    drop(handshake);
    // The verifier already validated this certificate; here we only read its ID back.
    let peer = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(spiffe_id_of)
    {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            shared.telemetry.handshake_failed(
                DIR,
                &listener.name,
                conn_id,
                peer_addr,
                e.failure(),
                &e.to_string(),
                None,
                started,
            );
            return;
        }
        None => {
            shared.telemetry.handshake_failed(
                DIR,
                &listener.name,
                conn_id,
                peer_addr,
                HandshakeFailure::NoClientCert,
                "no client certificate",
                None,
                started,
            );
            return;
        }
    };
    let labels = shared.telemetry.peer(DIR, &listener.name, &peer);
    shared.telemetry.handshake_ok(&labels, started);
    // Held for the connection's life: one peer's share of the connection slots.
    let Some(_share) = shared.per_peer.acquire(&peer) else {
        shared.telemetry.refused_at_limit(
            DIR,
            &listener.name,
            peer_addr,
            Some(&labels),
            "limits.max_connections_per_peer",
        );
        return;
    };
    // Register before deciding: a policy change that lands in between then either finds
    // this connection in the registry or is already visible to the decision below.
    let mut registration =
        shared
            .registry
            .register(conn_id, DIR, listener.name.clone(), peer.clone(), peer_addr);
    let allowed = {
        let policy = shared.policy.load();
        let decision = policy.decide(DIR, name, &peer);
        shared
            .telemetry
            .decision(&labels, conn_id, peer_addr, &decision, policy.version());
        decision.allowed
    };
    if !allowed {
        let mut tls = tls;
        let _ = tokio::time::timeout(
            limits.connect_timeout,
            tokio::io::AsyncWriteExt::shutdown(&mut tls),
        )
        .await;
        return;
    }
    let app = match tokio::time::timeout(
        limits.connect_timeout,
        TcpStream::connect(&listener.forward),
    )
    .await
    {
        Ok(Ok(app)) => app,
        Ok(Err(e)) => {
            tracing::warn!(listener = name, conn_id, forward = %listener.forward, error = %e, "local app refused the connection");
            shared
                .telemetry
                .closed(&labels, conn_id, peer_addr, CloseReason::Error, 0, 0);
            return;
        }
        Err(_) => {
            tracing::warn!(listener = name, conn_id, forward = %listener.forward, "local app did not accept within limits.connect_timeout");
            shared
                .telemetry
                .closed(&labels, conn_id, peer_addr, CloseReason::Error, 0, 0);
            return;
        }
    };
    let _ = app.set_nodelay(true);
    let stats = registration.stats.clone();
    let meters = shared.telemetry.open(&labels);
    let reason = crate::relay::relay(
        meters.meter(tls),
        app,
        stats.clone(),
        limits.idle_timeout,
        &mut registration.closed,
    )
    .await;
    shared
        .telemetry
        .closed(&labels, conn_id, peer_addr, reason, stats.rx(), stats.tx());
}
