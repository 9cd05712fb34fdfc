//! Warden's data plane. Owns the listeners (inbound mTLS termination, outbound mTLS
//! origination), the authorization of every connection against the current policy, the byte
//! relay, and the registry of open connections that is re-checked on every policy change.
//!
//! It must never forward a byte for a peer that has not completed a TLS 1.3 handshake with a
//! valid SVID and been allowed by policy, never fall back to plaintext, and never allow when
//! it has no identity or no policy (default deny, also during start-up).
#![forbid(unsafe_code)]

mod admin;
pub mod audit;
pub mod config;
pub mod control;
mod flow;
mod inbound;
pub mod metrics;
mod outbound;
mod pool;
mod readahead;
pub mod registry;
mod relay;
pub mod telemetry;
pub mod tls;
mod workers;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use warden_identity::{IdentityStore, SourceEvent, SvidSource};
use warden_policy::PolicySnapshot;

pub use config::{ConfigError, IdentityConfig, Limits, SidecarConfig};
pub use registry::{CloseReason, ConnectionInfo, Registry};
pub use telemetry::{PolicyOutcome, RotationOutcome, Telemetry};
pub use warden_identity::source_for;

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
}

/// State shared by every connection task.
pub(crate) struct Shared {
    pub identity: Arc<IdentityStore>,
    pub policy: ArcSwap<PolicySnapshot>,
    pub registry: Arc<Registry>,
    pub telemetry: Telemetry,
    pub limits: Limits,
    /// One per open connection (`limits.max_connections`).
    pub permits: Arc<Semaphore>,
    /// One per inbound connection still in its TLS handshake
    /// (`limits.max_pending_handshakes`).
    pub handshakes: Arc<Semaphore>,
    /// Inbound connections per peer SPIFFE ID (`limits.max_connections_per_peer`).
    pub per_peer: Arc<warden_identity::PeerCounts<warden_identity::SpiffeId>>,
}

