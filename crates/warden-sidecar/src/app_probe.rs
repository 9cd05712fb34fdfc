//! `[[app_probe]]`: the kubelet's probes of the app, answered by the sidecar (as Istio's
//! `/app-health`). Under traffic capture every inbound connection to the app's ports goes
//! to the sidecar's mTLS listener, so a kubelet's plaintext probe would fail there.
//! `warden inject` therefore points such probes at the metrics listener, path
//! `/app-health/<container>/<livez|readyz|startupz>`, and this module runs the original
//! check against the app over loopback (never captured) and answers with its outcome.
//!
//! It must never become a way around the mesh: `forward` is a loopback address only, the
//! request to the app is built from the config alone (nothing of the kubelet's request is
//! passed on: no headers, no body, no query), and nothing of the app's answer but its
//! status code is passed back. Concurrent requests for one probe share one check, so a
//! flood of the (pod-reachable) metrics listener makes at most one connection to the app
//! per probe at a time.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use warden_config::{ConfigError, Errors};

/// Every probe path starts with this; it keeps probes apart from `/metrics`, `/healthz`,
/// `/readyz` and the debug views.
pub const PATH_PREFIX: &str = "/app-health/";
/// Without `timeout`: the kubelet's default probe timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// The admin server closes a connection after 60 s, so a longer check could not answer.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The status line of the app's answer must arrive within this many bytes.
const MAX_STATUS_LINE: usize = 1024;

/// One `[[app_probe]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAppProbe {
    path: String,
    forward: String,
    http_path: Option<String>,
    timeout: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// A validated `[[app_probe]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppProbeConfig {
    /// Served on the admin and metrics listeners; starts with [`PATH_PREFIX`].
    pub path: String,
    /// The app, on a loopback address.
    pub forward: SocketAddr,
    /// `Some`: an HTTP GET of this path (and query); `None`: a TCP connect check.
    pub http_path: Option<String>,
    /// Connect and answer within this, or the probe fails (503).
    pub timeout: Duration,
    /// Sent with an HTTP check (e.g. `Host`); nothing else of the kubelet's request is.
    pub headers: Vec<(String, String)>,
}

/// Validates every `[[app_probe]]`; errors name `app_probe[i].<key>`. `metrics_listen`
/// tells whether the kubelet can reach the probes at all.
pub(crate) fn validate(
    at: &Errors<'_>,
    raw: Vec<RawAppProbe>,
    has_metrics_listen: bool,
) -> Result<Vec<AppProbeConfig>, ConfigError> {
    let mut probes: Vec<AppProbeConfig> = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let k = |f: &str| format!("app_probe[{i}].{f}");
        if !has_metrics_listen {
            return Err(at.error(
                k("path"),
                "needs [admin] metrics_listen: the kubelet probes the pod IP, and the admin \
                 listener stays on loopback",
            ));
        }
        check_path(&p.path).map_err(|problem| at.error(k("path"), problem))?;
        if probes.iter().any(|q| q.path == p.path) {
            return Err(at.error(
                k("path"),
                format!("{:?} is the path of another app_probe", p.path),
            ));
        }
        let forward: SocketAddr = p.forward.parse().map_err(|_| {
            at.error(
                k("forward"),
                format!(
                    "{:?} is not an IP address with a port, like \"127.0.0.1:8080\"",
                    p.forward
                ),
            )
        })?;
        if !forward.ip().is_loopback() {
            return Err(at.error(
                k("forward"),
                format!(
                    "{forward} is not a loopback address: the sidecar's own connections are not \
                     captured, so a probe may only reach the app in its own pod"
                ),
            ));
        }
        if let Some(path) = &p.http_path {
            check_request_target(path).map_err(|problem| at.error(k("http_path"), problem))?;
        }
        let timeout = at.duration(
            &k("timeout"),
            p.timeout.as_deref(),
            DEFAULT_TIMEOUT,
            Duration::from_millis(1),
        )?;
        if timeout > MAX_TIMEOUT {
            return Err(at.error(
                k("timeout"),
                "must be at most 60s (the admin server closes a connection after 60 s)",
            ));
        }
        if p.http_path.is_none() && !p.headers.is_empty() {
            return Err(at.error(
                k("headers"),
                "only an HTTP check (with http_path) sends headers",
            ));
        }
        let mut headers = Vec::with_capacity(p.headers.len());
        for (name, value) in p.headers {
            check_header(&name, &value)
                .map_err(|problem| at.error(format!("app_probe[{i}].headers.{name}"), problem))?;
            headers.push((name, value));
        }
        probes.push(AppProbeConfig {
            path: p.path,
            forward,
            http_path: p.http_path,
            timeout,
            headers,
        });
    }
    Ok(probes)
}

