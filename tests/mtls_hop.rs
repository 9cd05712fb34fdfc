//! The core promise, end to end over real sockets: an allowed peer reaches the app through
//! two sidecars; everyone else is stopped before a byte reaches the app.

mod common;

use std::time::Duration;

use common::pki::{Ca, LeafSpec};
use common::*;
use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// client -> [sidecar A outbound] == mTLS ==> [sidecar B inbound] -> app
struct Hop {
    app: EchoApp,
    a: warden_sidecar::Sidecar,
    b: warden_sidecar::Sidecar,
}

async fn hop(allow: &[String], a_id: &str) -> Hop {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let b = sidecar(
        &inbound_config(app.addr, allow),
        ca.identity(&id("/ns/rag/sa/vectordb"), &[]),
    )
    .await;
    let b_addr = b.inbound_addr("http").expect("b inbound");
    let a = sidecar(
        &outbound_config(b_addr, &id("/ns/rag/sa/vectordb")),
        ca.identity(a_id, &[]),
    )
    .await;
    Hop { app, a, b }
}

#[tokio::test]
async fn allowed_client_round_trips_bytes_through_two_sidecars() {
    let h = hop(&[id("/ns/rag/sa/retriever")], &id("/ns/rag/sa/retriever")).await;
    let out = h.a.outbound_addr("svc").expect("a outbound");

    let mut s = TcpStream::connect(out).await.expect("connect");
    s.write_all(b"hello vectordb").await.expect("write");
    let mut buf = [0u8; 14];
    s.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"hello vectordb");
    assert_eq!(h.app.accepts(), 1);

    // The connection is listed on both sides with the peer's identity.
    let conns = h.b.connections();
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].peer.as_str(), id("/ns/rag/sa/retriever"));
    assert_eq!(
        h.a.connections()[0].peer.as_str(),
        id("/ns/rag/sa/vectordb")
    );
}

#[tokio::test]
async fn ten_mib_transfer_arrives_intact_both_ways() {
    let h = hop(&[id("/ns/rag/sa/retriever")], &id("/ns/rag/sa/retriever")).await;
    let out = h.a.outbound_addr("svc").expect("a outbound");
    let data: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();

    let s = TcpStream::connect(out).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.expect("write 10 MiB");
        w.shutdown().await.expect("half-close");
    });
    let mut back = Vec::with_capacity(data.len());
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back))
        .await
        .expect("echo finishes")
        .expect("read");
    writer.await.expect("writer");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ from sent bytes");
}

#[tokio::test]
async fn half_close_propagates_in_both_directions() {
    let ca = Ca::new(TD);
    let app = start_count_app().await;
    let b = sidecar(
        &inbound_config(app, &[id("/a")]),
        ca.identity(&id("/b"), &[]),
    )
    .await;
    let a = sidecar(
        &outbound_config(b.inbound_addr("http").expect("b"), &id("/b")),
        ca.identity(&id("/a"), &[]),
    )
    .await;
    // The app answers only after it has seen EOF, so the answer proves the client's FIN
    // crossed both sidecars, and reading it to EOF proves the app's FIN came back.
    let answer = plain_exchange(a.outbound_addr("svc").expect("a"), &[7u8; 100_000])
        .await
        .expect("exchange");
    assert_eq!(String::from_utf8_lossy(&answer), "got 100000 bytes");
}

#[tokio::test]
async fn peer_not_on_allowlist_is_closed_and_app_never_sees_it() {
    let h = hop(&[id("/ns/rag/sa/retriever")], &id("/ns/rag/sa/app")).await;
    let out = h.a.outbound_addr("svc").expect("a outbound");
    let res = plain_exchange(out, b"let me in").await;
    assert!(
        matches!(&res, Ok(v) if v.is_empty()) || res.is_err(),
        "denied peer got data: {res:?}"
    );
    // A good connection afterwards proves the sidecar had time to act; the app still saw none.
    let allowed = hop(&[id("/ns/rag/sa/app")], &id("/ns/rag/sa/app")).await;
    let ok = plain_exchange(allowed.a.outbound_addr("svc").expect("a"), b"ping")
        .await
        .expect("allowed");
    assert_eq!(ok, b"ping");
    assert_eq!(
        h.app.accepts(),
        0,
        "the app saw a connection from a denied peer"
    );
    assert!(h.b.connections().is_empty());
}

#[tokio::test]
async fn static_allowlist_patterns_are_enforced() {
    let h = hop(
        &[format!("spiffe://{TD}/ns/rag/**")],
        &id("/ns/rag/sa/retriever"),
    )
    .await;
    let ok = plain_exchange(h.a.outbound_addr("svc").expect("a"), b"x")
        .await
        .expect("allowed by /**");
    assert_eq!(ok, b"x");
    let other = hop(
        &[format!("spiffe://{TD}/ns/*/sa/llm")],
        &id("/ns/rag/sa/retriever"),
    )
    .await;
    let res = plain_exchange(other.a.outbound_addr("svc").expect("a"), b"x").await;
    assert!(
        !matches!(&res, Ok(v) if !v.is_empty()),
        "pattern for llm admitted retriever"
    );
    assert_eq!(other.app.accepts(), 0);
}

