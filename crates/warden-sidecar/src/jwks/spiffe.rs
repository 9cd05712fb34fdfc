//! `spiffe = true`: the JWT bundles of every trust domain the workload trusts, from the
//! Workload API's `FetchJWTBundles` stream on the endpoint the SVIDs come from. Each message
//! is the complete state (a trust domain missing from it is withdrawn); a bundle that does
//! not parse keeps that trust domain's previous keys. The stream is re-opened with backoff
//! (200 ms up to 10 s) whenever it ends; the keys in force stay meanwhile.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tonic::transport::Endpoint;
use warden_identity::{IdentityConfig, TrustDomain};
use warden_jwt::{Jwks, JwtBundles};
use warden_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use warden_proto::workload::{JwtBundlesRequest, JwtBundlesResponse};

use super::{Reporter, kids};

const ENV: &str = "SPIFFE_ENDPOINT_SOCKET";
const SOURCE: &str = "workload-api";

/// The Workload API address as tonic takes it (`unix:///path` or `http://ip:port`).
pub(super) fn endpoint(identity: &IdentityConfig) -> Result<String, String> {
    let configured = match identity {
        IdentityConfig::WorkloadApi { endpoint, .. } => endpoint.clone(),
        _ => return Err("spiffe = true needs [identity] source = \"workload-api\"".into()),
    };
    let address = match configured {
        Some(a) => a,
        None => std::env::var(ENV).map_err(|_| {
            format!("spiffe = true: no Workload API endpoint ([identity] endpoint or {ENV})")
        })?,
    };
    if let Some(path) = address.strip_prefix("unix://") {
        if !path.starts_with('/') {
            return Err(format!(
                "Workload API endpoint {address:?}: unix:// needs an absolute path (unix:///path)"
            ));
        }
        return Ok(address);
    }
    if let Some(path) = address.strip_prefix("unix:") {
        return Ok(format!("unix://{path}"));
    }
    if let Some(addr) = address.strip_prefix("tcp://") {
        return Ok(format!("http://{addr}"));
    }
    Err(format!(
        "Workload API endpoint {address:?}: expected unix:///path or tcp://ip:port"
    ))
}

pub(super) async fn run(
    endpoint: String,
    bundles: Arc<ArcSwap<JwtBundles>>,
    reporters: Vec<Reporter>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match stream(&endpoint, &bundles, &reporters).await {
            Ok(()) => {
                backoff = Duration::from_millis(200);
                for r in &reporters {
                    r.unavailable(SOURCE, "the JWT bundle stream ended; reconnecting");
                }
            }
            Err((reason, delivered)) => {
                if delivered {
                    backoff = Duration::from_millis(200);
                }
                for r in &reporters {
                    r.unavailable(SOURCE, &reason);
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One stream, until it ends. The error says whether any message arrived first.
async fn stream(
    endpoint: &str,
    bundles: &ArcSwap<JwtBundles>,
    reporters: &[Reporter],
) -> Result<(), (String, bool)> {
    let channel = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| (format!("Workload API endpoint: {e}"), false))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| {
            (
                format!("Workload API: {}", warden_config::error_chain(&e)),
                false,
            )
        })?;
    let mut client = SpiffeWorkloadApiClient::new(channel);
    let mut request = tonic::Request::new(JwtBundlesRequest {});
    request.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    let mut messages = client
        .fetch_jwt_bundles(request)
        .await
        .map_err(|s| (format!("FetchJWTBundles: {}", s.message()), false))?
        .into_inner();
    let mut delivered = false;
    loop {
        match messages.message().await {
            Ok(Some(msg)) => {
                delivered = true;
                apply(msg, bundles, reporters);
            }
            Ok(None) => return Ok(()),
            Err(s) => {
                return Err((
                    format!("FetchJWTBundles: {:?}: {}", s.code(), s.message()),
                    delivered,
                ));
            }
        }
    }
}

/// Installs one message: the complete set of trust domains.
fn apply(msg: JwtBundlesResponse, bundles: &ArcSwap<JwtBundles>, reporters: &[Reporter]) {
    let current = bundles.load();
    let mut next = JwtBundles::new();
    let mut problems = Vec::new();
    let mut loaded = Vec::new();
    for (id, jwks) in msg.bundles {
        let td = match TrustDomain::new(&id) {
            Ok(td) => td,
            Err(e) => {
                problems.push(format!(
                    "bundle key {:?}: {e}",
                    id.chars().take(64).collect::<String>()
                ));
                continue;
            }
        };
        match Jwks::from_spiffe_bundle(&jwks) {
            Ok(set) => {
                loaded.extend(kids(&set).into_iter().map(|k| format!("{td}/{k}")));
                next.insert(td, set);
            }
            Err(e) => {
                problems.push(format!("{td}: {e}"));
                if let Some(previous) = current.get(td.as_str()) {
                    next.insert(td, previous.clone());
                }
            }
        }
    }
    bundles.store(Arc::new(next));
    for r in reporters {
        if problems.is_empty() {
            r.loaded(SOURCE, &loaded, &[]);
        } else {
            r.invalid(SOURCE, &problems.join("; "));
        }
    }
}
