//! The optional metrics listener (`[admin] metrics_listen`) is what a pod exposes to the
//! kubelet and Prometheus: it serves `/metrics`, `/healthz` and `/readyz`, and never the debug
//! views, which stay on the loopback-only admin listener.

mod common;
#[path = "support/harden.rs"]
mod harden;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::pki::Ca;
use common::*;
use harden::SidecarProcess;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_sidecar::{Sidecar, SidecarConfig};

async fn status_of(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_metrics_listener_serves_probes_and_metrics_but_no_debug_views() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let toml = inbound_config(app.addr, &[id("/a")])
        + "[admin]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\n";
    let config = SidecarConfig::from_toml("t.toml", &toml).expect("config");
    let sidecar = Sidecar::start(
        &config,
        Box::new(warden_identity::StaticSource(ca.identity(&id("/b"), &[]))),
    )
    .await
    .expect("start");
    wait_until("ready", Duration::from_secs(10), || sidecar.is_ready()).await;
    let metrics = sidecar.metrics_addr().expect("metrics listener");
    assert_eq!(status_of(metrics, "/metrics").await, 200);
    assert_eq!(status_of(metrics, "/healthz").await, 200);
    assert_eq!(status_of(metrics, "/readyz").await, 200);
    for path in ["/debug/identity", "/debug/policy", "/debug/connections"] {
        assert_eq!(
            status_of(metrics, path).await,
            404,
            "{path} exposed on the metrics listener"
        );
        assert_eq!(
            status_of(sidecar.admin_addr(), path).await,
            200,
            "{path} missing on admin"
        );
    }
}

/// One GET over a fresh connection; `None` if it is refused or closed without an answer.
async fn probe(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
}

/// Holds one connection to `addr` after another until `stop`: idle (nothing sent) or
/// slow (a request line, then one header line every 200 ms, never the end of the headers).
/// Each time the server closes it, it reconnects at once, as an attacker would.
async fn hold(addr: SocketAddr, slow: bool, stop: Arc<AtomicBool>, connected: Arc<AtomicUsize>) {
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            tokio::task::yield_now().await;
            continue;
        };
        if std::mem::take(&mut first) {
            connected.fetch_add(1, Ordering::Relaxed);
        }
        if slow && s.write_all(b"GET /healthz HTTP/1.1\r\n").await.is_err() {
            continue;
        }
        let mut buf = [0u8; 64];
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                read = s.read(&mut buf) => if !matches!(read, Ok(n) if n > 0) { break },
                _ = tick.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if slow && s.write_all(b"x-slow: 1\r\n").await.is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// The metrics listener is reachable from every pod, and a kubelet whose probes fail
/// restarts the sidecar. 500 idle and 100 slow-header connections, each reconnecting as
/// soon as it is closed, against a real `warden sidecar`: every probe is still answered
/// within the kubelet's default probe timeout (1 s), and /metrics still scrapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_while_idle_and_slow_connections_flood_the_metrics_listener() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let p = SidecarProcess::start(&ca, app.addr, "", None, &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while probe(p.metrics, "/healthz").await != Some(200) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sidecar never served /healthz; log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..600 {
        attackers.spawn(hold(p.metrics, i >= 500, stop.clone(), connected.clone()));
    }
    wait_until(
        "all 600 attackers connected",
        Duration::from_secs(20),
        || connected.load(Ordering::Relaxed) == 600,
    )
    .await;

    for round in 0..20 {
        let path = ["/healthz", "/readyz"][round % 2];
        let answer = tokio::time::timeout(Duration::from_secs(1), probe(p.metrics, path)).await;
        assert_eq!(
            answer,
            Ok(Some(200)),
            "probe {round} ({path}) not answered within 1 s under the flood"
        );
    }
    let scrape = tokio::time::timeout(Duration::from_secs(1), probe(p.metrics, "/metrics")).await;
    assert_eq!(scrape, Ok(Some(200)), "/metrics not served under the flood");
    stop.store(true, Ordering::Relaxed);
    attackers.abort_all();
}
