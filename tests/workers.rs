//! Thread per core (`limits.workers`): every worker accepts and serves on its own socket of a
//! listener's port, a connection stays on the worker that accepted it, a port already in use
//! still fails start-up, and dropping a sidecar closes its listeners and connections.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::pki::Ca;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_identity::StaticSource;
use warden_sidecar::{SidecarConfig, StartError};

fn with_workers(toml: String, workers: usize) -> String {
    format!("{toml}\n[limits]\nworkers = {workers}\n")
}

/// client -> A (outbound, `a_workers`) == mTLS ==> B (inbound, `b_workers`) -> echo app
async fn hop(
    a_workers: usize,
    b_workers: usize,
) -> (EchoApp, warden_sidecar::Sidecar, warden_sidecar::Sidecar) {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let client_id = id("/ns/rag/sa/retriever");
    let server_id = id("/ns/rag/sa/vectordb");
    let b = sidecar(
        &with_workers(
            inbound_config(app.addr, std::slice::from_ref(&client_id)),
            b_workers,
        ),
        ca.identity(&server_id, &[]),
    )
    .await;
    let b_addr = b.inbound_addr("http").expect("b inbound");
    let a = sidecar(
        &with_workers(outbound_config(b_addr, &server_id), a_workers),
        ca.identity(&client_id, &[]),
    )
    .await;
    (app, a, b)
}

/// Opens `n` connections through `addr`, each proving with one echo that it is relayed.
async fn open_echoing(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let msg = format!("hello {i:04}");
        s.write_all(msg.as_bytes()).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, msg.as_bytes());
        conns.push(s);
    }
    conns
}

fn workers_of(sidecar: &warden_sidecar::Sidecar) -> BTreeSet<usize> {
    sidecar
        .connections()
        .iter()
        .map(|c| c.worker.expect("every connection is served by a worker"))
        .collect()
}

#[tokio::test]
async fn connections_spread_over_every_worker_and_all_are_relayed() {
    let (app, a, b) = hop(2, 3).await;
    let out = a.outbound_addr("svc").expect("a outbound");
    // 64 connections from distinct source ports: the kernel's SO_REUSEPORT hash leaves a
    // worker without any with probability about 3 * (2/3)^64, i.e. never in practice.
    let conns = open_echoing(out, 64).await;
    wait_until(
        "B lists all 64 connections",
        Duration::from_secs(10),
        || b.connections().len() == 64,
    )
    .await;
    assert_eq!(workers_of(&b), BTreeSet::from([0, 1, 2]), "B's workers");
    assert_eq!(workers_of(&a), BTreeSet::from([0, 1]), "A's workers");
    assert_eq!(app.accepts(), 64);

    // A connection stays on its worker: after every one moved data again, each is still
    // listed on the worker that accepted it.
    let placement = |sidecar: &warden_sidecar::Sidecar| -> Vec<(u64, Option<usize>)> {
        sidecar
            .connections()
            .iter()
            .map(|c| (c.id, c.worker))
            .collect()
    };
    let before = placement(&b);
    let mut conns = conns;
    for (i, s) in conns.iter_mut().enumerate() {
        let msg = format!("again {i:04}");
        s.write_all(msg.as_bytes()).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.expect("echo");
        assert_eq!(back, msg.as_bytes());
    }
    assert_eq!(placement(&b), before, "a connection moved between workers");
}

#[tokio::test]
async fn one_worker_serves_everything() {
    let (_app, a, b) = hop(1, 1).await;
    let out = a.outbound_addr("svc").expect("a outbound");
    let _conns = open_echoing(out, 8).await;
    wait_until("B lists all 8 connections", Duration::from_secs(10), || {
        b.connections().len() == 8
    })
    .await;
    assert_eq!(workers_of(&b), BTreeSet::from([0]));
}

#[tokio::test]
async fn a_port_in_use_still_fails_start_up_with_several_workers() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let first = sidecar(
        &with_workers(inbound_config(app.addr, &[]), 2),
        ca.identity(&id("/ns/rag/sa/vectordb"), &[]),
    )
    .await;
    let taken = first.inbound_addr("http").expect("inbound");
    // The same listener again, as a second sidecar started with the same config would.
    let toml = with_workers(inbound_config(app.addr, &[]), 2)
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{taken}\""))
        .replace(
            "[identity]",
            "[admin]\nlisten = \"127.0.0.1:0\"\n[audit]\npath = \"/dev/null\"\n[identity]",
        );
    let config = SidecarConfig::from_toml("second.toml", &toml).expect("valid config");
    let source = Box::new(StaticSource(ca.identity(&id("/ns/rag/sa/vectordb"), &[])));
    match warden_sidecar::Sidecar::start(&config, source).await {
        Err(StartError::Bind {
            listener, source, ..
        }) => {
            assert_eq!(listener, "http");
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
        }
        Err(other) => panic!("expected a bind error, got {other}"),
        Ok(_) => panic!("a second sidecar joined a port that was in use"),
    }
    // The first one is unaffected.
    let mut s = TcpStream::connect(taken)
        .await
        .expect("first still listens");
    s.write_all(b"x").await.expect("write");
}

#[tokio::test]
async fn dropping_a_sidecar_closes_its_listeners_and_connections() {
    let (_app, a, b) = hop(2, 2).await;
    let out = a.outbound_addr("svc").expect("a outbound");
    let mut conns = open_echoing(out, 4).await;
    let b_addr = b.inbound_addr("http").expect("b inbound");
    drop(b);
    // The listening sockets are gone once drop returns: the port can be bound again.
    let rebound = std::net::TcpListener::bind(b_addr);
    assert!(rebound.is_ok(), "port still held: {rebound:?}");
    // And each relayed connection ends (A sees B's side close and closes the client's).
    for s in &mut conns {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("connection ends in time");
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "connection still relays: {n:?}"
        );
    }
}

#[tokio::test]
async fn shutdown_with_several_workers_refuses_new_connections_and_drains_open_ones() {
    let (_app, a, b) = hop(2, 2).await;
    let out = a.outbound_addr("svc").expect("a outbound");
    let b_addr = b.inbound_addr("http").expect("b inbound");
    let mut conns = open_echoing(out, 6).await;
    wait_until("B lists the 6 connections", Duration::from_secs(10), || {
        b.connections().len() == 6
    })
    .await;
    let draining = tokio::spawn(b.shutdown(Duration::from_millis(300)));
    // Every worker's accept socket closes: the port refuses (or resets) new connections.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(b_addr).await {
            Err(_) => break,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "B still accepts after shutdown began"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // The open connections end after the grace period (closed with reason `drain`).
    tokio::time::timeout(Duration::from_secs(10), draining)
        .await
        .expect("shutdown returns")
        .expect("shutdown task");
    for s in &mut conns {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("connection ends in time");
        assert!(matches!(n, Ok(0) | Err(_)), "still open after drain: {n:?}");
    }
}
