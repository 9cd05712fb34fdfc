//! `warden inject --serve`: the mutating admission webhook. The API server POSTs an
//! AdmissionReview of each pod created in a namespace labelled `warden.dev/inject=enabled`
//! to `/inject`; the answer patches the pod into exactly what `warden inject` makes of it
//! ([`review`] decides the answer, [`patch`] writes the JSON Patch).
//!
//! It must never crash or hang on a request: bodies are capped ([`MAX_BODY`]) and read
//! under a deadline, handshakes and connections are bounded in time and number, and every
//! malformed review is an answer ([`review::Reply::Bad`]). The serving certificate comes
//! from `tls.crt`/`tls.key` in `--tls-dir` (e.g. a cert-manager Secret) and is re-read when
//! the files change, so a renewal needs no restart.

mod patch;
mod review;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use super::Options;

/// An AdmissionReview of one pod is a few KiB; the API server's own limit on an object is
/// 1.5 MiB, but no pod spec that large is worth injecting.
pub const MAX_BODY: usize = 1024 * 1024;
const MAX_CONNECTIONS: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The API server keeps connections to a webhook open and reuses them; this bounds how
/// long one client can hold a slot.
const CONN_LIFETIME: Duration = Duration::from_secs(300);
/// How often `tls.crt`/`tls.key` are compared with what is being served. Kubernetes
/// updates a mounted Secret by swapping a symlink, which file watches miss; reading two
/// small files is cheap.
const RELOAD_EVERY: Duration = Duration::from_secs(5);

pub async fn serve(listen: SocketAddr, tls_dir: &Path, opts: Options) -> anyhow::Result<()> {
    let (files, key) = load(tls_dir).map_err(|e| anyhow::anyhow!("--tls-dir: {e}"))?;
    let resolver = Arc::new(Reloading {
        current: RwLock::new(key),
    });
    let mut config = rustls::ServerConfig::builder_with_provider(warden_identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("--listen {listen}"))?;
    let addr = listener.local_addr().unwrap_or(listen);
    // Tests and scripts read this line to find a port picked with :0.
    eprintln!("listening on {addr}");
    tracing::info!(%addr, tls_dir = %tls_dir.display(), "admission webhook serving POST /inject");
    let reload = tokio::spawn(reload_loop(tls_dir.to_owned(), files, resolver));

    let opts = Arc::new(opts);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let shutdown = crate::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // full: the API server retries on another connection
        };
        let (acceptor, opts) = (acceptor.clone(), opts.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(move |req| {
                let opts = opts.clone();
                async move { Ok::<_, Infallible>(handle(req, &opts).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(tls), service);
            let _ = tokio::time::timeout(CONN_LIFETIME, conn).await;
        });
    }
    reload.abort();
    Ok(())
}

async fn handle(req: Request<Incoming>, opts: &Options) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/inject") => {}
        (_, "/inject") => return error(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview"),
        _ => return error(StatusCode::NOT_FOUND, "not found"),
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(BODY_TIMEOUT, body).await {
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the body did not arrive in time",
            );
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
        Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    match review::answer(&body, opts) {
        review::Reply::Review(answer) => {
            let response = &answer["response"];
            if response["allowed"] == false {
                tracing::info!(
                    uid = response["uid"].as_str().unwrap_or(""),
                    reason = response["status"]["message"].as_str().unwrap_or(""),
                    "pod refused"
                );
            }
            with_type(StatusCode::OK, "application/json", answer.to_string())
        }
        review::Reply::Bad(code, message) => {
            // Debug only: anyone who reaches the port can send these.
            tracing::debug!(code, %message, "malformed admission request");
            error(
                StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
                &message,
            )
        }
    }
}

fn too_large() -> Response<Full<Bytes>> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is over {MAX_BODY} bytes"),
    )
}

fn with_type(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body.to_owned())
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    with_type(status, "application/json", body)
}

/// The serving certificate, swapped in place when the files change.
#[derive(Debug)]
struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        Some(current.clone())
    }
}

/// The bytes of `tls.crt` and `tls.key` as last read.
type Files = (Vec<u8>, Vec<u8>);

fn read_files(dir: &Path) -> Result<Files, String> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    Ok((read("tls.crt")?, read("tls.key")?))
}

fn load(dir: &Path) -> Result<(Files, Arc<CertifiedKey>), String> {
    let files = read_files(dir)?;
    let key = certified_key(&files).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok((files, key))
}

fn certified_key((crt, key): &Files) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(crt)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls.crt is not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    CertifiedKey::from_der(chain, key, &warden_identity::provider())
        .map(Arc::new)
        .map_err(|e| format!("tls.crt and tls.key do not make a serving certificate: {e}"))
}

async fn reload_loop(dir: PathBuf, mut served: Files, resolver: Arc<Reloading>) {
    let mut rejected: Option<Files> = None;
    let mut tick = tokio::time::interval(RELOAD_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(files) = read_files(&dir) else {
            continue; // mid-swap, or gone: keep serving what we have
        };
        if files == served || rejected.as_ref() == Some(&files) {
            continue;
        }
        match certified_key(&files) {
            Ok(key) => {
                *resolver.current.write().unwrap_or_else(|e| e.into_inner()) = key;
                served = files;
                rejected = None;
                tracing::info!(dir = %dir.display(), "serving certificate reloaded");
            }
            Err(e) => {
                // Often a half-written pair: warn once per content, keep the old one.
                tracing::warn!(dir = %dir.display(), error = %e, "new serving certificate not used");
                rejected = Some(files);
            }
        }
    }
}
