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
use warden_policy::Direction;

use crate::flow;
use crate::readahead::ReadAhead;
use crate::shared::Shared;

pub(crate) struct OutboundListener {
    pub name: Arc<str>,
    pub server_id: SpiffeId,
    pub connector: TlsConnector,
}

/// Where one connection goes.
pub(crate) enum Target {
    /// The explicit listener's `connect` (`host:port`, resolved per connection).
    Connect(Arc<str>),
    /// A captured connection's original destination.
    Original(SocketAddr),
}

pub(crate) struct Upstream {
    pub target: Target,
    /// The TLS server name to send (SNI); the upstream is verified by its SPIFFE ID.
    pub server_name: ServerName<'static>,
    /// Captured connections: our own upstream sockets, so that one captured by mistake (the
    /// sidecar not running as the proxy uid) is refused instead of looping.
    pub dialed: Option<Arc<crate::capture::Dialed>>,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: Arc<OutboundListener>,
    mut app: TcpStream,
    app_addr: SocketAddr,
    _permits: crate::shared::Permits,
    upstream: Upstream,
) {
    const DIR: Direction = Direction::Outbound;
    let conn_id = shared.registry.next_id();
    let limits = shared.limits;
    let _ = app.set_nodelay(true);
    let labels = shared
        .telemetry
        .peer(DIR, &listener.name, &listener.server_id);
    let conn = flow::Conn {
        shared: &shared,
        labels: &labels,
        id: conn_id,
        addr: app_addr,
    };
    // Decided before any network traffic, so a denied call costs the upstream nothing.
    // Without a control plane the static rule of this listener allows its `server_id`.
    let (registration, allowed) =
        flow::register_and_decide(&conn, DIR, &listener.name, &listener.server_id);
    if !allowed {
        return;
    }
    let dialled = match &upstream.target {
        Target::Connect(name) => flow::connect(&conn, &**name, flow::Dial::Upstream).await,
        Target::Original(addr) => flow::connect(&conn, *addr, flow::Dial::Upstream).await,
    };
    let Some(tcp) = dialled else {
        return;
    };
    let upstream_addr = tcp.peer_addr().unwrap_or(app_addr);
    // Held until the connection ends.
    let _dialed = upstream
        .dialed
        .as_ref()
        .and_then(|d| d.insert(tcp.local_addr().ok()?));
    let started = std::time::Instant::now();
    let handshake = listener
        .connector
        .connect(upstream.server_name, ReadAhead::new(tcp))
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
    let mut registration = registration;
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
