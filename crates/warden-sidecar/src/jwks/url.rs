//! `jwks_url`: the key set fetched over HTTPS with hyper's HTTP/1.1 client on a rustls
//! connection that trusts only the `jwks_ca` certificates (TLS 1.3 or 1.2: identity
//! providers' endpoints do not all speak 1.3). One connection per fetch; no redirects
//! followed; the body is read up to [`MAX_JWKS_BYTES`]; the whole fetch is bounded by
//! [`FETCH_TIMEOUT`].
//!
//! When a fetch happens: at start; every `refresh`; after a failure, again after 1 s, 2 s,
//! ... up to `refresh`; and when a token names an unknown `kid` ([`Refetch::request`]), at
//! most once per [`MIN_REFETCH`] (a request inside that window is served when it ends).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use warden_jwt::{Jwks, MAX_JWKS_BYTES};

use super::{JwksSet, MIN_REFETCH, Reporter, kids};

/// The longest a fetch (connect, handshake, request, body) may take.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) enum SetupError {
    Ca(String),
    Url(String),
}

/// Where and how to fetch one issuer's keys.
pub(super) struct UrlSource {
    url: Uri,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    refresh: Duration,
}

impl UrlSource {
    pub(super) fn new(url: &str, ca: &Path, refresh: Duration) -> Result<Self, SetupError> {
        let url = check_https_url(url).map_err(SetupError::Url)?;
        let authority = url
            .authority()
            .ok_or_else(|| SetupError::Url("no host".into()))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| SetupError::Url(format!("{host:?} is not a DNS name or IP address")))?;
        Ok(Self {
            port: authority.port_u16().unwrap_or(443),
            host,
            server_name,
            connector: connector(ca).map_err(SetupError::Ca)?,
            url,
            refresh,
        })
    }
}

/// `https://host[:port][/path]`, nothing else (no user info, no fragment).
pub(crate) fn check_https_url(url: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
    if uri.scheme_str() != Some("https") {
        return Err("must be an https:// URL (keys fetched in the clear could be replaced)".into());
    }
    let Some(authority) = uri.authority() else {
        return Err("has no host".into());
    };
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return Err("must be https://host[:port]/path, without user info".into());
    }
    Ok(uri)
}

fn connector(ca: &Path) -> Result<TlsConnector, String> {
    let pem = std::fs::read(ca).map_err(|e| format!("cannot read: {e}"))?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("not PEM certificates: {e}"))?;
        // System bundles hold a few certificates rustls cannot use; skip those, as
        // rustls-native-certs does, rather than refuse the whole bundle.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("no usable CA certificate in the file".into());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

#[derive(Default)]
struct RefetchState {
    /// When the last unknown-kid fetch was started.
    last: Option<Instant>,
    /// A request arrived inside the window: fetch when it ends.
    deferred: bool,
}

/// The link between validations that met an unknown `kid` and the fetch task.
#[derive(Default)]
pub(crate) struct Refetch {
    state: Mutex<RefetchState>,
    /// Fetch now.
    kick: Notify,
    /// A deferred fetch was added: recompute when to wake.
    reschedule: Notify,
    /// Fetches completed (successful or not), for waiters.
    pub(super) done: watch::Sender<u64>,
}

impl Refetch {
    /// Asks for a fetch. True when it starts now; false when the rate limit defers it.
    pub(crate) fn request(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if st.last.is_none_or(|t| now >= t + MIN_REFETCH) {
            st.last = Some(now);
            st.deferred = false;
            drop(st);
            self.kick.notify_one();
            true
        } else {
            let first = !st.deferred;
            st.deferred = true;
            drop(st);
            if first {
                self.reschedule.notify_one();
            }
            false
        }
    }

    /// When a deferred request becomes due, if there is one.
    fn deferred_until(&self) -> Option<Instant> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.deferred
            .then(|| st.last.map_or_else(Instant::now, |t| t + MIN_REFETCH))
    }

    /// A fetch is starting anyway: a deferred request is answered by it.
    fn clear_deferred(&self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deferred = false;
    }

    /// Takes a due deferred request, marking it started.
    fn take_due(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if st.deferred && st.last.is_none_or(|t| now >= t + MIN_REFETCH) {
            st.deferred = false;
            st.last = Some(now);
            true
        } else {
            false
        }
    }
}

/// Fetches at start, then whenever due (see the module doc), until aborted.
pub(super) async fn run(
    source: UrlSource,
    keys: Arc<JwksSet>,
    refetch: Arc<Refetch>,
    report: Reporter,
) {
    let url = source.url.to_string();
    let mut backoff = Duration::from_secs(1);
    let mut next_periodic = Instant::now();
    loop {
        let wake = refetch
            .deferred_until()
            .map_or(next_periodic, |d| d.min(next_periodic));
        let due = tokio::select! {
            () = tokio::time::sleep_until(wake) => {
                Instant::now() >= next_periodic || refetch.take_due()
            }
            () = refetch.kick.notified() => true,
            () = refetch.reschedule.notified() => false,
        };
        if !due {
            continue;
        }
        refetch.clear_deferred();
        let fetched = tokio::time::timeout(FETCH_TIMEOUT, fetch(&source))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {FETCH_TIMEOUT:?}")));
        match fetched.map(|body| Jwks::from_json(&body)) {
            Ok(Ok(set)) => {
                report.loaded(&url, &kids(&set), set.skipped());
                keys.store(Arc::new(set));
                backoff = Duration::from_secs(1);
                next_periodic = Instant::now() + source.refresh;
            }
            Ok(Err(invalid)) => {
                report.invalid(&url, &invalid.to_string());
                next_periodic = Instant::now() + backoff.min(source.refresh);
                backoff = (backoff * 2).min(source.refresh);
            }
            Err(unavailable) => {
                report.unavailable(&url, &unavailable);
                next_periodic = Instant::now() + backoff.min(source.refresh);
                backoff = (backoff * 2).min(source.refresh);
            }
        }
        refetch.done.send_modify(|n| *n += 1);
    }
}

/// One GET of the JWKS: the body of a 200 answer.
async fn fetch(source: &UrlSource) -> Result<Vec<u8>, String> {
    let tcp = TcpStream::connect((source.host.as_str(), source.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let tls = source
        .connector
        .connect(source.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let conn = tokio::spawn(conn);
    let path = source
        .url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let authority = source
        .url
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let request = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(
            hyper::header::ACCEPT,
            "application/jwk-set+json, application/json",
        )
        .header(
            hyper::header::USER_AGENT,
            concat!("warden/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    }
    .await;
    conn.abort();
    result
}
