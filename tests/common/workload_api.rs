//! The built-in CA's Workload API for tests: an in-process server on Unix sockets in a temp
//! dir, a raw client (the generated tonic client) for calls the `spiffe` crate would not make,
//! and a TLS probe that reports which certificate a listener presents.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};
use warden_control::WorkloadRegistration;
use warden_control::ca::{BuiltinCa, IssuedSvid, JwtAuthority};
use warden_control::workload_api::{WorkloadApiHandle, serve_workload_api};
use warden_identity::{SpiffeId, TrustDomain};
use warden_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;

use super::{TD, id};

/// A CA in `<dir>/data` and the directory sockets go in.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    pub ca: Arc<BuiltinCa>,
}

impl TestCa {
    pub fn new() -> Self {
        Self::new_in_domain(TD)
    }

    pub fn new_in_domain(trust_domain: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Self::load_in(dir.path(), trust_domain);
        Self { dir, ca }
    }

    /// Loads (or creates) the CA of `dir` again, as a restarted control plane would.
    pub fn load(dir: &Path) -> Arc<BuiltinCa> {
        Self::load_in(dir, TD)
    }

    fn load_in(dir: &Path, trust_domain: &str) -> Arc<BuiltinCa> {
        let td = TrustDomain::new(trust_domain).expect("td");
        Arc::new(BuiltinCa::load_or_create(&dir.join("data"), &td).expect("CA"))
    }

    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        self.ca.bundle()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join("agents").join(format!("{name}.sock"))
    }

    pub fn svid(&self, path: &str) -> IssuedSvid {
        self.ca
            .issue(
                &SpiffeId::parse(&id(path)).expect("id"),
                Duration::from_secs(3600),
            )
            .expect("issue")
    }
}

pub fn registration(socket: &Path, path: &str, uid: Option<u32>) -> WorkloadRegistration {
    WorkloadRegistration {
        socket: socket.to_owned(),
        spiffe_id: SpiffeId::parse(&id(path)).expect("id"),
        uid,
    }
}

pub async fn serve(
    ca: &Arc<BuiltinCa>,
    registrations: Vec<WorkloadRegistration>,
    ttl: Duration,
) -> WorkloadApiHandle {
    let idle = warden_control::ControlLimits::default().idle_timeout;
    serve_with_idle_timeout(ca, registrations, ttl, idle).await
}

/// [`serve`], closing connections that have had no call for `idle`.
pub async fn serve_with_idle_timeout(
    ca: &Arc<BuiltinCa>,
    registrations: Vec<WorkloadRegistration>,
    ttl: Duration,
    idle: Duration,
) -> WorkloadApiHandle {
    // A control plane keeps its JWT key in data_dir; here a fresh one will do (the key
    // lives in memory once loaded, so its directory can go at once).
    let dir = tempfile::tempdir().expect("tempdir");
    let jwt = JwtAuthority::load_or_create(dir.path(), ca.trust_domain()).expect("JWT key");
    serve_workload_api(
        ca.clone(),
        Arc::new(jwt),
        registrations,
        ttl,
        &warden_control::ControlLimits {
            idle_timeout: idle,
            ..Default::default()
        },
        std::future::pending(),
    )
    .await
    .expect("Workload API starts")
}

/// The `unix:///abs/path` form clients take.
pub fn endpoint(socket: &Path) -> String {
    format!("unix://{}", socket.display())
}

/// Our own uid, read from a file we just created (no libc needed).
pub fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let f = tempfile::NamedTempFile::new().expect("temp file");
    f.as_file().metadata().expect("stat").uid()
}

pub async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    let channel = Endpoint::from_shared(endpoint(socket))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the Workload API socket");
    SpiffeWorkloadApiClient::new(channel)
}

/// A request carrying the Workload API's security header.
pub fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "workload.spiffe.io",
        tonic::metadata::MetadataValue::from_static("true"),
    );
    request
}

/// A client config presenting `svid`, accepting any server certificate.
pub fn client_config(svid: &IssuedSvid) -> Arc<rustls::ClientConfig> {
    super::raw_client_config(
        Some((&svid.chain, svid.private_key_der())),
        &[&rustls::version::TLS13],
    )
}

/// Completes a TLS handshake with `addr` and returns the leaf certificate it presented.
pub async fn presented_leaf(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<CertificateDer<'static>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("peer.invalid").expect("name");
    let tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_owned())?
    .map_err(|e| format!("handshake: {e}"))?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| "no server certificate".to_owned())
}