/// Direct attacks on an inbound listener: each must be refused without reaching the app,
/// and a good client must be served right after.
#[tokio::test]
async fn bad_certificates_and_clients_are_refused_at_the_handshake() {
    let ca = Ca::new(TD);
    let app = EchoApp::start().await;
    let good_id = id("/ns/rag/sa/retriever");
    let b = sidecar(
        &inbound_config(app.addr, &[good_id.clone(), id("/ns/rag/sa/*")]),
        ca.identity(&id("/b"), &[]),
    )
    .await;
    let addr = b.inbound_addr("http").expect("b");
    let tls13 = &[&rustls::version::TLS13];

    let other_ca = Ca::new(TD); // same trust domain name, different key: untrusted
    let mut cases: Vec<(&str, common::pki::Svid)> = vec![
        ("untrusted CA", other_ca.svid(&good_id)),
        (
            "expired",
            ca.issue(&LeafSpec {
                expired: true,
                ..LeafSpec::id(&good_id)
            }),
        ),
        (
            "CA certificate as leaf",
            ca.issue(&LeafSpec {
                is_ca: true,
                key_usage: vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::DigitalSignature,
                ],
                ..LeafSpec::id(&good_id)
            }),
        ),
        (
            "two URI SANs",
            ca.issue(&LeafSpec {
                uris: vec![good_id.clone(), id("/ns/rag/sa/other")],
                ..LeafSpec::id(&good_id)
            }),
        ),
        (
            "no URI SAN",
            ca.issue(&LeafSpec {
                uris: vec![],
                ..LeafSpec::id(&good_id)
            }),
        ),
        (
            "keyCertSign on a leaf",
            ca.issue(&LeafSpec {
                key_usage: vec![
                    KeyUsagePurpose::DigitalSignature,
                    KeyUsagePurpose::KeyCertSign,
                ],
                ..LeafSpec::id(&good_id)
            }),
        ),
        (
            "serverAuth only EKU",
            ca.issue(&LeafSpec {
                eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
                ..LeafSpec::id(&good_id)
            }),
        ),
    ];
    let td2 = Ca::new("evil.example");
    cases.push((
        "another trust domain",
        td2.svid("spiffe://evil.example/ns/rag/sa/retriever"),
    ));

    for (what, svid) in &cases {
        let config = raw_client_config(Some((&svid.chain, svid.key_der())), tls13);
        let res = tls_exchange(addr, config, b"secret").await;
        assert!(res.is_err(), "{what}: client was served: {res:?}");
    }

    // No client certificate at all.
    let res = tls_exchange(addr, raw_client_config(None, tls13), b"secret").await;
    assert!(res.is_err(), "no client cert: served: {res:?}");

    // TLS 1.2 only, with a perfectly valid SVID.
    let good = ca.svid(&good_id);
    let res = tls_exchange(
        addr,
        raw_client_config(
            Some((&good.chain, good.key_der())),
            &[&rustls::version::TLS12],
        ),
        b"x",
    )
    .await;
    assert!(res.is_err(), "TLS 1.2 client: served: {res:?}");

    // Plaintext: an HTTP request straight at the TLS port.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("closed");
    assert!(!buf.starts_with(b"GET"), "plaintext was echoed back");

    assert_eq!(app.accepts(), 0, "a refused client reached the app");

    // And the next good peer is served as if nothing happened.
    let ok = tls_exchange(
        addr,
        raw_client_config(Some((&good.chain, good.key_der())), tls13),
        b"fine",
    )
    .await;
    assert_eq!(ok.expect("good client served"), b"fine");
    assert_eq!(app.accepts(), 1);
}

#[tokio::test]
async fn outbound_refuses_an_upstream_with_the_wrong_identity_and_sends_nothing() {
    let ca = Ca::new(TD);
    // The upstream is a real sidecar with a valid SVID, but not the one we expect.
    let app = EchoApp::start().await;
    let impostor = sidecar(
        &inbound_config(app.addr, &[id("/a")]),
        ca.identity(&id("/ns/rag/sa/impostor"), &[]),
    )
    .await;
    let a = sidecar(
        &outbound_config(
            impostor.inbound_addr("http").expect("b"),
            &id("/ns/rag/sa/llm"),
        ),
        ca.identity(&id("/a"), &[]),
    )
    .await;
    let res = plain_exchange(a.outbound_addr("svc").expect("a"), b"prompt with secrets").await;
    assert!(
        matches!(&res, Ok(v) if v.is_empty()) || res.is_err(),
        "got an answer from an impostor: {res:?}"
    );
    assert_eq!(
        app.accepts(),
        0,
        "the app's bytes reached the impostor's app"
    );
    assert!(impostor.connections().is_empty());
}

#[tokio::test]
async fn outbound_never_falls_back_to_plaintext() {
    let ca = Ca::new(TD);
    // A plaintext server where the upstream should be: it records whatever arrives.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("addr");
    let seen = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        // Answer the ClientHello with garbage, then collect what the sidecar sends.
        let mut hello = [0u8; 5];
        let _ = s.read_exact(&mut hello).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        buf
    });
    let a = sidecar(
        &outbound_config(upstream, &id("/llm")),
        ca.identity(&id("/a"), &[]),
    )
    .await;
    let res = plain_exchange(a.outbound_addr("svc").expect("a"), b"top secret prompt").await;
    assert!(
        matches!(&res, Ok(v) if v.is_empty()) || res.is_err(),
        "{res:?}"
    );
    let received = seen.await.expect("upstream task");
    assert!(
        !received.windows(10).any(|w| w == b"top secret"),
        "application bytes leaked to a non-TLS upstream"
    );
}
