//! SVID file rotation without dropping connections, and config errors that name the key.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pki::Ca;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_identity::{FilesSource, SourceEvent, SvidSource};

/// The certificate an inbound listener presents right now.
async fn presented_cert(addr: std::net::SocketAddr, ca: &Ca) -> Vec<u8> {
    let svid = ca.svid(&id("/probe"));
    let config = raw_client_config(
        Some((&svid.chain, svid.key_der())),
        &[&rustls::version::TLS13],
    );
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("x.invalid").expect("name"),
            tcp,
        )
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().expect("server cert")[0].to_vec()
}

#[tokio::test]
async fn replaced_svid_files_are_used_for_new_handshakes_while_old_connections_keep_working() {
    let ca = Ca::new(TD);
    let dir = tempfile::tempdir().expect("tmp");
    let first = ca.svid(&id("/b"));
    ca.write_files(&first, dir.path());
    let mut files = FilesSource::new(
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    files.poll_interval = Duration::from_millis(100);

    let app = EchoApp::start().await;
    let b = sidecar_with_source(&inbound_config(app.addr, &[id("/a")]), Box::new(files)).await;
    let b_addr = b.inbound_addr("http").expect("b");
    let a = sidecar(
        &outbound_config(b_addr, &id("/b")),
        ca.identity(&id("/a"), &[]),
    )
    .await;
    assert_eq!(presented_cert(b_addr, &ca).await, first.chain[0].to_vec());

    // A long-lived connection opened before the rotation.
    let mut old = TcpStream::connect(a.outbound_addr("svc").expect("a"))
        .await
        .expect("connect");
    old.write_all(b"before").await.expect("write");
    let mut buf = [0u8; 6];
    old.read_exact(&mut buf).await.expect("echo");

    // A half-written key file is ignored: the old SVID stays in force.
    std::fs::write(
        dir.path().join("tls.key"),
        b"-----BEGIN PRIVATE KEY-----\nMIGH",
    )
    .expect("write");
    let second = ca.svid(&id("/b"));
    ca.write_files(&second, dir.path());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if presented_cert(b_addr, &ca).await == second.chain[0].to_vec() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new SVID not used within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    old.write_all(b"after!")
        .await
        .expect("old connection still writable");
    old.read_exact(&mut buf)
        .await
        .expect("old connection still answers");
    assert_eq!(&buf, b"after!");
    // And a new connection through the chain works with the new SVID.
    let fresh = plain_exchange(a.outbound_addr("svc").expect("a"), b"new")
        .await
        .expect("new conn");
    assert_eq!(fresh, b"new");
}

#[tokio::test]
async fn an_invalid_file_update_is_rejected_and_the_last_good_svid_kept() {
    let ca = Ca::new(TD);
    let dir = tempfile::tempdir().expect("tmp");
    let first = ca.svid(&id("/b"));
    ca.write_files(&first, dir.path());
    let mut files = FilesSource::new(
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
        dir.path().join("ca.crt"),
    );
    files.poll_interval = Duration::from_millis(50);
    let mut handle = Box::new(files).start();
    let SourceEvent::Updated(loaded) = next(&mut handle.events).await else {
        panic!("first load failed")
    };
    assert_eq!(
        loaded.leaf().expect("leaf").to_vec(),
        first.chain[0].to_vec()
    );

    // A certificate from another CA next to our key: key mismatch, must be rejected.
    let stranger = Ca::new(TD).svid(&id("/b"));
    std::fs::write(
        dir.path().join("tls.crt"),
        common::pki::pem_encode("CERTIFICATE", &stranger.chain[0]),
    )
    .expect("w");
    match next(&mut handle.events).await {
        SourceEvent::Rejected { reason } => assert!(!reason.is_empty()),
        other => panic!("bad material was not rejected: {other:?}"),
    }
    // A truncated key file: rejected too.
    let second = ca.svid(&id("/b"));
    ca.write_files(&second, dir.path());
    std::fs::write(
        dir.path().join("tls.key"),
        b"-----BEGIN PRIVATE KEY-----\nMIGH",
    )
    .expect("w");
    match next(&mut handle.events).await {
        SourceEvent::Rejected { reason } => assert!(reason.contains("key"), "{reason}"),
        other => panic!("half-written key was not rejected: {other:?}"),
    }
    // Then the complete update is picked up.
    ca.write_files(&second, dir.path());
    let SourceEvent::Updated(loaded) = next(&mut handle.events).await else {
        panic!("good update not loaded")
    };
    assert_eq!(
        loaded.leaf().expect("leaf").to_vec(),
        second.chain[0].to_vec()
    );
}

async fn next(rx: &mut tokio::sync::mpsc::Receiver<SourceEvent>) -> SourceEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("source event in time")
        .expect("source alive")
}

