//! The control-plane process: store, identity, the gRPC API over mTLS, and (with the
//! built-in CA) the SPIFFE Workload API on Unix sockets.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warden_identity::{IdentityStore, SourceEvent, SvidSource};
use warden_proto::control::v1::policy_service_server::PolicyServiceServer;

use crate::audit::AuditEvent;
use crate::ca::BuiltinCa;
use crate::config::{ControlIdentity, ControlPlaneConfig, StoreConfig};
use crate::policy_service::PolicyApi;
use crate::store::{EtcdStore, PolicyStore, RedbStore, StoreError};

#[derive(Debug, Error)]
pub enum StartError {
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("built-in CA: {0}")]
    Ca(String),
    #[error("listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("gRPC reflection: {0}")]
    Reflection(String),
    #[error("Workload API: {0}")]
    WorkloadApi(String),
}

/// A running control plane. Dropping it stops the API; [`ControlPlane::shutdown`] waits.
pub struct ControlPlane {
    addr: SocketAddr,
    identity: Arc<IdentityStore>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    identity_task: JoinHandle<()>,
    extras: Vec<Box<dyn std::any::Any + Send>>,
    insight: Arc<crate::insight::Insight>,
    /// The anomaly rules' ticker and responder, the admin listener.
    background: Vec<JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.identity_task.abort();
        for task in &self.background {
            task.abort();
        }
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

fn create_private_dir(path: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(err)?;
    // An existing directory keeps its mode unless we tighten it: it holds the CA key.
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

impl ControlPlane {
    /// Starts everything `config` asks for. Returns once the API listener is bound; the
    /// serving SVID may arrive a moment later (until then handshakes fail closed).
    pub async fn start(config: &ControlPlaneConfig) -> Result<Self, StartError> {
        create_private_dir(&config.data_dir)?;
        let (store, etcd) = open_store(config).await?;
        let mut extras: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
        let ca = if config.ca.enabled {
            let ca = Arc::new(builtin_ca(config, etcd.as_deref()).await?);
            if let Some(admin) = config.admins.first() {
                let status = ca
                    .ensure_admin_credential(&config.data_dir, admin)
                    .map_err(|e| StartError::Ca(e.to_string()))?;
                tracing::info!(admin = %admin, ?status, dir = %config.data_dir.join(crate::ca::ADMIN_DIR).display(), "admin credential for the CLI");
            }
            if !config.workload_api.is_empty() {
                // JWT-SVIDs are signed with a key of this replica's data_dir.
                let jwt =
                    crate::ca::JwtAuthority::load_or_create(&config.data_dir, &config.trust_domain)
                        .map_err(|e| StartError::Ca(e.to_string()))?;
                let handle = crate::workload_api::serve_workload_api(
                    ca.clone(),
                    Arc::new(jwt),
                    config.workload_api.clone(),
                    config.ca.svid_ttl,
                    &config.limits,
                    std::future::pending(),
                )
                .await
                .map_err(|e| StartError::WorkloadApi(e.to_string()))?;
                extras.push(Box::new(handle));
            }
            Some(ca)
        } else {
            None
        };
        let source: Box<dyn SvidSource> = match &config.identity {
            ControlIdentity::BuiltinCa { spiffe_id } => {
                let ca = ca.ok_or_else(|| {
                    StartError::Ca("[identity] source = \"builtin-ca\" needs [ca] enabled".into())
                })?;
                Box::new(crate::ca_source::BuiltinCaSource::new(
                    ca,
                    spiffe_id.clone(),
                    config.ca.svid_ttl,
                ))
            }
            ControlIdentity::Source(identity) => warden_identity::source_for(identity),
        };
        let mut cp = Self::start_with_store(config, source, store).await?;
        cp.extras = extras;
        Ok(cp)
    }

    /// Starts the policy API with an explicit SVID source (no CA, no Workload API).
    pub async fn start_with_source(
        config: &ControlPlaneConfig,
        source: Box<dyn SvidSource>,
    ) -> Result<Self, StartError> {
        create_private_dir(&config.data_dir)?;
        let (store, _) = open_store(config).await?;
        Self::start_with_store(config, source, store).await
    }

    async fn start_with_store(
        config: &ControlPlaneConfig,
        source: Box<dyn SvidSource>,
        store: Arc<dyn PolicyStore>,
    ) -> Result<Self, StartError> {
        let described = store.describe();
        let insight = Arc::new(crate::insight::Insight::new(
            config.edges,
            config.anomaly.clone(),
            config.admins.iter().map(|a| a.to_string()).collect(),
            crate::policy_service::now_ms(),
        ));
        let api = PolicyApi::start(store, config.admins.iter().cloned())
            .await?
            .with_insight(insight.clone());
        let identity = IdentityStore::new();
        // The anomaly rules' quarantine orders, carried out as the control plane itself.
        let (orders, orders_rx) = tokio::sync::mpsc::channel(64);
        insight.set_responder(orders);
        let me = identity.clone();
        let mut background = vec![
            tokio::spawn(crate::insight::tick_loop(insight.clone())),
            tokio::spawn(crate::quarantine::respond(
                api.quarantines(),
                orders_rx,
                move || {
                    me.load().map_or_else(
                        || "control-plane (anomaly response)".to_owned(),
                        |i| format!("{} (anomaly response)", i.spiffe_id()),
                    )
                },
            )),
        ];
        let identity_task = tokio::spawn(follow(source, identity.clone()));
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().unwrap_or(config.listen);
        let tls = crate::transport::server_config(&identity)?;
        let limits = crate::transport::ApiLimits {
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: config.limits.idle_timeout,
            max_connections_per_peer: config.limits.max_connections_per_peer,
        };
        let incoming = crate::transport::incoming(listener, tls, limits);

        let guard = crate::grpc_limits::GuardLayer::new(
            api.gate(config.limits.max_streams_per_peer),
            crate::policy_service::method_limits(),
        )
        .with_message_shares(
            crate::grpc_limits::MessageShares::new(config.limits.max_message_bytes_per_peer),
            |caller: &crate::transport::Caller| caller.spiffe_id.to_string(),
        );
        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<PolicyServiceServer<PolicyApi>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(warden_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartError::Reflection(e.to_string()))?;
        let admin_addr = match config.admin.listen {
            None => None,
            Some(at) => match crate::admin::bind(at).await {
                Ok(tcp) => {
                    let bound = tcp.local_addr().unwrap_or(at);
                    background.push(tokio::spawn(crate::admin::serve(
                        tcp,
                        crate::admin::AdminState {
                            insight: insight.clone(),
                            quarantines: api.quarantines(),
                            identity: identity.clone(),
                        },
                    )));
                    tracing::info!(addr = %bound, "admin listener (/metrics, /healthz, /readyz, /graph)");
                    Some(bound)
                }
                Err(source) if config.admin.explicit => {
                    return Err(StartError::Bind { addr: at, source });
                }
                Err(e) => {
                    // The default address, taken (another control plane on this host):
                    // run without it rather than not at all.
                    tracing::warn!(addr = %at, error = %e, "admin listener not started: the default address is taken; set [admin] listen");
                    None
                }
            },
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let router = crate::grpc_limits::server_builder()
            .layer(guard)
            .add_service(health)
            .add_service(reflection)
            .add_service(PolicyServiceServer::new(api));
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
            {
                tracing::error!(error = %e, "control-plane API stopped");
            }
        });
        tracing::info!(%addr, trust_domain = %config.trust_domain, store = %described, "control plane listening");
        Ok(Self {
            addr,
            identity,
            stop: Some(stop),
            server: Some(server),
            identity_task,
            extras: Vec::new(),
            insight,
            background,
            admin_addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// What the control plane learned from the sidecars' edge reports.
    pub fn insight(&self) -> &Arc<crate::insight::Insight> {
        &self.insight
    }

    pub fn identity(&self) -> &Arc<IdentityStore> {
        &self.identity
    }

    pub fn is_ready(&self) -> bool {
        self.identity.usable().is_some()
    }

    /// Stops accepting calls and waits for the server task to end.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
}

/// The store `[store]` names; with etcd, also the concrete store, where the CA lives too.
async fn open_store(
    config: &ControlPlaneConfig,
) -> Result<(Arc<dyn PolicyStore>, Option<Arc<EtcdStore>>), StartError> {
    match &config.store {
        StoreConfig::Embedded => {
            let store = RedbStore::open(&config.data_dir.join("policy.redb"))?;
            Ok((Arc::new(store), None))
        }
        StoreConfig::Etcd(etcd) => {
            let store = Arc::new(EtcdStore::connect(etcd).await?);
            tracing::info!(store = %store.describe(), prefix = %etcd.prefix, "policy store connected");
            Ok((store.clone(), Some(store)))
        }
    }
}

/// The built-in CA: in `data_dir/ca/` with the embedded store; in the store with etcd,
/// created by the first replica to start and loaded by every other.
async fn builtin_ca(
    config: &ControlPlaneConfig,
    etcd: Option<&EtcdStore>,
) -> Result<BuiltinCa, StartError> {
    let td = &config.trust_domain;
    let Some(etcd) = etcd else {
        return BuiltinCa::load_or_create(&config.data_dir, td)
            .map_err(|e| StartError::Ca(e.to_string()));
    };
    let stored = etcd
        .load_or_create_ca(td.as_str(), || crate::ca::new_root_pem(td))
        .await?
        .map_err(|e| StartError::Ca(e.to_string()))?;
    let at = std::path::PathBuf::from(format!("{} key ca/{td}", etcd.describe()));
    let ca = BuiltinCa::from_pem(stored.cert_pem, &stored.key_pem, td, &at, &at)
        .map_err(|e| StartError::Ca(e.to_string()))?;
    tracing::info!(trust_domain = %td, store = %etcd.describe(), created = stored.created, "built-in CA root from the shared store");
    Ok(ca)
}

async fn follow(source: Box<dyn SvidSource>, store: Arc<IdentityStore>) {
    let name = source.name();
    let mut handle = source.start();
    while let Some(event) = handle.events.recv().await {
        match event {
            SourceEvent::Updated(identity) => {
                tracing::info!(target: "warden::audit", event = AuditEvent::Rotation.as_str(), source = name, spiffe_id = %identity.spiffe_id(), "control-plane SVID loaded");
                store.set(identity);
            }
            SourceEvent::Rejected { reason } => {
                tracing::warn!(source = name, %reason, "new control-plane SVID rejected; keeping the previous one")
            }
            SourceEvent::Unavailable { reason } => {
                tracing::warn!(source = name, %reason, "SVID source unavailable")
            }
        }
    }
}