/// What an accepted connection holds: its connection slot for its whole life and, inbound,
/// a handshake slot that `inbound::serve` drops as soon as the handshake has ended.
pub(crate) struct Permits {
    pub _connection: tokio::sync::OwnedSemaphorePermit,
    pub handshake: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Shared {
    pub(crate) fn apply_policy(&self, policy: PolicySnapshot, outcome: PolicyOutcome) -> usize {
        // Store first, then re-check: a connection registering concurrently either sees the
        // new policy in its own decision or is found by the re-check.
        self.policy.store(Arc::new(policy));
        let policy = self.policy.load();
        let revoked = self.registry.recheck(&policy);
        self.telemetry
            .policy_update(outcome, policy.version(), policy.source().as_str(), revoked);
        revoked
    }
}

/// The policy a sidecar enforces from start-up until it knows its own SPIFFE ID: the static
/// allowlists (a listener without `allow` denies everyone). The last-known-good cache is
/// checked against that ID and put in force only then (`control::enforce_cache`), so a
/// cache written for another workload can never widen access.
pub fn initial_policy(config: &SidecarConfig) -> PolicySnapshot {
    static_policy(config)
}

/// The rules of the config file as a policy: each inbound listener's `allow` list and,
/// without a control plane, each outbound listener's `server_id` (the one upstream it may
/// reach). Under a control plane its policy decides outbound calls, and until it has
/// spoken none is allowed: static outbound rules are left out.
pub fn static_policy(config: &SidecarConfig) -> PolicySnapshot {
    let inbound: BTreeMap<_, _> = config
        .inbound
        .iter()
        .map(|l| (l.name.clone(), l.allow.clone()))
        .collect();
    let outbound: BTreeMap<_, _> = if config.policy.control_plane.is_some() {
        BTreeMap::new()
    } else {
        config
            .outbound
            .iter()
            .map(|l| {
                // A configured server_id is a workload ID, so it is always a valid exact
                // pattern; were it not, the listener would have no rule and deny.
                let rule = warden_policy::Pattern::exact(&l.server_id)
                    .into_iter()
                    .collect();
                (l.name.clone(), rule)
            })
            .collect()
    };
    PolicySnapshot::from_static(inbound, outbound)
}

/// A running sidecar. Dropping it stops the listeners; call [`Sidecar::shutdown`] to drain.
pub struct Sidecar {
    shared: Arc<Shared>,
    inbound_addrs: Vec<(String, SocketAddr)>,
    outbound_addrs: Vec<(String, SocketAddr)>,
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
        });
        let worker_count = config.limits.worker_threads();
        let mut groups = Vec::new();
        let server_config = tls::server_config(&identity)?;
        let mut inbound_addrs = Vec::new();
        for l in &config.inbound {
            let (addr, sockets) = workers::bind_group(&l.name, l.listen, worker_count)?;
            inbound_addrs.push((l.name.clone(), addr));
            let listener = Arc::new(inbound::InboundListener {
                name: l.name.as_str().into(),
                forward: l.forward.clone(),
                acceptor: TlsAcceptor::from(server_config.clone()),
            });
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
        for l in &config.outbound {
            let (addr, sockets) = workers::bind_group(&l.name, l.listen, worker_count)?;
            outbound_addrs.push((l.name.clone(), addr));
            let listener = Arc::new(outbound::OutboundListener {
                name: l.name.as_str().into(),
                connect: l.connect.clone(),
                server_id: l.server_id.clone(),
                server_name: tls::server_name(&l.connect),
                connector: TlsConnector::from(tls::client_config(&identity, &l.server_id)?),
            });
            let conn_shared = shared.clone();
            groups.push(workers::ListenerGroup {
                sockets,
                direction: warden_policy::Direction::Outbound,
                name: l.name.as_str().into(),
                // Outbound handshakes are ours to start, after the app connected over
                // loopback; `max_connections` bounds them.
                handshake_limit: false,
                serve: Arc::new(move |stream, addr, permits| {
                    tokio::spawn(outbound::serve(
                        conn_shared.clone(),
                        listener.clone(),
                        stream,
                        addr,
                        permits,
                    ));
                }),
            });
        }
        let workers = workers::Workers::start(shared.clone(), groups, worker_count).await?;
        tracing::debug!(workers = workers.count(), "data-plane workers started");
        let mut admin_tasks = JoinSet::new();
        let admin_tcp = admin::bind("admin.listen", config.admin_listen).await?;
        let admin_addr = admin_tcp.local_addr().unwrap_or(config.admin_listen);
        admin_tasks.spawn(admin::serve(admin_tcp, shared.clone(), admin::Scope::Full));
        let mut metrics_addr = None;
        if let Some(addr) = config.metrics_listen {
            let tcp = admin::bind("admin.metrics_listen", addr).await?;
            metrics_addr = Some(tcp.local_addr().unwrap_or(addr));
            admin_tasks.spawn(admin::serve(tcp, shared.clone(), admin::Scope::MetricsOnly));
        }
        shared
            .telemetry
            .set_policy_version(shared.policy.load().version());
        // The cache matters only under a control plane: it stands in for it while it is away.
        let cache = config
            .policy
            .control_plane
            .as_ref()
            .and(config.policy.cache.clone());
        let identity_task = tokio::spawn(follow_identity(source, shared.clone(), cache));
        let watch_task = config.policy.control_plane.as_ref().map(|url| {
            let target = control::WatchTarget {
                url: url.clone(),
                control_plane_id: config
                    .policy
                    .control_plane_id
                    .clone()
                    .unwrap_or_else(|| default_control_plane_id(&config.trust_domain)),
                cache: config.policy.cache.clone(),
            };
            tokio::spawn(control::watch_loop(shared.clone(), target))
        });
        Ok(Self {
            shared,
            inbound_addrs,
            outbound_addrs,
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

/// Accepts until told to stop. Accept errors (out of file descriptors, most often) back off
/// instead of spinning, and the loop recovers by itself once resources free up.
///
/// A connection over `limits.max_connections`, or (inbound, `handshake_limit`) over
/// `limits.max_pending_handshakes`, is closed at once: it never costs a task or a handshake.
async fn accept_loop(
    tcp: TcpListener,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
    (direction, listener): (warden_policy::Direction, Arc<str>),
    handshake_limit: bool,
    serve: impl Fn(tokio::net::TcpStream, SocketAddr, Permits),
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = tcp.accept() => match accepted {
                Ok((stream, addr)) => {
                    backoff = Duration::from_millis(5);
                    let Ok(connection) = shared.permits.clone().try_acquire_owned() else {
                        refuse(&shared, direction, &listener, addr, "limits.max_connections");
                        continue;
                    };
                    let handshake = if handshake_limit {
                        match shared.handshakes.clone().try_acquire_owned() {
                            Ok(p) => Some(p),
                            Err(_) => {
                                refuse(&shared, direction, &listener, addr, "limits.max_pending_handshakes");
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    serve(stream, addr, Permits { _connection: connection, handshake });
                }
                Err(e) => {
                    tracing::error!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                    // A stop during the back-off ends the loop at once.
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Counts and audits a connection refused at a limit; the caller drops the socket.
fn refuse(
    shared: &Shared,
    direction: warden_policy::Direction,
    listener: &Arc<str>,
    addr: SocketAddr,
    limit: &'static str,
) {
    // Debug, not warn: under a flood this runs per connection, and the metric plus the
    // rate-limited audit record already say it; a log line each would be a disk DoS.
    tracing::debug!(%addr, limit, "connection refused at a limit");
    shared
        .telemetry
        .refused_at_limit(direction, listener, addr, None, limit);
}

/// Moves identities from the source into the store, logging each rotation. Never logs key
/// material: `Identity`'s Debug has none.
///
/// The first SVID, and any later one with another SPIFFE ID, is when the policy cache can be
/// checked against who this sidecar is; that happens before the SVID is installed, so no
/// handshake is served under a policy that has not been checked.
async fn follow_identity(
    source: Box<dyn SvidSource>,
    shared: Arc<Shared>,
    cache: Option<std::path::PathBuf>,
) {
    let name = source.name();
    let mut handle = source.start();
    let mut checked_for: Option<warden_identity::SpiffeId> = None;
    while let Some(event) = handle.events.recv().await {
        match event {
            SourceEvent::Updated(identity) => {
                let expires = humantime::format_rfc3339_seconds(identity.not_after());
                tracing::info!(source = name, spiffe_id = %identity.spiffe_id(), %expires, "SVID loaded");
                if let Some(path) = &cache
                    && checked_for.as_ref() != Some(identity.spiffe_id())
                {
                    if checked_for.is_some()
                        && shared.policy.load().source() == warden_policy::PolicySource::Cache
                    {
                        // The cache in force was checked for the previous ID: deny until
                        // the control plane speaks, unless a cache for the new ID exists.
                        shared.apply_policy(PolicySnapshot::deny_all(), PolicyOutcome::Applied);
                    }
                    control::enforce_cache(&shared, path, identity.spiffe_id());
                    checked_for = Some(identity.spiffe_id().clone());
                }
                shared.telemetry.svid_loaded(name, &identity);
                shared.identity.set(identity);
            }
            SourceEvent::Rejected { reason } => {
                tracing::warn!(source = name, %reason, "new SVID rejected; keeping the previous one");
                shared.telemetry.svid_rejected(name, &reason.to_string());
            }
            SourceEvent::Unavailable { reason } => {
                tracing::warn!(source = name, %reason, "SVID source unavailable");
            }
        }
    }
}
