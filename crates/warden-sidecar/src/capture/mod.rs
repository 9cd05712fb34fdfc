//! Traffic capture: the listeners that `warden init`'s iptables rules redirect to, so that
//! no connection into or out of the pod can walk around the sidecar.
//!
//! A redirected connection still knows where it was going (`SO_ORIGINAL_DST`, from the
//! kernel's NAT table). That original destination picks what serves it:
//!
//! - inbound ([`serve_inbound`]): its port picks the `[[inbound]]` with that `port` (or an
//!   explicit listener on that port); the connection then takes the explicit inbound road
//!   (`inbound::serve`: mTLS, peer share, policy, app on loopback);
//! - outbound ([`serve_outbound`]): its address picks the `[[outbound]]` whose
//!   `destinations` hold it ([`destinations`]), and the connection takes the outbound road
//!   (`outbound::serve`) to that original address; otherwise, on an `[[egress]]` port, TLS
//!   passes through when its SNI is listed ([`egress`]).
//!
//! Everything else is refused, counted and audited (`no_listener`, `unknown_destination`,
//! `egress_denied`). Nothing here relaxes a check of the explicit roads.

mod client_hello;
pub(crate) mod destinations;
mod egress;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use warden_policy::Direction;

use crate::config::EgressConfig;
use crate::inbound::{self, InboundListener};
use crate::outbound::{self, OutboundListener, Upstream};
use crate::shared::{Permits, Shared};
use crate::telemetry::CaptureRefusal;
use destinations::{Destinations, canonical};

/// The `listener` label of connections refused before any listener claimed them.
pub(crate) const CAPTURE_LISTENER: &str = "capture";

/// Where a redirected connection was going, as the kernel's NAT table remembers it.
pub(crate) fn original_dst(tcp: &TcpStream) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(tcp);
    let ipv4_first = tcp
        .local_addr()
        .map_or(true, |a| matches!(canonical(a), SocketAddr::V4(_)));
    let (first, second) = if ipv4_first {
        (sock.original_dst_v4(), None)
    } else {
        (sock.original_dst_v6(), Some(()))
    };
    let addr = match (first, second) {
        (Ok(a), _) => a,
        // A dual-stack socket: an IPv4 connection answers the IPv4 option, and the other
        // way round.
        (Err(_), None) => sock.original_dst_v6()?,
        (Err(_), Some(())) => sock.original_dst_v4()?,
    };
    addr.as_socket()
        .map(canonical)
        .ok_or_else(|| io::Error::other("the original destination is not an IP address"))
}

/// Captured inbound: listeners by the app port they serve.
pub(crate) struct CaptureInbound {
    pub name: Arc<str>,
    pub by_port: HashMap<u16, Arc<InboundListener>>,
}

pub(crate) async fn serve_inbound(
    shared: Arc<Shared>,
    capture: Arc<CaptureInbound>,
    tcp: TcpStream,
    peer_addr: SocketAddr,
    permits: Permits,
) {
    let listener = original_dst(&tcp)
        .map_err(|e| format!("no original destination ({e}): not a redirected connection"))
        .and_then(|dst| {
            capture.by_port.get(&dst.port()).cloned().ok_or_else(|| {
                format!(
                    "original destination {dst}: no [[inbound]] has port {}",
                    dst.port()
                )
            })
        });
    match listener {
        Ok(listener) => inbound::serve(shared, listener, tcp, peer_addr, permits).await,
        Err(detail) => {
            let id = shared.registry.next_id();
            shared.telemetry.capture_refused(
                Direction::Inbound,
                &capture.name,
                id,
                peer_addr,
                CaptureRefusal::NoListener,
                detail,
            );
        }
    }
}

/// Captured outbound: the mesh listeners with the destinations they claim, and egress.
pub(crate) struct CaptureOutbound {
    pub name: Arc<str>,
    pub listeners: Vec<Arc<OutboundListener>>,
    pub destinations: Arc<Destinations>,
    pub egress: Vec<EgressConfig>,
    pub dialed: Arc<Dialed>,
}

pub(crate) async fn serve_outbound(
    shared: Arc<Shared>,
    capture: Arc<CaptureOutbound>,
    app: TcpStream,
    app_addr: SocketAddr,
    permits: Permits,
) {
    let refuse = |refusal, detail: String| {
        let id = shared.registry.next_id();
        shared.telemetry.capture_refused(
            Direction::Outbound,
            &capture.name,
            id,
            app_addr,
            refusal,
            detail,
        );
    };
    if capture.dialed.contains(app_addr) {
        tracing::error!(%app_addr, "the sidecar's own upstream connection was captured: run it as the uid that `warden init --proxy-uid` exempts");
        return refuse(
            CaptureRefusal::Loop,
            "the sidecar's own connection came back through capture".into(),
        );
    }
    let dst = match original_dst(&app) {
        Ok(dst) if app.local_addr().is_ok_and(|local| canonical(local) != dst) => dst,
        Ok(_) | Err(_) => {
            return refuse(
                CaptureRefusal::UnknownDestination,
                "no original destination: not a redirected connection".into(),
            );
        }
    };
    if let Some(claim) = capture.destinations.lookup_or_resolve(dst).await {
        let listener = capture.listeners[claim.listener].clone();
        let upstream = Upstream {
            target: outbound::Target::Original(dst),
            server_name: claim.server_name.clone(),
            dialed: Some(capture.dialed.clone()),
        };
        return outbound::serve(shared, listener, app, app_addr, permits, upstream).await;
    }
    if capture.egress.iter().any(|e| e.ports.contains(&dst.port())) {
        return egress::serve(shared, capture, app, app_addr, dst, permits).await;
    }
    refuse(
        CaptureRefusal::UnknownDestination,
        format!(
            "original destination {dst}: no [[outbound]] destination or [[egress]] port claims it"
        ),
    );
}

