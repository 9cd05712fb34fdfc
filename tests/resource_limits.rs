//! Resource limits over real sockets: `limits.max_pending_handshakes` refuses connections
//! over it at accept (counted, audited) and frees up as handshakes end; and a real
//! `warden sidecar` process that runs out of file descriptors keeps its accept loop alive,
//! backs off instead of spinning, and serves again once descriptors are free.

mod common;
#[path = "support/harden.rs"]
mod harden;

use std::time::Duration;

use common::pki::Ca;
use common::*;
use harden::*;
use tokio::net::TcpStream;
use warden_sidecar::SidecarConfig;

#[tokio::test]
async fn connections_over_max_pending_handshakes_are_refused_at_once_then_served_again() {
    // One worker: with several, each has its own accept socket and the fifth connection may
    // be accepted before one of the first four, which would then be the one refused. The
    // limit is shared by all workers either way; this test is about the limit.
    let t =
        Target::start("handshake_timeout = \"60s\"\nmax_pending_handshakes = 4\nworkers = 1").await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(t.addr).await.expect("connect"));
    }
    // The accept loop takes connections in order: these four hold every handshake slot,
    // so the fifth is closed at once, long before the 60 s handshake timeout.
    let mut fifth = TcpStream::connect(t.addr).await.expect("connect");
    assert_closed_by_server(&mut fifth).await;
    let limit = [
        ("direction", "inbound"),
        ("listener", "http"),
        ("reason", "limit"),
    ];
    assert_eq!(
        metric(&t.metrics(), "warden_connections_closed_total", &limit),
        1
    );
    let r = t
        .wait_audit("a `refused` audit record", |r| r["event"] == "refused")
        .await;
    assert_eq!(r["reason"], "limit");
    assert_eq!(r["decision"], "deny");
    assert_eq!(r["detail"], "limits.max_pending_handshakes reached");
    // A good client is refused too while the slots are held: the limit is real.
    let cfg = raw_client_config(Some((&t.good.chain, t.good.key_der())), TLS13);
    assert!(tls_exchange(t.addr, cfg, b"x").await.is_err());
    assert_eq!(
        metric(&t.metrics(), "warden_connections_closed_total", &limit),
        2
    );
    // Their handshakes end (EOF): the slots come back and a good client is served.
    drop(idle);
    assert_eq!(t.wait_handshakes("protocol", 4).await, 4);
    t.assert_good_client_served().await;
    // A served connection gave its handshake slot back when the handshake ended: four more
    // idle ones still fit while a connection is open.
    let cfg = raw_client_config(Some((&t.good.chain, t.good.key_der())), TLS13);
    let held = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("x").expect("name"),
            TcpStream::connect(t.addr).await.expect("connect"),
        )
        .await
        .expect("handshake");
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(t.addr).await.expect("connect"));
    }
    t.assert_good_client_served().await;
    drop((held, idle));
    assert_eq!(t.app.accepts(), 3);
}

#[test]
fn max_pending_handshakes_is_validated_and_defaults_to_1024() {
    let base = inbound_config("127.0.0.1:1".parse().expect("addr"), &[]);
    let c = SidecarConfig::from_toml("t.toml", &base).expect("valid");
    assert_eq!(c.limits.max_pending_handshakes, 1024);
    let c = SidecarConfig::from_toml(
        "t.toml",
        &format!("{base}\n[limits]\nmax_pending_handshakes = 7\n"),
    )
    .expect("valid");
    assert_eq!(c.limits.max_pending_handshakes, 7);
    let e = SidecarConfig::from_toml(
        "t.toml",
        &format!("{base}\n[limits]\nmax_pending_handshakes = 0\n"),
    )
    .expect_err("zero is refused");
    assert_eq!(e.key, "limits.max_pending_handshakes");
    assert!(e.problem.contains("at least 1"), "{e}");
}

fn accept_failures(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("accept failed"))
        .collect()
}

/// A real process under `ulimit -n 64`: connections that hold their handshake use up the
/// descriptors, accept fails with EMFILE, the loop backs off (its delay doubles to a 1 s
/// cap, so the number of "accept failed" lines grows with time, not with CPU speed), the
/// process stays up, and once the clients leave a good client is served again.
#[tokio::test]
async fn running_out_of_file_descriptors_backs_off_and_recovers() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let mut p = SidecarProcess::start(
        &ca,
        app.addr,
        "[limits]\nhandshake_timeout = \"120s\"\nworkers = 2",
        Some(64),
        &[],
    );
    let good = ca.svid(&good_id());
    p.wait_served(&good).await;

    // Open connections (each holds a descriptor in the sidecar while its handshake waits)
    // until the sidecar reports that accept failed three times in a row: one failure alone
    // can come from a descriptor the files source holds for a moment while it reads, after
    // which accept succeeds again and the pressure is gone.
    let mut held = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while accept_failures(&p.log()).len() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline && held.len() < 500,
            "accept never failed after {} connections; log:\n{}",
            held.len(),
            p.log()
        );
        for _ in 0..8 {
            held.push(TcpStream::connect(p.addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = tokio::time::Instant::now();
    // Wait until the backoff has reached its cap twice: the loop kept retrying, slowly.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while p.log().matches("backoff_ms=1000").count() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backoff never reached its 1 s cap; log:\n{}",
            p.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(p.exited().is_none(), "sidecar died; log:\n{}", p.log());
    let episode = first.elapsed().as_secs_f64();
    let failures = accept_failures(&p.log()).len();
    // Doubling from 5 ms to the 1 s cap is 9 retries, then one per second, for each of the
    // 2 workers' accept loops. A spinning loop would log thousands per second; allow
    // generous slack for scheduling.
    let bound = 2 * (12 + 2 * episode.ceil() as usize);
    assert!(
        failures <= bound,
        "{failures} accept failures in {episode:.1}s (bound {bound}): the accept loop spins"
    );

    // The clients leave; their handshakes end and free the descriptors.
    let opened = held.len();
    drop(held);
    p.wait_served(&good).await;
    assert!(p.exited().is_none(), "sidecar died; log:\n{}", p.log());
    // The episode is over: no further accept failures pile up.
    let after = accept_failures(&p.log()).len();
    p.wait_served(&good).await;
    assert!(accept_failures(&p.log()).len() <= after + 1);
    eprintln!(
        "fd exhaustion: {opened} connections opened under ulimit -n 64, {failures} accept \
         failures logged over {episode:.1}s, recovered"
    );
    assert!(app.accepts() >= 2);
}