fn warden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warden"))
}

fn run_with_config(toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("sidecar.toml");
    std::fs::write(&path, toml).expect("write config");
    let out = warden()
        .args(["sidecar", "--config"])
        .arg(&path)
        .output()
        .expect("run warden");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_configs_exit_non_zero_naming_the_key_and_problem() {
    let base = |extra: &str| {
        format!(
            "trust_domain = \"example.org\"\n[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\n{extra}"
        )
    };
    let cases = [
        (
            base("[[inbound]]\nname = \"http\"\nlisten = \"nope\"\nforward = \"127.0.0.1:1\"\n"),
            "inbound[0].listen",
            "not an IP address",
        ),
        (
            base("[[inbound]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\nallow = [\"spiffe://example.org/a*b\"]\n"),
            "inbound[0].allow[0]",
            "segment",
        ),
        (
            base("[[inbound]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\nalow = []\n"),
            "inbound[0]",
            "unknown field `alow`",
        ),
        (
            base("[[outbound]]\nname = \"llm\"\nlisten = \"0.0.0.0:7001\"\nconnect = \"llm:8443\"\nserver_id = \"spiffe://example.org/llm\"\n"),
            "outbound[0].listen",
            "loopback",
        ),
        (
            base("[[outbound]]\nname = \"llm\"\nlisten = \"127.0.0.1:0\"\nconnect = \"llm:8443\"\nserver_id = \"spiffe://example.org\"\n"),
            "outbound[0].server_id",
            "no path",
        ),
        (
            base("[limits]\nhandshake_timeout = \"ten seconds\"\n[[inbound]]\nname = \"h\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\n"),
            "limits.handshake_timeout",
            "not a duration",
        ),
        (
            base("[limits]\nworkers = 1000\n[[inbound]]\nname = \"h\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\n"),
            "limits.workers",
            "at most 64",
        ),
        (
            "trust_domain = \"Bad Domain\"\n[identity]\nsource = \"files\"\n".to_owned(),
            "trust_domain",
            "contains ' '",
        ),
        (
            "trust_domain = \"example.org\"\n[identity]\nsource = \"spire\"\n[[inbound]]\nname = \"h\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\n".to_owned(),
            "identity.source",
            "expected \"workload-api\" or \"files\"",
        ),
        (
            "trust_domain = \"example.org\"\n[identity]\nsource = \"files\"\ncert = \"c\"\n[[inbound]]\nname = \"h\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\n".to_owned(),
            "identity.key",
            "required",
        ),
        ("trust_domain = \n".to_owned(), "(syntax)", "line 1"),
    ];
    for (toml, key, problem) in cases {
        let (ok, stderr) = run_with_config(&toml);
        assert!(!ok, "config accepted:\n{toml}");
        assert!(stderr.contains("sidecar.toml"), "file not named: {stderr}");
        assert!(stderr.contains(key), "key {key:?} not named: {stderr}");
        assert!(
            stderr.contains(problem),
            "problem {problem:?} not stated: {stderr}"
        );
    }
}

#[test]
fn a_missing_config_file_is_a_clear_error() {
    let out = warden()
        .args(["sidecar", "--config", "/nonexistent/warden.toml"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/warden.toml") && stderr.contains("cannot read"),
        "{stderr}"
    );
}
