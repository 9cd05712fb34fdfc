//! The optional metrics listener (`[admin] metrics_listen`) is what a pod exposes to the
//! kubelet and Prometheus: it serves `/metrics`, `/healthz` and `/readyz`, and never the debug
//! views, which stay on the loopback-only admin listener.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::pki::Ca;
use common::*;
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
