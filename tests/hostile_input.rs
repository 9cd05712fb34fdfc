//! Hostile input against a real inbound listener over real sockets. Each case must end with
//! the connection closed by the sidecar, the refusal counted in
//! `warden_tls_handshakes_total{result}`, an audit record saying why, nothing reaching the
//! app, and a good client served right after (the listener survived the attack).

mod common;
#[path = "support/harden.rs"]
mod harden;

use common::pki::LeafSpec;
use common::*;
use harden::*;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// `handshake_timeout` is short so the slowloris cases finish quickly.
const LIMITS: &str = "handshake_timeout = \"1s\"";

#[tokio::test]
async fn random_bytes_are_refused_as_protocol() {
    let t = Target::start(LIMITS).await;
    let mut s = TcpStream::connect(t.addr).await.expect("connect");
    // Write errors are fine: the sidecar may reset the connection mid-write.
    let _ = s.write_all(&noise(4096, 0x5eed)).await;
    assert_closed_by_server(&mut s).await;
    assert_eq!(t.wait_handshakes("protocol", 1).await, 1);
    t.assert_failure_audited("protocol").await;
    t.assert_good_client_served().await;
    assert_eq!(t.app.accepts(), 1, "only the good client reached the app");
}

#[tokio::test]
async fn a_plaintext_http_request_is_refused_as_protocol() {
    let t = Target::start(LIMITS).await;
    let mut s = TcpStream::connect(t.addr).await.expect("connect");
    let _ = s
        .write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: vectordb\r\nContent-Length: 2\r\n\r\n{}")
        .await;
    assert_closed_by_server(&mut s).await;
    assert_eq!(t.wait_handshakes("protocol", 1).await, 1);
    t.assert_failure_audited("protocol").await;
    t.assert_good_client_served().await;
    assert_eq!(t.app.accepts(), 1);
}

#[tokio::test]
async fn a_truncated_client_hello_is_refused() {
    let t = Target::start(LIMITS).await;
    let hello = client_hello();
    assert!(hello.len() > 100, "a real ClientHello");
    // Half a ClientHello, then EOF: the sidecar must not wait for the rest.
    let mut s = TcpStream::connect(t.addr).await.expect("connect");
    s.write_all(&hello[..hello.len() / 2]).await.expect("write");
    s.shutdown().await.expect("half-close");
    assert_closed_by_server(&mut s).await;
    assert_eq!(t.wait_handshakes("protocol", 1).await, 1);
    t.assert_failure_audited("protocol").await;
    // Half a ClientHello and then silence: closed at handshake_timeout.
    let mut s = TcpStream::connect(t.addr).await.expect("connect");
    s.write_all(&hello[..hello.len() / 2]).await.expect("write");
    assert_closed_by_server(&mut s).await;
    assert_eq!(t.wait_handshakes("timeout", 1).await, 1);
    t.assert_failure_audited("timeout").await;
    t.assert_good_client_served().await;
    assert_eq!(t.app.accepts(), 1);
}

/// 200 certificates (~90 KB) and a ~300 KB chain: over rustls' 64 KiB handshake-message
/// limit, refused while being read, before any certificate is parsed.
#[tokio::test]
async fn oversized_certificate_chains_are_refused_cleanly() {
    let t = Target::start(LIMITS).await;
    let mut refused = 0;
    for copies in [199usize, 700] {
        let mut chain = t.good.chain.clone();
        chain.extend(std::iter::repeat_n(t.ca.cert.clone(), copies));
        let bytes: usize = chain.iter().map(|c| c.len()).sum();
        assert!(
            bytes > 64 * 1024,
            "chain of {} certs is {bytes} bytes",
            chain.len()
        );
        let cfg = crafted_client_config(chain, t.good.key_der());
        let res = tls_exchange(t.addr, cfg, b"x").await;
        assert!(res.is_err(), "an oversized chain was accepted: {res:?}");
        refused += 1;
        assert_eq!(t.wait_handshakes("protocol", refused).await, refused);
    }
    let r = t.assert_failure_audited("protocol").await;
    assert!(r["detail"].as_str().is_some_and(|d| !d.is_empty()), "{r}");
    t.assert_good_client_served().await;
    assert_eq!(t.app.accepts(), 1);
}

/// A correctly signed SVID whose SAN extension bytes were then corrupted (the inner
/// GeneralNames length no longer fits): the parser must refuse it, not panic.
#[tokio::test]
async fn a_certificate_with_a_malformed_san_is_refused_as_bad_svid() {
    let t = Target::start(LIMITS).await;
    let svid = t.ca.svid(&good_id());
    let mut der = svid.chain[0].to_vec();
    // id-ce-subjectAltName: 06 03 55 1D 11, then OCTET STRING (04 len) holding
    // SEQUENCE (30 len) of GeneralName.
    let oid = [0x06, 0x03, 0x55, 0x1d, 0x11];
    let at = der
        .windows(oid.len())
        .position(|w| w == oid)
        .expect("SAN extension present");
    let mut i = at + oid.len();
    if der[i] == 0x01 {
        i += 3; // critical BOOLEAN
    }
    assert_eq!(der[i], 0x04, "OCTET STRING");
    let seq = i + 2;
    assert_eq!(der[seq], 0x30, "GeneralNames SEQUENCE");
    der[seq + 1] = der[seq + 1].wrapping_add(40);
    let cfg = crafted_client_config(
        vec![rustls::pki_types::CertificateDer::from(der)],
        svid.key_der(),
    );
    assert!(tls_exchange(t.addr, cfg, b"x").await.is_err());
    assert_eq!(t.wait_handshakes("bad_svid", 1).await, 1);
    t.assert_failure_audited("bad_svid").await;
    t.assert_good_client_served().await;
    assert_eq!(t.app.accepts(), 1);
}