fn check_path(path: &str) -> Result<(), String> {
    let Some(rest) = path.strip_prefix(PATH_PREFIX) else {
        return Err(format!("{path:?} must start with {PATH_PREFIX:?}"));
    };
    let ok = !rest.is_empty()
        && rest.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{path:?}: after {PATH_PREFIX:?} only segments of letters, digits, '-', '_' and '.' are allowed"
        ))
    }
}

/// The path (and query) of the request line: visible ASCII only, so nothing can end the
/// request line early or smuggle a header into it.
fn check_request_target(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with '/'"));
    }
    if path.len() > 2048 || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "{path:?} must be at most 2048 visible ASCII characters (percent-encode the rest)"
        ));
    }
    Ok(())
}

fn check_header(name: &str, value: &str) -> Result<(), String> {
    let token = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(format!("{name:?} is not an HTTP header name"));
    }
    // The sidecar frames the request itself.
    if [
        "connection",
        "content-length",
        "transfer-encoding",
        "upgrade",
        "te",
    ]
    .contains(&name.to_ascii_lowercase().as_str())
    {
        return Err(format!(
            "{name:?} is set by the sidecar and cannot be configured"
        ));
    }
    if value.len() > 4096
        || !value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return Err(format!(
            "the value of {name:?} must be at most 4096 printable ASCII characters"
        ));
    }
    Ok(())
}

/// What one check found.
#[derive(Debug, Clone)]
struct Outcome {
    /// The answer's status: the app's own status code for HTTP, 200 or 503 for TCP.
    status: StatusCode,
    detail: String,
    finished: Instant,
}

/// One probe and the last outcome of its check.
struct Probe {
    config: AppProbeConfig,
    /// Held while a check runs; concurrent requests wait here and take its outcome.
    last: tokio::sync::Mutex<Option<Outcome>>,
}

/// The app probes of a sidecar, by path.
#[derive(Default)]
pub(crate) struct AppProbes {
    by_path: HashMap<String, Arc<Probe>>,
}

/// A probe request found in [`AppProbes::find`], answered by [`ProbeCall::answer`].
pub(crate) struct ProbeCall(Arc<Probe>);

impl AppProbes {
    pub(crate) fn new(configs: &[AppProbeConfig]) -> Arc<Self> {
        Arc::new(Self {
            by_path: configs
                .iter()
                .map(|c| {
                    let probe = Probe {
                        config: c.clone(),
                        last: tokio::sync::Mutex::new(None),
                    };
                    (c.path.clone(), Arc::new(probe))
                })
                .collect(),
        })
    }

    /// The probe served at `path`, if any. An unknown `/app-health/` path is the admin
    /// server's ordinary 404.
    pub(crate) fn find(&self, path: &str) -> Option<ProbeCall> {
        self.by_path.get(path).cloned().map(ProbeCall)
    }
}

impl ProbeCall {
    /// Runs the check (or takes the outcome of one that finished after this request
    /// arrived) and answers with its status.
    pub(crate) async fn answer(self) -> Response<Full<Bytes>> {
        let arrived = Instant::now();
        let mut last = self.0.last.lock().await;
        let outcome = match &*last {
            Some(o) if o.finished >= arrived => o.clone(),
            _ => {
                let o = check(&self.0.config).await;
                *last = Some(o.clone());
                o
            }
        };
        drop(last);
        let mut resp = Response::new(Full::new(Bytes::from(outcome.detail + "\n")));
        *resp.status_mut() = outcome.status;
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

async fn check(config: &AppProbeConfig) -> Outcome {
    let result = tokio::time::timeout(config.timeout, attempt(config)).await;
    let (status, detail) = match result {
        Ok(Ok(status)) => (status, format!("app answered {}", status.as_u16())),
        Ok(Err(problem)) => (StatusCode::SERVICE_UNAVAILABLE, problem),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no answer from {} within {}",
                config.forward,
                humantime::format_duration(config.timeout)
            ),
        ),
    };
    if status.is_client_error() || status.is_server_error() {
        tracing::debug!(probe = %config.path, %detail, "app probe failed");
    }
    Outcome {
        status,
        detail,
        finished: Instant::now(),
    }
}

async fn attempt(config: &AppProbeConfig) -> Result<StatusCode, String> {
    let mut stream = TcpStream::connect(config.forward)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", config.forward))?;
    let Some(path) = &config.http_path else {
        return Ok(StatusCode::OK);
    };
    let mut request = format!("GET {path} HTTP/1.1\r\n");
    if !config
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: {}\r\n", config.forward));
    }
    for (name, value) in &config.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("User-Agent: warden-app-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("cannot send the request to {}: {e}", config.forward))?;
    let line = read_status_line(&mut stream)
        .await
        .map_err(|e| format!("{}: {e}", config.forward))?;
    parse_status_line(&line).ok_or_else(|| {
        format!(
            "{}: not an HTTP/1 status line: {:?}",
            config.forward,
            String::from_utf8_lossy(&line[..line.len().min(64)])
        )
    })
}

