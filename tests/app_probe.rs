//! `[[app_probe]]`: under traffic capture the kubelet's probes of the app go to the sidecar's
//! metrics listener (`/app-health/<container>/<kind>`), and the sidecar checks the app over
//! loopback. An in-process sidecar and a tiny HTTP app on 127.0.0.1: the probe answers with
//! the app's status, 503 when the app is down or silent, 404 for a path no probe has, and
//! nothing of the kubelet's request or the app's answer crosses but the status.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pki::Ca;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A tiny HTTP app: answers every request with `status` and a body the probe must not
/// pass on, and keeps the head of the last request it read.
struct HttpApp {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    last_request: Arc<Mutex<String>>,
}

const APP_BODY: &str = "app-body-that-must-not-leak";

impl HttpApp {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let status = Arc::new(AtomicU16::new(200));
        let last_request = Arc::new(Mutex::new(String::new()));
        let (answer, seen) = (status.clone(), last_request.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (answer, seen) = (answer.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 512];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    *seen.lock().expect("lock") = String::from_utf8_lossy(&head).into_owned();
                    let code = answer.load(Ordering::SeqCst);
                    let reply = format!(
                        "HTTP/1.1 {code} Whatever\r\ncontent-length: {}\r\nset-cookie: a=b\r\n\r\n{APP_BODY}",
                        APP_BODY.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Self {
            addr,
            status,
            last_request,
        }
    }

    fn last_request(&self) -> String {
        self.last_request.lock().expect("lock").clone()
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// A listener that accepts and never answers; kept open by the returned task.
async fn silent_app() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// One request over a fresh connection: (status, whole answer).
async fn get(addr: SocketAddr, method: &str, path: &str, extra_headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: kubelet\r\n{extra_headers}connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    // A deadline against a hung test, not a timing assertion.
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn probe_entry(path: &str, forward: SocketAddr, http_path: Option<&str>, extra: &str) -> String {
    let http = http_path.map_or(String::new(), |p| format!("http_path = {p:?}\n"));
    format!("[[app_probe]]\npath = {path:?}\nforward = \"{forward}\"\n{http}{extra}")
}

async fn sidecar_with_probes(probes: &[String]) -> warden_sidecar::Sidecar {
    let ca = Ca::new(TD);
    let echo = EchoApp::start().await;
    let toml = inbound_config(echo.addr, &[])
        + "[admin]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n"
        + &probes.concat();
    sidecar(&toml, ca.identity(&id("/web"), &[])).await
}

#[tokio::test]
async fn an_http_probe_answers_with_the_apps_status_and_nothing_else() {
    let app = HttpApp::start().await;
    let sidecar = sidecar_with_probes(&[probe_entry(
        "/app-health/web/readyz",
        app.addr,
        Some("/ready?deep=1"),
        "headers = { Host = \"web.internal\", \"X-Probe\" = \"warden\" }\n",
    )])
    .await;
    let metrics = sidecar.metrics_addr().expect("metrics listener");

    for code in [200, 204, 302, 404, 500, 503] {
        app.status.store(code, Ordering::SeqCst);
        let (status, answer) = get(
            metrics,
            "GET",
            "/app-health/web/readyz",
            "x-kubelet-secret: s3cr3t\r\ncookie: session=1\r\n",
        )
        .await;
        assert_eq!(status, code, "{answer}");
        assert!(
            !answer.contains(APP_BODY),
            "the app's body leaked: {answer}"
        );
        assert!(
            !answer.contains("set-cookie"),
            "the app's headers leaked: {answer}"
        );
    }
    let request = app.last_request();
    assert!(
        request.starts_with("GET /ready?deep=1 HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(request.contains("Host: web.internal\r\n"), "{request}");
    assert!(request.contains("X-Probe: warden\r\n"), "{request}");
    for leaked in ["s3cr3t", "session=1", "kubelet"] {
        assert!(
            !request.contains(leaked),
            "the kubelet's request leaked {leaked:?} to the app: {request}"
        );
    }

    // The loopback admin listener answers the same probe.
    app.status.store(200, Ordering::SeqCst);
    let (status, _) = get(sidecar.admin_addr(), "GET", "/app-health/web/readyz", "").await;
    assert_eq!(status, 200);
    // HEAD too (no body either way).
    let (status, _) = get(metrics, "HEAD", "/app-health/web/readyz", "").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_down_or_silent_app_fails_its_probe_with_503() {
    let down = closed_port().await;
    let (silent, _held) = silent_app().await;
    let up = EchoApp::start().await;
    let sidecar = sidecar_with_probes(&[
        probe_entry("/app-health/web/livez", down, Some("/healthz"), ""),
        probe_entry(
            "/app-health/web/readyz",
            silent,
            Some("/ready"),
            "timeout = \"200ms\"\n",
        ),
        probe_entry("/app-health/web/startupz", down, None, ""),
        probe_entry("/app-health/tcp/livez", up.addr, None, ""),
        probe_entry("/app-health/tcp/readyz", silent, None, ""),
    ])
    .await;
    let metrics = sidecar.metrics_addr().expect("metrics listener");
    for (path, expected) in [
        ("/app-health/web/livez", 503),
        ("/app-health/web/readyz", 503),
        ("/app-health/web/startupz", 503),
        ("/app-health/tcp/livez", 200),
        // A TCP check only connects: a listener that accepts is up.
        ("/app-health/tcp/readyz", 200),
    ] {
        let (status, answer) = get(metrics, "GET", path, "").await;
        assert_eq!(status, expected, "{path}: {answer}");
    }
    // The failed checks did not hurt the listener: its own probes still answer.
    assert_eq!(get(metrics, "GET", "/healthz", "").await.0, 200);
}

#[tokio::test]
async fn an_unknown_probe_path_is_404_and_only_get_runs_a_probe() {
    let app = HttpApp::start().await;
    let sidecar = sidecar_with_probes(&[probe_entry(
        "/app-health/web/readyz",
        app.addr,
        Some("/"),
        "",
    )])
    .await;
    let metrics = sidecar.metrics_addr().expect("metrics listener");
    for path in [
        "/app-health/other/readyz",
        "/app-health/web/readyz/x",
        "/app-health/web",
        "/app-health/",
    ] {
        assert_eq!(get(metrics, "GET", path, "").await.0, 404, "{path}");
    }
    assert_eq!(
        get(
            metrics,
            "POST",
            "/app-health/web/readyz",
            "content-length: 0\r\n"
        )
        .await
        .0,
        405
    );
    assert_eq!(app.last_request(), "", "no probe ran for those requests");
    assert_eq!(
        get(metrics, "GET", "/app-health/web/readyz", "").await.0,
        200
    );
}

#[tokio::test]
async fn concurrent_requests_for_one_probe_all_get_the_apps_answer() {
    let app = HttpApp::start().await;
    let sidecar = sidecar_with_probes(&[probe_entry(
        "/app-health/web/readyz",
        app.addr,
        Some("/"),
        "",
    )])
    .await;
    let metrics = sidecar.metrics_addr().expect("metrics listener");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..50 {
        tasks.spawn(async move { get(metrics, "GET", "/app-health/web/readyz", "").await.0 });
    }
    while let Some(status) = tasks.join_next().await {
        assert_eq!(status.expect("task"), 200);
    }
}

#[test]
fn probe_config_errors_name_file_and_key() {
    let base = inbound_config("127.0.0.1:1".parse().expect("addr"), &[]);
    let err = |extra: &str| {
        warden_sidecar::SidecarConfig::from_toml("pod.toml", &format!("{base}{extra}"))
            .expect_err(extra)
    };
    // Without a metrics listener the kubelet cannot reach a probe.
    let e = err("[[app_probe]]\npath = \"/app-health/a/livez\"\nforward = \"127.0.0.1:80\"\n");
    assert_eq!(e.key, "app_probe[0].path", "{e}");
    assert!(e.to_string().contains("pod.toml"), "{e}");
    assert!(e.to_string().contains("metrics_listen"), "{e}");
    let e = err(
        "[admin]\nmetrics_listen = \"0.0.0.0:15020\"\n[[app_probe]]\npath = \"/app-health/a/livez\"\nforward = \"10.1.2.3:80\"\n",
    );
    assert_eq!(e.key, "app_probe[0].forward", "{e}");
    assert!(e.to_string().contains("loopback"), "{e}");
    let e = err(
        "[admin]\nmetrics_listen = \"0.0.0.0:15020\"\n[[app_probe]]\npath = \"/app-health/a/livez\"\nforward = \"127.0.0.1:80\"\nport = 1\n",
    );
    assert!(e.key.starts_with("app_probe[0]"), "{e}");
}
