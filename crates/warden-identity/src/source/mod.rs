//! Where the workload's SVID comes from. Every source delivers complete, validated
//! [`Identity`] values (SVID + bundles) as [`SourceEvent`]s; the consumer swaps them into an
//! [`IdentityStore`](crate::IdentityStore). A source never delivers a half-updated identity:
//! invalid material is reported as [`SourceEvent::Rejected`] and the last good one stays.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::identity::Identity;

mod files;
mod workload_api;

pub use files::FilesSource;
pub use workload_api::WorkloadApiSource;

/// Which source a config file's `[identity]` table asks for (`source = "workload-api"` or
/// `"files"`); parsed by `warden-config`, started with [`source_for`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityConfig {
    WorkloadApi {
        /// `unix:///path` or `tcp://ip:port`; `None`: `$SPIFFE_ENDPOINT_SOCKET`.
        endpoint: Option<String>,
        /// Which SVID to use when several are offered; `None`: the first (the default).
        spiffe_id: Option<crate::SpiffeId>,
    },
    Files {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        bundle: std::path::PathBuf,
    },
}

/// The SVID source a config asks for.
pub fn source_for(config: &IdentityConfig) -> Box<dyn SvidSource> {
    match config {
        IdentityConfig::WorkloadApi {
            endpoint,
            spiffe_id,
        } => Box::new(WorkloadApiSource {
            endpoint: endpoint.clone(),
            spiffe_id: spiffe_id.clone(),
        }),
        IdentityConfig::Files { cert, key, bundle } => {
            Box::new(FilesSource::new(cert.clone(), key.clone(), bundle.clone()))
        }
    }
}

/// What a source reports.
#[derive(Debug)]
pub enum SourceEvent {
    /// A new identity, already validated; it replaces the current one.
    Updated(Arc<Identity>),
    /// New material arrived but is not usable; the previous identity is kept.
    Rejected { reason: String },
    /// The source cannot be reached right now (e.g. the Workload API is down).
    Unavailable { reason: String },
}

/// A running source: its events, and its task (aborted on drop).
#[derive(Debug)]
pub struct SourceHandle {
    pub events: mpsc::Receiver<SourceEvent>,
    task: JoinHandle<()>,
}

impl SourceHandle {
    /// For sources implemented outside this crate (the control plane's built-in CA): the
    /// task is aborted when the handle is dropped.
    pub fn new(events: mpsc::Receiver<SourceEvent>, task: JoinHandle<()>) -> Self {
        Self { events, task }
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One way of obtaining SVIDs. `start` must not block: a source that cannot reach its
/// backend keeps trying in the background (the sidecar stays not-ready and denies meanwhile).
pub trait SvidSource: Send + 'static {
    fn name(&self) -> &'static str;
    fn start(self: Box<Self>) -> SourceHandle;
}

/// A fixed identity, delivered once. For tests and for processes handed an SVID directly.
#[derive(Debug)]
pub struct StaticSource(pub Arc<Identity>);

impl SvidSource for StaticSource {
    fn name(&self) -> &'static str {
        "static"
    }

    fn start(self: Box<Self>) -> SourceHandle {
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            // The receiver may already be gone; nothing to do then.
            let _ = tx.send(SourceEvent::Updated(self.0)).await;
        });
        SourceHandle::new(rx, task)
    }
}
