//! Warden's data plane. Owns the listeners (inbound mTLS termination, outbound mTLS
//! origination), the authorization of every connection against the current policy, the byte
//! relay, and the registry of open connections that is re-checked on every policy change.
//!
//! It must never forward a byte for a peer that has not completed a TLS 1.3 handshake with a
//! valid SVID and been allowed by policy, never fall back to plaintext, and never allow when
//! it has no identity or no policy (default deny, also during start-up).
#![forbid(unsafe_code)]

mod admin;
pub mod app_probe;
pub mod audit;
mod capture;
pub mod config;
pub mod control;
pub mod edges;
mod flow;
mod identity;
mod inbound;
pub mod jwks;
mod l7;
pub mod metrics;
mod outbound;
mod policy;
mod pool;
mod proxy_protocol;
mod readahead;
pub mod registry;
mod relay;
mod shared;
pub mod telemetry;
pub mod tls;
mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use warden_identity::{IdentityStore, SvidSource};
use warden_policy::PolicySnapshot;

pub use config::{ConfigError, IdentityConfig, Limits, SidecarConfig};
pub use policy::{initial_policy, static_policy};
pub use registry::{CloseReason, ConnectionInfo, Registry};
pub use telemetry::{PolicyOutcome, RotationOutcome, Telemetry};
pub use warden_identity::source_for;

use shared::Shared;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("listener {listener:?}: cannot listen on {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("data-plane worker: {0}")]
    Worker(String),
    #[error(transparent)]
    Jwks(#[from] jwks::JwksStartError),
}

/// A running sidecar. Dropping it stops the listeners; call [`Sidecar::shutdown`] to drain.
pub struct Sidecar {
    shared: Arc<Shared>,
    inbound_addrs: Vec<(String, SocketAddr)>,
    outbound_addrs: Vec<(String, SocketAddr)>,
    /// The bound `[capture]` listeners (inbound, outbound).
    capture_addrs: (Option<SocketAddr>, Option<SocketAddr>),
    /// Other tasks that end with the sidecar (re-resolving captured destinations).
    background: Vec<tokio::task::JoinHandle<()>>,
    /// The data-plane threads; they own the listening sockets and the connections.
    workers: workers::Workers,
    _identity_task: tokio::task::JoinHandle<()>,
    watch_task: Option<tokio::task::JoinHandle<()>>,
    admin_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    /// Admin servers; dropping the set (with the `Sidecar`) aborts them.
    _admin: JoinSet<()>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self._identity_task.abort();
        if let Some(task) = &self.watch_task {
            task.abort();
        }
        for task in &self.background {
            task.abort();
        }
    }
}

impl Sidecar {
    /// Binds every listener and starts serving. Returns once all listeners are bound; the
    /// identity arrives from `source` in the background (until then every handshake fails).
    pub async fn start(
        config: &SidecarConfig,
        source: Box<dyn SvidSource>,
    ) -> Result<Self, StartError> {
        let telemetry = Telemetry::new(
            metrics::Metrics::new(config.peer_id_limit),
            audit::AuditLog::open(config.audit_path.as_deref(), Default::default())?,
        );
        Self::start_with_telemetry(config, source, telemetry).await
    }