/// Validly signed by the trusted CA, but the URI SAN is not a SPIFFE ID the spec allows:
/// a space, a percent-encoded slash, a dot segment, a query. Each is `bad_svid`.
#[tokio::test]
async fn spiffe_ids_with_forbidden_characters_are_refused_as_bad_svid() {
    let t = Target::start(LIMITS).await;
    let bad = [
        format!("spiffe://{TD}/ns/a b"),
        format!("spiffe://{TD}/ns/a%2Fb"),
        format!("spiffe://{TD}/ns/../sa/retriever"),
        format!("spiffe://{TD}/ns/rag/sa/retriever?x=1"),
    ];
    for (n, uri) in bad.iter().enumerate() {
        let svid = t.ca.issue(&LeafSpec::id(uri));
        let cfg = raw_client_config(Some((&svid.chain, svid.key_der())), TLS13);
        assert!(
            tls_exchange(t.addr, cfg, b"x").await.is_err(),
            "{uri} accepted"
        );
        assert_eq!(
            t.wait_handshakes("bad_svid", n as u64 + 1).await,
            n as u64 + 1
        );
        let r = t
            .wait_audit(&format!("audit record naming {uri:?}"), |r| {
                r["event"] == "handshake_failure"
                    && r["reason"] == "bad_svid"
                    && r["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains(&format!("{uri:?}")))
            })
            .await;
        assert_eq!(
            r["peer_id"],
            serde_json::Value::Null,
            "no identity was proven"
        );
    }
    t.assert_good_client_served().await;
    assert_eq!(t.app.accepts(), 1);
}

/// Slowloris: TCP completes, then nothing. Closed at `limits.handshake_timeout` (1 s here)
/// with result `timeout`.
#[tokio::test]
async fn a_silent_client_is_closed_at_the_handshake_timeout() {
    let t = Target::start(LIMITS).await;
    let mut s = TcpStream::connect(t.addr).await.expect("connect");
    assert_closed_by_server(&mut s).await;
    assert_eq!(t.wait_handshakes("timeout", 1).await, 1);
    let r = t.assert_failure_audited("timeout").await;
    assert!(
        r["detail"]
            .as_str()
            .is_some_and(|d| d.contains("handshake_timeout")),
        "{r}"
    );
    t.assert_good_client_served().await;
    assert_eq!(t.app.accepts(), 1);
}

/// 1,000 silent handshakes at once (under the default `max_pending_handshakes` of 1,024):
/// a good client is served while all of them are still held open, and each of them is
/// later closed at the handshake timeout and counted as `timeout`.
#[tokio::test]
async fn a_thousand_idle_handshakes_do_not_starve_a_good_client() {
    const N: usize = 1000;
    // Long enough that the idle ones are certainly still pending when the good client
    // arrives (the test asserts that rather than assuming it), short enough to end soon.
    let t = Target::start("handshake_timeout = \"10s\"").await;
    let mut idle = Vec::with_capacity(N);
    for _ in 0..N {
        idle.push(TcpStream::connect(t.addr).await.expect("connect idle"));
    }
    t.assert_good_client_served().await;
    let still_open = idle
        .iter()
        .filter(|s| {
            let mut b = [0u8; 1];
            matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    assert_eq!(
        still_open, N,
        "idle handshakes were closed before the good client finished"
    );
    assert_eq!(
        metric(
            &t.metrics(),
            "warden_connections_closed_total",
            &[("reason", "limit")]
        ),
        0,
        "nothing refused at a limit"
    );
    for s in &mut idle {
        assert_closed_by_server(s).await;
    }
    assert_eq!(t.wait_handshakes("timeout", N as u64).await, N as u64);
    // The audit log summarizes a flood instead of writing 1,000 lines in one second; its
    // writer is asynchronous, so wait for the records to land.
    let timeouts_audited = || -> u64 {
        audit_records(&t.audit)
            .iter()
            .map(|r| match r["event"].as_str() {
                Some("handshake_failure") if r["reason"] == "timeout" => 1,
                Some("audit_summary") => r["counts"]
                    .as_array()
                    .map(|c| c.iter().filter_map(|c| c["count"].as_u64()).sum())
                    .unwrap_or(0),
                _ => 0,
            })
            .sum()
    };
    wait_until("timeouts are audited", Duration::from_secs(20), || {
        timeouts_audited() > 0
    })
    .await;
    t.assert_good_client_served().await;
    assert_eq!(t.app.accepts(), 2);
}
