//! SVIDs from the SPIFFE Workload API (a SPIRE agent, or Warden's control plane), through
//! the `spiffe` crate's `X509Source`, which keeps the stream open, reconnects with backoff
//! and keeps the last SVID while the agent is unreachable.
//!
//! The source is built in the background: a sidecar whose agent is down at start-up comes up
//! not-ready and denying, rather than hanging (a lesson from ghostunnel).

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use spiffe::X509Source;
use spiffe::x509_source::SvidPicker;
use tokio::sync::mpsc;

use super::{SourceEvent, SourceHandle, SvidSource};
use crate::bundle::{Bundle, BundleSet};
use crate::identity::Identity;
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Obtains SVIDs over the Workload API.
#[derive(Debug, Clone)]
pub struct WorkloadApiSource {
    /// `unix:///path` or `tcp://ip:port`; `None` reads `SPIFFE_ENDPOINT_SOCKET`.
    pub endpoint: Option<String>,
    /// Pick this SVID when the API offers several; otherwise the first (the default).
    pub spiffe_id: Option<SpiffeId>,
}

#[derive(Debug)]
struct PickById(String);

impl SvidPicker for PickById {
    fn pick_svid(&self, svids: &[Arc<spiffe::X509Svid>]) -> Option<usize> {
        svids
            .iter()
            .position(|s| s.spiffe_id().to_string() == self.0)
    }
}

impl SvidSource for WorkloadApiSource {
    fn name(&self) -> &'static str {
        "workload-api"
    }

    fn start(self: Box<Self>) -> SourceHandle {
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(async move { self.run(tx).await });
        SourceHandle::new(rx, task)
    }
}

impl WorkloadApiSource {
    async fn run(self: Box<Self>, tx: mpsc::Sender<SourceEvent>) {
        let source = loop {
            let mut builder = X509Source::builder()
                .reconnect_backoff(Duration::from_millis(200), Duration::from_secs(10))
                .initial_sync_timeout(Duration::from_secs(5));
            if let Some(endpoint) = &self.endpoint {
                builder = builder.endpoint(endpoint);
            }
            if let Some(id) = &self.spiffe_id {
                builder = builder.picker(PickById(id.to_string()));
            }
            match builder.build().await {
                Ok(source) => break source,
                Err(e) => {
                    let event = SourceEvent::Unavailable {
                        reason: format!("workload API: {e}"),
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                    // Terminal errors (a malformed endpoint) repeat here at a slow pace;
                    // transient ones were already retried inside the builder.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let mut updates = source.updated();
        loop {
            let event = match convert(&source) {
                Ok(identity) => SourceEvent::Updated(Arc::new(identity)),
                Err(reason) => SourceEvent::Rejected { reason },
            };
            if tx.send(event).await.is_err() {
                break;
            }
            if updates.changed().await.is_err() {
                let _ = tx
                    .send(SourceEvent::Unavailable {
                        reason: "workload API source closed".to_owned(),
                    })
                    .await;
                break;
            }
        }
        source.shutdown().await;
    }
}

fn convert(source: &X509Source) -> Result<Identity, String> {
    let svid = source.svid().map_err(|e| format!("no SVID: {e}"))?;
    let bundles = source.bundle_set().map_err(|e| format!("no bundle: {e}"))?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        svid.private_key().as_bytes().to_vec(),
    ));
    let mut set = Vec::new();
    for (td, bundle) in bundles.iter() {
        let td = TrustDomain::new(td.as_str()).map_err(|e| format!("bundle {td}: {e}"))?;
        let certs = bundle
            .authorities()
            .iter()
            .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
            .collect();
        let bundle = Bundle::new(&td, certs).map_err(|e| e.to_string())?;
        set.push((td, bundle));
    }
    Identity::from_der(chain, key, BundleSet::new(set)).map_err(|e| e.to_string())
}
