//! Egress: TLS from the app to a destination outside the mesh (an external LLM API), passed
//! through untouched, but only when the ClientHello's SNI is listed in an `[[egress]]` for
//! the destination port. The sidecar does not terminate this TLS: the app verifies the
//! server itself, and the sidecar only decides whether the connection may exist.
//!
//! The SNI is what the app asked for, not a proof of where the bytes go: an app that
//! lies in its SNI reaches the address it dialled. Pair `[[egress]]` with network policy
//! (or `--skip-outbound-cidrs` left empty) where that matters.
//!
//! Egress connections are not in the registry of policy-checked connections (no SPIFFE ID
//! to re-check); they end with the app, the server, `idle_timeout` or the sidecar.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_policy::Direction;

use super::CaptureOutbound;
use super::client_hello::{self, Hello};
use crate::flow;
use crate::shared::{Permits, Shared};
use crate::telemetry::CaptureRefusal;

pub(super) async fn serve(
    shared: Arc<Shared>,
    capture: Arc<CaptureOutbound>,
    mut app: TcpStream,
    app_addr: SocketAddr,
    dst: SocketAddr,
    _permits: Permits,
) {
    const DIR: Direction = Direction::Outbound;
    let conn_id = shared.registry.next_id();
    let _ = app.set_nodelay(true);
    let limits = shared.limits;
    let refuse = |detail: String| {
        shared.telemetry.capture_refused(
            DIR,
            &capture.name,
            conn_id,
            app_addr,
            CaptureRefusal::EgressDenied,
            detail,
        );
    };
    // The app speaks first in TLS; read until its ClientHello is complete.
    let mut hello = Vec::with_capacity(2048);
    let read = async {
        loop {
            match client_hello::parse(&hello) {
                Hello::Incomplete => {}
                done => return Ok(done),
            }
            let mut chunk = [0u8; 4096];
            let n = app.read(&mut chunk).await?;
            if n == 0 {
                return Ok(Hello::Invalid(
                    "the app closed before a complete ClientHello",
                ));
            }
            hello.extend_from_slice(&chunk[..n]);
        }
    };
    let parsed: std::io::Result<Hello> =
        match tokio::time::timeout(limits.handshake_timeout, read).await {
            Ok(r) => r,
            Err(_) => Ok(Hello::Invalid(
                "no complete ClientHello within limits.handshake_timeout",
            )),
        };
    let sni = match parsed {
        Ok(Hello::Parsed { sni: Some(sni) }) => sni,
        Ok(Hello::Parsed { sni: None }) => {
            return refuse(format!("to {dst}: the ClientHello has no SNI"));
        }
        Ok(Hello::Invalid(why)) => return refuse(format!("to {dst}: {why}")),
        Ok(Hello::Incomplete) => return refuse(format!("to {dst}: no ClientHello")),
        Err(e) => return refuse(format!("to {dst}: reading the ClientHello: {e}")),
    };
    let allowed = capture.egress.iter().find_map(|e| {
        if !e.ports.contains(&dst.port()) {
            return None;
        }
        client_hello::host_matches(&e.hosts, &sni).map(|i| (e, &e.hosts[i]))
    });
    let Some((egress, rule)) = allowed else {
        return refuse(format!(
            "to {dst}: SNI {sni:?} is not listed by an [[egress]] for port {}",
            dst.port()
        ));
    };
    let name: Arc<str> = egress.name.as_str().into();
    let labels = shared.telemetry.named_peer(DIR, &name, &sni);
    shared
        .telemetry
        .egress_allowed(&labels, conn_id, app_addr, rule, format!("to {dst}"));
    let conn = flow::Conn {
        shared: &shared,
        labels: &labels,
        id: conn_id,
        addr: app_addr,
    };
    let Some(mut upstream) = flow::connect(&conn, dst, flow::Dial::Upstream).await else {
        return;
    };
    if let Err(e) = upstream.write_all(&hello).await {
        tracing::debug!(conn_id, error = %e, "egress upstream closed before the ClientHello");
        shared.telemetry.closed(
            &labels,
            conn_id,
            app_addr,
            crate::registry::CloseReason::Error,
            0,
            0,
        );
        return;
    }
    drop(hello);
    let stats = Arc::new(crate::registry::ConnStats::default());
    let meters = shared.telemetry.open(&labels);
    // Nothing revokes egress (it is not policy-checked): a sender that is never used.
    let (_never, mut closed) = tokio::sync::oneshot::channel();
    let reason = crate::relay::relay(
        meters.meter(upstream),
        app,
        stats.clone(),
        limits.idle_timeout,
        &mut closed,
    )
    .await;
    flow::report_close(&conn, reason, &stats);
}
