//! Inbound: accept mTLS from a peer sidecar, authorize its SPIFFE ID for this listener, and
//! only then open a connection to the local app. A refused peer never reaches the app.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use warden_identity::HandshakeFailure;
use warden_identity::svid::spiffe_id_of;
use warden_policy::Direction;

use crate::flow;
use crate::readahead::ReadAhead;
use crate::shared::Shared;

pub(crate) struct InboundListener {
    pub name: Arc<str>,
    pub forward: String,
    pub acceptor: TlsAcceptor,
    /// `protocol = "http"`: each request is decided by the L7 routes (`http/`).
    pub http: Option<Arc<crate::l7::HttpSettings>>,
    /// `proxy_protocol = "v2"` (tcp): the TLV type that carries the peer's SPIFFE ID.
    pub proxy_protocol_tlv: Option<u8>,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: Arc<InboundListener>,
    tcp: TcpStream,
    peer_addr: SocketAddr,
    permits: crate::shared::Permits,
) {
    const DIR: Direction = Direction::Inbound;
    let conn_id = shared.registry.next_id();
    let _ = tcp.set_nodelay(true);
    // For a PROXY v2 header: the address the peer connected to.
    let local_addr = tcp.local_addr().ok();
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
    let crate::shared::Permits {
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
    let conn = flow::Conn {
        shared: &shared,
        labels: &labels,
        id: conn_id,
        addr: peer_addr,
    };
    // Held for the connection's life: one peer's share of the connection slots.
    let Some(_share) = flow::take_share(&conn, DIR, &listener.name, &peer) else {
        return;
    };
    let (registration, allowed) = flow::register_and_decide(&conn, DIR, &listener.name, &peer);
    if !allowed {
        let mut tls = tls;
        let _ = tokio::time::timeout(
            limits.connect_timeout,
            tokio::io::AsyncWriteExt::shutdown(&mut tls),
        )
        .await;
        return;
    }
    let mut registration = registration;
    if let Some(settings) = &listener.http {
        let ctx = crate::l7::ConnCtx {
            shared: shared.clone(),
            listener: listener.name.clone(),
            forward: listener.forward.clone(),
            settings: settings.clone(),
            peer: peer.clone(),
            labels: labels.clone(),
            conn_id,
            peer_addr,
            app: crate::l7::AppClient::new(settings.app_protocol),
        };
        let (stats, meters) = flow::open(&conn, &registration);
        // Boxed: the HTTP server's state is larger than the relay's, and every inbound
        // connection's task would otherwise be sized for it, L4 ones included.
        let reason = Box::pin(crate::l7::serve(
            ctx,
            meters.meter(tls),
            &mut registration.closed,
        ))
        .await;
        flow::report_close(&conn, reason, &stats);
        return;
    }
    let Some(mut app) = flow::connect(&conn, listener.forward.as_str(), flow::Dial::App).await
    else {
        return;
    };
    if let Some(tlv) = listener.proxy_protocol_tlv {
        let header = crate::proxy_protocol::header(peer_addr, local_addr, tlv, peer.as_str());
        if tokio::io::AsyncWriteExt::write_all(&mut app, &header)
            .await
            .is_err()
        {
            return;
        }
    }
    let (stats, meters) = flow::open(&conn, &registration);
    let mut peer_side = meters.meter(tls);
    let reason = crate::relay::relay(
        &mut peer_side,
        &mut app,
        stats.clone(),
        limits.idle_timeout,
        &mut registration.closed,
    )
    .await;
    flow::report_close(&conn, reason, &stats);
    flow::leave(registration);
    // The sockets close only now, after the close is counted, audited and off the list.
}