/// The local addresses of the sidecar's own captured-outbound upstream sockets. A captured
/// connection from one of them is the sidecar talking to itself.
#[derive(Default)]
pub(crate) struct Dialed(Mutex<HashSet<SocketAddr>>);

impl Dialed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<SocketAddr>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers `addr` until the returned guard drops.
    pub(crate) fn insert(self: &Arc<Self>, addr: SocketAddr) -> Option<DialedGuard> {
        let addr = canonical(addr);
        self.lock().insert(addr);
        Some(DialedGuard {
            set: self.clone(),
            addr,
        })
    }

    fn contains(&self, addr: SocketAddr) -> bool {
        self.lock().contains(&canonical(addr))
    }
}

pub(crate) struct DialedGuard {
    set: Arc<Dialed>,
    addr: SocketAddr,
}

impl Drop for DialedGuard {
    fn drop(&mut self) {
        self.set.lock().remove(&self.addr);
    }
}

/// `warden init` redirects IPv6 too: to `[::1]:<outbound port>` and to the pod's IPv6
/// address on the inbound port. So an IPv4 capture address on loopback or on every
/// address gets an IPv6 twin on the same port (`[::1]`, `[::]` taking IPv6 only), unless
/// the namespace has no IPv6 (then nothing can be redirected there either).
fn ipv6_twin(
    key: &str,
    v4: SocketAddr,
    workers: usize,
) -> Result<Vec<std::net::TcpListener>, crate::StartError> {
    let ip: std::net::Ipv6Addr = match v4.ip() {
        std::net::IpAddr::V4(ip) if ip.is_loopback() => std::net::Ipv6Addr::LOCALHOST,
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv6Addr::UNSPECIFIED,
        _ => return Ok(Vec::new()),
    };
    let twin = SocketAddr::new(ip.into(), v4.port());
    match crate::workers::bind_group_with(key, twin, workers, true) {
        Ok((_, sockets)) => Ok(sockets),
        Err(crate::StartError::Bind { source, .. })
            if source.kind() == io::ErrorKind::AddrNotAvailable
                || source.raw_os_error() == Some(97) =>
        {
            // EADDRNOTAVAIL: no ::1 here; EAFNOSUPPORT (97): IPv6 is off in this kernel.
            tracing::debug!(%twin, error = %source, "no IPv6 twin of a capture listener");
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// The `[capture]` listeners, ready for the workers.
pub(crate) struct Captured {
    pub groups: Vec<crate::workers::ListenerGroup>,
    /// Bound addresses (inbound, outbound).
    pub addrs: (Option<SocketAddr>, Option<SocketAddr>),
    /// The outbound destinations to keep resolving, when any is a name.
    pub destinations: Option<Arc<Destinations>>,
}

/// Binds the `[capture]` listeners. `by_port`: the inbound listeners by the app port they
/// serve; `outbound`: every `[[outbound]]`, in config order.
pub(crate) fn listeners(
    config: &crate::SidecarConfig,
    shared: &Arc<Shared>,
    by_port: HashMap<u16, Arc<InboundListener>>,
    outbound: Vec<Arc<OutboundListener>>,
    workers: usize,
) -> Result<Captured, crate::StartError> {
    let mut captured = Captured {
        groups: Vec::new(),
        addrs: (None, None),
        destinations: None,
    };
    let name: Arc<str> = CAPTURE_LISTENER.into();
    if let Some(listen) = config.capture.inbound {
        let (addr, mut sockets) = crate::workers::bind_group("capture.inbound", listen, workers)?;
        captured.addrs.0 = Some(addr);
        sockets.extend(ipv6_twin("capture.inbound", addr, workers)?);
        let capture = Arc::new(CaptureInbound {
            name: name.clone(),
            by_port,
        });
        let shared = shared.clone();
        captured.groups.push(crate::workers::ListenerGroup {
            sockets,
            direction: Direction::Inbound,
            name: name.clone(),
            handshake_limit: true,
            serve: Arc::new(move |stream, addr, permits| {
                tokio::spawn(serve_inbound(
                    shared.clone(),
                    capture.clone(),
                    stream,
                    addr,
                    permits,
                ));
            }),
        });
    }
    if let Some(listen) = config.capture.outbound {
        let (addr, mut sockets) = crate::workers::bind_group("capture.outbound", listen, workers)?;
        captured.addrs.1 = Some(addr);
        sockets.extend(ipv6_twin("capture.outbound", addr, workers)?);
        let destinations = Arc::new(Destinations::new(
            config
                .outbound
                .iter()
                .enumerate()
                .map(|(i, l)| (i, l.destinations.as_slice())),
        ));
        if destinations.has_names() {
            captured.destinations = Some(destinations.clone());
        }
        let capture = Arc::new(CaptureOutbound {
            name: name.clone(),
            listeners: outbound,
            destinations,
            egress: config.egress.clone(),
            dialed: Arc::default(),
        });
        let shared = shared.clone();
        captured.groups.push(crate::workers::ListenerGroup {
            sockets,
            direction: Direction::Outbound,
            name,
            // As the explicit outbound listeners: the app connected over loopback, and
            // `max_connections` bounds what follows.
            handshake_limit: false,
            serve: Arc::new(move |stream, addr, permits| {
                tokio::spawn(serve_outbound(
                    shared.clone(),
                    capture.clone(),
                    stream,
                    addr,
                    permits,
                ));
            }),
        });
    }
    Ok(captured)
}