    /// [`Sidecar::start`] with a given telemetry sink; benchmarks use it to compare against
    /// [`Telemetry::off`].
    #[doc(hidden)]
    pub async fn start_with_telemetry(
        config: &SidecarConfig,
        source: Box<dyn SvidSource>,
        telemetry: Telemetry,
    ) -> Result<Self, StartError> {
        let identity = IdentityStore::new();
        let shared = Arc::new(Shared {
            identity: identity.clone(),
            policy: ArcSwap::from_pointee(initial_policy(config)),
            registry: Arc::new(Registry::default()),
            telemetry,
            limits: config.limits,
            permits: Arc::new(Semaphore::new(config.limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(config.limits.max_pending_handshakes)),
            per_peer: warden_identity::PeerCounts::new(config.limits.max_connections_per_peer),
            l7: shared::L7Targets {
                http_listeners: config
                    .inbound
                    .iter()
                    .filter(|l| matches!(l.protocol, config::InboundProtocol::Http { .. }))
                    .map(|l| l.name.clone())
                    .collect(),
                jwt_issuers: config.jwt.iter().map(|j| j.name.clone()).collect(),
            },
            policy_writer: std::sync::Mutex::new(()),
        });
        let worker_count = config.limits.worker_threads();
        let mut groups = Vec::new();
        let server_config = tls::server_config(&identity)?;
        // HTTP listeners offer h2 and http/1.1 by ALPN; a client offering none (an outbound
        // sidecar relaying an app's bytes) is recognised by its first bytes instead.
        let http_server_config = {
            let mut c = (*server_config).clone();
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(c)
        };
        let jwt =
            Arc::new(jwks::Jwt::start(&config.jwt, &config.identity, &shared.telemetry).await?);
        let tokens = jwt.clone();
        let mut inbound_addrs = Vec::new();
        // Captured inbound connections, by the app port they were for.
        let mut by_port = std::collections::HashMap::new();
        for l in &config.inbound {
            let (acceptor, http) = match l.protocol {
                config::InboundProtocol::Http {
                    forward_client_cert,
                    app_protocol,
                } => (
                    TlsAcceptor::from(http_server_config.clone()),
                    Some(Arc::new(l7::HttpSettings {
                        forward_client_cert,
                        app_protocol,
                        tokens: tokens.clone(),
                    })),
                ),
                config::InboundProtocol::Tcp { .. } => {
                    (TlsAcceptor::from(server_config.clone()), None)
                }
            };
            let listener = Arc::new(inbound::InboundListener {
                name: l.name.as_str().into(),
                forward: l.forward.clone(),
                acceptor,
                http,
                proxy_protocol_tlv: match l.protocol {
                    config::InboundProtocol::Tcp { proxy_protocol_tlv } => proxy_protocol_tlv,
                    config::InboundProtocol::Http { .. } => None,
                },
            });
            if let Some(port) = l.port {
                by_port.insert(port, listener.clone());
            }
            let Some(listen) = l.listen else {
                continue;
            };
            let (addr, sockets) = workers::bind_group(&l.name, listen, worker_count)?;
            inbound_addrs.push((l.name.clone(), addr));
            // Under capture, a peer that dials an explicit listener's port is redirected
            // too; it is still that listener's connection.
            if !listen.ip().is_loopback() {
                by_port
                    .entry(addr.port())
                    .or_insert_with(|| listener.clone());
            }
            let conn_shared = shared.clone();
            groups.push(workers::ListenerGroup {
                sockets,
                direction: warden_policy::Direction::Inbound,
                name: l.name.as_str().into(),
                handshake_limit: true,
                serve: Arc::new(move |stream, addr, permits| {
                    tokio::spawn(inbound::serve(
                        conn_shared.clone(),
                        listener.clone(),
                        stream,
                        addr,
                        permits,
                    ));
                }),
            });
        }
        let mut outbound_addrs = Vec::new();
        let mut outbound_listeners = Vec::new();
        for l in &config.outbound {
            let listener = Arc::new(outbound::OutboundListener {
                name: l.name.as_str().into(),
                server_id: l.server_id.clone(),
                connector: TlsConnector::from(tls::client_config(&identity, &l.server_id)?),
            });
            outbound_listeners.push(listener.clone());
            let (Some(listen), Some(connect)) = (l.listen, l.connect.clone()) else {
                continue;
            };
            let (addr, sockets) = workers::bind_group(&l.name, listen, worker_count)?;
            outbound_addrs.push((l.name.clone(), addr));
            let server_name = tls::server_name(&connect);
            let connect: Arc<str> = connect.into();
            let conn_shared = shared.clone();
            groups.push(workers::ListenerGroup {
                sockets,
                direction: warden_policy::Direction::Outbound,
                name: l.name.as_str().into(),
                // Outbound handshakes are ours to start, after the app connected over
                // loopback; `max_connections` bounds them.
                handshake_limit: false,
                serve: Arc::new(move |stream, addr, permits| {
                    let upstream = outbound::Upstream {
                        target: outbound::Target::Connect(connect.clone()),
                        server_name: server_name.clone(),
                        dialed: None,
                    };
                    tokio::spawn(outbound::serve(
                        conn_shared.clone(),
                        listener.clone(),
                        stream,
                        addr,
                        permits,
                        upstream,
                    ));
                }),
            });
        }
        let capture =
            capture::listeners(config, &shared, by_port, outbound_listeners, worker_count)?;
        groups.extend(capture.groups);
        let mut watch_tasks = Vec::new();
        let workers = workers::Workers::start(shared.clone(), groups, worker_count).await?;
        tracing::debug!(workers = workers.count(), "data-plane workers started");
        let mut admin_tasks = JoinSet::new();
        let probes = app_probe::AppProbes::new(&config.app_probes);
        let admin_tcp = admin::bind("admin.listen", config.admin_listen).await?;
        let admin_addr = admin_tcp.local_addr().unwrap_or(config.admin_listen);
        admin_tasks.spawn(admin::serve(
            admin_tcp,
            shared.clone(),
            admin::Scope::Full,
            probes.clone(),
        ));
        let mut metrics_addr = None;
        if let Some(addr) = config.metrics_listen {
            let tcp = admin::bind("admin.metrics_listen", addr).await?;
            metrics_addr = Some(tcp.local_addr().unwrap_or(addr));
            admin_tasks.spawn(admin::serve(
                tcp,
                shared.clone(),
                admin::Scope::MetricsOnly,
                probes,
            ));
        }
        shared
            .telemetry
            .set_policy_version(shared.policy.load().version());
        // The cache matters only under a control plane: it stands in for it while it is away.
        let cache = (!config.policy.control_plane.is_empty())
            .then(|| config.policy.cache.clone())
            .flatten();
        let identity_task = tokio::spawn(identity::follow_identity(source, shared.clone(), cache));
        let urls = &config.policy.control_plane;
        let reporting = (!urls.is_empty() && config.policy.edge_reports).then(|| {
            let edges = Arc::new(edges::Edges::new(config.policy.report_max_edges));
            shared.telemetry.report_edges(edges.clone());
            let reporting = Arc::new(control::report::Reporting::new(
                edges,
                config.policy.report_interval,
            ));
            watch_tasks.push(tokio::spawn(control::report::report_loop(
                reporting.clone(),
                shared.telemetry.clone(),
            )));
            reporting
        });
        let watch_task = (!urls.is_empty()).then(|| {
            let target = control::WatchTarget {
                urls: urls.clone(),
                control_plane_id: config
                    .policy
                    .control_plane_id
                    .clone()
                    .unwrap_or_else(|| default_control_plane_id(&config.trust_domain)),
                cache: config.policy.cache.clone(),
                reporting,
            };
            tokio::spawn(control::watch_loop(shared.clone(), target))
        });
        if let Some(destinations) = capture.destinations {
            watch_tasks.push(tokio::spawn(capture::destinations::refresh_loop(
                destinations,
            )));
        }
        Ok(Self {
            shared,
            inbound_addrs,
            outbound_addrs,
            capture_addrs: capture.addrs,
            background: watch_tasks,
            workers,
            _identity_task: identity_task,
            watch_task,
            admin_addr,
            metrics_addr,
            _admin: admin_tasks,
        })
    }

    /// Bound addresses of the inbound listeners, by name (useful with port 0).
    pub fn inbound_addr(&self, name: &str) -> Option<SocketAddr> {
        self.inbound_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// Bound address of the `[capture] inbound` listener.
    pub fn capture_inbound_addr(&self) -> Option<SocketAddr> {
        self.capture_addrs.0
    }

    /// Bound address of the `[capture] outbound` listener.
    pub fn capture_outbound_addr(&self) -> Option<SocketAddr> {
        self.capture_addrs.1
    }

    pub fn outbound_addr(&self, name: &str) -> Option<SocketAddr> {
        self.outbound_addrs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    pub fn identity(&self) -> &Arc<IdentityStore> {
        &self.shared.identity
    }

    pub fn policy(&self) -> Arc<PolicySnapshot> {
        self.shared.policy.load_full()
    }

    /// Installs a new policy and re-checks every open connection against it; those no
    /// longer allowed are closed with reason `revoked`. Returns how many were revoked.
    pub fn apply_policy(&self, policy: PolicySnapshot) -> usize {
        self.shared.apply_policy(policy, PolicyOutcome::Applied)
    }

    /// Bound address of the admin server (`/metrics`, `/readyz`, `/debug/...`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Bound address of the metrics-only listener, when `[admin] metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Metrics and audit hooks (e.g. for the control-plane client or embedding code).
    pub fn telemetry(&self) -> &Telemetry {
        &self.shared.telemetry
    }

    /// Why the sidecar is not ready (`/readyz`), or `None` when it has a usable SVID and a
    /// policy.
    pub fn not_ready_reason(&self) -> Option<String> {
        admin::not_ready_reason(&self.shared)
    }

    /// Ready to serve: a usable (unexpired) SVID is loaded.
    pub fn is_ready(&self) -> bool {
        self.shared.identity.usable().is_some()
    }

    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared.registry.snapshot()
    }

    /// Stops accepting, lets open connections finish for up to `grace`, then closes the rest
    /// (reason `drain`) and waits briefly for them to be counted.
    pub async fn shutdown(mut self, grace: Duration) {
        // Once the accept loops have ended their listening sockets are closed: new
        // connections are refused by the kernel from here on.
        self.workers.stop_accepting().await;
        let all = self.shared.limits.max_connections;
        // Every connection task holds a permit, also while still in its handshake (those are
        // not in the registry yet), so "all permits back" means nothing is open.
        let idle = |shared: &Shared| shared.permits.available_permits() >= all;
        let deadline = tokio::time::Instant::now() + grace;
        let mut poll = tokio::time::interval(Duration::from_millis(20));
        while !idle(&self.shared) && tokio::time::Instant::now() < deadline {
            poll.tick().await;
        }
        self.shared.registry.close_all(CloseReason::Drain);
        // Closing is prompt (the relay selects on the signal); a bounded wait lets each task
        // record its `drain` close. Handshakes still running end at `handshake_timeout`.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while !self.shared.registry.is_empty() && tokio::time::Instant::now() < deadline {
            poll.tick().await;
        }
    }
}

/// `spiffe://<trust domain>/warden/control-plane`, the control plane's default identity.
pub fn default_control_plane_id(
    trust_domain: &warden_identity::TrustDomain,
) -> warden_identity::SpiffeId {
    // A trust domain that parsed plus a fixed valid path always forms a valid ID.
    warden_identity::SpiffeId::parse(&format!(
        "{}/warden/control-plane",
        trust_domain.id_string()
    ))
    .expect("trust domain + fixed path is a valid SPIFFE ID")
}
