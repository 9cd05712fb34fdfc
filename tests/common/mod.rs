//! Shared helpers for the end-to-end tests: test PKI, a local app that counts its accepts,
//! in-process sidecars on 127.0.0.1 with OS-picked ports, raw TLS clients, and waiting on a
//! condition with a deadline (never a fixed sleep).
#![allow(dead_code)]

pub mod control;
pub mod pki;
pub mod workload_api;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warden_identity::{Identity, StaticSource, SvidSource};
use warden_sidecar::{Sidecar, SidecarConfig};

pub const TD: &str = "example.org";

pub fn id(path: &str) -> String {
    format!("spiffe://{TD}{path}")
}

/// Polls `cond` until it holds or `within` passes; panics with `what` on timeout.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, within: Duration, mut cond: F) {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A local app: echoes everything back until EOF, then closes; counts accepted connections.
pub struct EchoApp {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
}

impl EchoApp {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let counter = accepts.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Self { addr, accepts }
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// A local app that reads until EOF and only then answers with the byte count: proves the
/// client's half-close travelled through both sidecars and the answer came back after it.
pub async fn start_count_app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if s.read_to_end(&mut buf).await.is_ok() {
                    let _ = s
                        .write_all(format!("got {} bytes", buf.len()).as_bytes())
                        .await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

/// Starts a sidecar from TOML (so the config parser is exercised too) with a fixed identity.
pub async fn sidecar(toml: &str, identity: Arc<Identity>) -> Sidecar {
    sidecar_with_source(toml, Box::new(StaticSource(identity))).await
}

pub async fn sidecar_with_source(toml: &str, source: Box<dyn SvidSource>) -> Sidecar {
    let mut config = SidecarConfig::from_toml("test.toml", toml).expect("valid test config");
    // Tests run many sidecars in one process: a config that leaves the admin server on its
    // default port gets an OS-picked one instead (read it back with `admin_addr()`).
    if config.admin_listen.to_string() == warden_sidecar::config::DEFAULT_ADMIN_LISTEN {
        config.admin_listen = "127.0.0.1:0".parse().expect("addr");
    }
    // Audit records are still built and written, but into /dev/null unless a test reads
    // them (it sets `[audit] path`): thousands of JSON lines on stderr would bury failures.
    if config.audit_path.is_none() {
        config.audit_path = Some("/dev/null".into());
    }
    let sidecar = Sidecar::start(&config, source)
        .await
        .expect("sidecar starts");
    wait_until("sidecar has an SVID", Duration::from_secs(10), || {
        sidecar.is_ready()
    })
    .await;
    sidecar
}

/// The first lines of every in-process sidecar's config: the trust domain and an
/// `[identity]` whose paths are never read, because the test hands `Sidecar::start` its own
/// SVID source.
pub fn injected_identity() -> String {
    format!(
        r#"trust_domain = "{TD}"
[identity]
source = "files"
cert = "unused"
key = "unused"
bundle = "unused""#
    )
}

/// Config of a sidecar with one inbound listener `http` forwarding to `forward`.
pub fn inbound_config(forward: SocketAddr, allow: &[String]) -> String {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    format!(
        r#"
{identity}
[[inbound]]
name = "http"
listen = "127.0.0.1:0"
forward = "{forward}"
allow = [{}]
"#,
        allow.join(", "),
        identity = injected_identity(),
    )
}

/// Config of a sidecar with one outbound listener `svc` to `connect`, expecting `server_id`.
pub fn outbound_config(connect: SocketAddr, server_id: &str) -> String {
    format!(
        r#"
{identity}
[[outbound]]
name = "svc"
listen = "127.0.0.1:0"
connect = "{connect}"
server_id = "{server_id}"
"#,
        identity = injected_identity(),
    )
}

/// A raw rustls client config presenting `chain`/`key` (or no certificate) and accepting any
/// server certificate: it plays an attacker or a misconfigured peer against inbound.
pub fn raw_client_config(
    client: Option<(
        &[CertificateDer<'static>],
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.to_vec(), key)
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Connects with `config`, sends `msg`, and returns what comes back until EOF/error.
/// With TLS 1.3 a client's handshake can "succeed" before the server has judged the client
/// certificate, so a refusal may show only on the first read: callers check the bytes.
pub async fn tls_exchange(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    msg: &[u8],
) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("peer.invalid").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(msg)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = vec![0u8; msg.len()];
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut out)).await;
    match read {
        Ok(Ok(_)) => Ok(out),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("read timed out".into()),
    }
}

#[derive(Debug)]
struct AcceptAnyServer;

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Sends `data` through `addr` (an outbound listener), half-closes, and reads the answer.
pub async fn plain_exchange(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(data).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    Ok(out)
}