async fn read_status_line(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_STATUS_LINE {
            return Err(format!(
                "no status line in the first {MAX_STATUS_LINE} bytes"
            ));
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            return Err("closed the connection before answering".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `HTTP/1.x NNN reason`: the status when it is a final one (200-599).
fn parse_status_line(line: &[u8]) -> Option<StatusCode> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.splitn(3, ' ');
    let version = parts.next()?;
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    if !(200..600).contains(&code) {
        return None;
    }
    StatusCode::from_u16(code).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(extra: &str) -> Result<Vec<AppProbeConfig>, ConfigError> {
        #[derive(Deserialize)]
        struct Doc {
            app_probe: Vec<RawAppProbe>,
        }
        let doc: Doc = warden_config::parse_toml("f", &format!("[[app_probe]]\n{extra}"))?;
        validate(&Errors { file: "f" }, doc.app_probe, true)
    }

    #[test]
    fn a_valid_probe_and_its_defaults() {
        let p = parsed("path = \"/app-health/web/readyz\"\nforward = \"127.0.0.1:8080\"\nhttp_path = \"/ready?full=1\"\nheaders = { Host = \"web.local\" }\n")
            .expect("valid");
        assert_eq!(p[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(p[0].http_path.as_deref(), Some("/ready?full=1"));
        assert_eq!(p[0].headers, [("Host".to_owned(), "web.local".to_owned())]);
        let p = parsed(
            "path = \"/app-health/web/livez\"\nforward = \"[::1]:8080\"\ntimeout = \"3s\"\n",
        )
        .expect("valid");
        assert_eq!(p[0].http_path, None);
        assert_eq!(p[0].timeout, Duration::from_secs(3));
    }

    #[test]
    fn errors_name_the_key() {
        for (extra, key) in [
            (
                "path = \"/metrics\"\nforward = \"127.0.0.1:1\"\n",
                "app_probe[0].path",
            ),
            (
                "path = \"/app-health/../x\"\nforward = \"127.0.0.1:1\"\n",
                "app_probe[0].path",
            ),
            (
                "path = \"/app-health/a\"\nforward = \"10.0.0.1:80\"\n",
                "app_probe[0].forward",
            ),
            (
                "path = \"/app-health/a\"\nforward = \"localhost:80\"\n",
                "app_probe[0].forward",
            ),
            (
                "path = \"/app-health/a\"\nforward = \"127.0.0.1:1\"\nhttp_path = \"x\"\n",
                "app_probe[0].http_path",
            ),
            (
                "path = \"/app-health/a\"\nforward = \"127.0.0.1:1\"\nhttp_path = \"/a b\"\n",
                "app_probe[0].http_path",
            ),
            (
                "path = \"/app-health/a\"\nforward = \"127.0.0.1:1\"\nhttp_path = \"/\\r\\nX: y\"\n",
                "app_probe[0].http_path",
            ),
            (
                "path = \"/app-health/a\"\nforward = \"127.0.0.1:1\"\ntimeout = \"2m\"\n",
                "app_probe[0].timeout",
            ),
            (
                "path = \"/app-health/a\"\nforward = \"127.0.0.1:1\"\nheaders = { A = \"b\" }\n",
                "app_probe[0].headers",
            ),
            (
                "path = \"/app-health/a\"\nforward = \"127.0.0.1:1\"\nhttp_path = \"/\"\nheaders = { \"Content-Length\" = \"1\" }\n",
                "app_probe[0].headers.Content-Length",
            ),
            (
                "path = \"/app-health/a\"\nforward = \"127.0.0.1:1\"\nhttp_path = \"/\"\nheaders = { A = \"x\\ny\" }\n",
                "app_probe[0].headers.A",
            ),
        ] {
            let e = parsed(extra).expect_err(extra);
            assert_eq!(e.key, key, "{extra}: {e}");
        }
        let e = parsed("path = \"/app-health/a\"\nforward = \"127.0.0.1:1\"\n[[app_probe]]\npath = \"/app-health/a\"\nforward = \"127.0.0.1:2\"\n")
            .expect_err("duplicate");
        assert_eq!(e.key, "app_probe[1].path", "{e}");
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status_line(b"HTTP/1.1 204 No Content"),
            Some(StatusCode::NO_CONTENT)
        );
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503"),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        for bad in [
            &b"HTTP/1.1 100 Continue"[..],
            b"HTTP/2 200",
            b"HTTP/1.1 2000 x",
            b"garbage",
            b"",
        ] {
            assert_eq!(
                parse_status_line(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
