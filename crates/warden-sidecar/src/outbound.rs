//! Outbound: accept plaintext from the local app, originate mTLS to the upstream with our
//! SVID, and require the upstream's SPIFFE ID to be `server_id` (and, under a control plane,
//! allowed by policy). Nothing the app sends is read before those checks pass, so no byte
//! can leak to an impostor, and there is no plaintext fallback.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use warden_identity::SpiffeId;
use warden_policy::{Decision, Direction, Reason};

use crate::Shared;
use crate::readahead::ReadAhead;
use crate::registry::CloseReason;

pub(crate) struct OutboundListener {
    pub name: Arc<str>,
    pub connect: String,
    pub server_id: SpiffeId,
    pub server_name: ServerName<'static>,
    pub connector: TlsConnector,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: Arc<OutboundListener>,
    app: TcpStream,
    app_addr: SocketAddr,
    _permits: crate::Permits,
) {
    const DIR: Direction = Direction::Outbound;
    let conn_id = shared.registry.next_id();
    let name = &*listener.name;
    let limits = shared.limits;
    let _ = app.set_nodelay(true);
    let labels = shared
        .telemetry
        .peer(DIR, &listener.name, &listener.server_id);
    let mut registration = shared.registry.register(
        conn_id,
        DIR,
        listener.name.clone(),
        listener.server_id.clone(),
        app_addr,
    );
    // Under a control plane the policy must also allow this upstream; decided before any
    // network traffic, so a denied call costs the upstream nothing.
    if shared.outbound_policy {
        let policy = shared.policy.load();
        let decision = policy.decide(DIR, name, &listener.server_id);
        shared
            .telemetry
            .decision(&labels, conn_id, app_addr, &decision, policy.version());
        if !decision.allowed {
            return;
        }
    }
    let tcp = match tokio::time::timeout(
        limits.connect_timeout,
        TcpStream::connect(&listener.connect),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            tracing::warn!(listener = name, conn_id, connect = %listener.connect, error = %e, "upstream unreachable");
            shared
                .telemetry
                .closed(&labels, conn_id, app_addr, CloseReason::Error, 0, 0);
            return;
        }
        Err(_) => {
            tracing::warn!(listener = name, conn_id, connect = %listener.connect, "upstream connect timed out");
            shared
                .telemetry
                .closed(&labels, conn_id, app_addr, CloseReason::Error, 0, 0);
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let upstream_addr = tcp.peer_addr().unwrap_or(app_addr);
    let started = std::time::Instant::now();
    let handshake = listener
        .connector
        .connect(listener.server_name.clone(), ReadAhead::new(tcp))
        .into_fallible();
    let tls = match crate::tls::timed_handshake(limits.handshake_timeout, handshake).await {
        Ok(tls) => tls,
        Err((failure, detail, socket)) => {
            shared.telemetry.handshake_failed(
                DIR,
                &listener.name,
                conn_id,
                upstream_addr,
                failure,
                &detail,
                Some(&listener.server_id),
                started,
            );
            // Closed only now, after the failure is counted and audited.
            drop(socket);
            return;
        }
    };
    shared.telemetry.handshake_ok(&labels, started);
    if !shared.outbound_policy {
        // Without a control plane, the verified server_id is the whole rule.
        let decision = Decision {
            allowed: true,
            reason: Reason::Matched {
                rule: listener.server_id.as_str(),
            },
        };
        shared
            .telemetry
            .decision(&labels, conn_id, upstream_addr, &decision, 0);
    }
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
        .closed(&labels, conn_id, app_addr, reason, stats.rx(), stats.tx());
}
