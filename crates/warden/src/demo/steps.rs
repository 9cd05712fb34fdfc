//! The scripted tour: what a newcomer sees. Every step says what it tries, what should
//! happen, and what the sidecars' live metrics recorded; the report decides the exit code.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_identity::{IdentityStore, SpiffeId, TrustDomain};

use super::http;
use super::metrics::{allowed_peers, denials, handshake_failures};
use super::{Demo, chain_policies, id, put_policy, wait_for};

/// Outcome of every step.
#[derive(Default)]
pub struct Report {
    failed: Vec<String>,
    passed: usize,
}

impl Report {
    fn check(&mut self, step: &str, ok: bool, detail: impl AsRef<str>) {
        if ok {
            self.passed += 1;
            println!("  [ok] {step}: {}", detail.as_ref());
        } else {
            self.failed.push(step.to_owned());
            println!("  [FAILED] {step}: {}", detail.as_ref());
        }
    }

    pub fn verdict(&self) -> anyhow::Result<()> {
        if self.failed.is_empty() {
            println!("\nAll {} checks behaved as expected.", self.passed);
            Ok(())
        } else {
            Err(anyhow!(
                "{} demo step(s) misbehaved: {}",
                self.failed.len(),
                self.failed.join("; ")
            ))
        }
    }
}

const QUESTION: &str = "how does zero trust stop lateral movement";

async fn ask(demo: &Demo) -> Result<String, String> {
    match http::get(demo.app.addr, &format!("/ask?q={}", http::encode(QUESTION))).await {
        Ok((200, body)) => Ok(body),
        Ok((status, body)) => Err(format!(
            "HTTP {status}: {}",
            body.lines().next().unwrap_or_default()
        )),
        Err(e) => Err(e),
    }
}

pub async fn tour(demo: &mut Demo) -> Report {
    let mut r = Report::default();
    let td = super::TRUST_DOMAIN;
    println!(
        "Trust domain {td}; every hop is mutual TLS 1.3 between SPIFFE identities, default deny.\n"
    );

    println!("1. A question travels app -> retriever -> vectordb -> llm and back");
    match ask(demo).await {
        Ok(answer) => {
            for line in answer.lines() {
                println!("     {line}");
            }
            r.check("answer", answer.starts_with("Q: "), "the chain answered");
        }
        Err(e) => r.check("answer", false, e),
    }
    for (hop, peer) in [
        (&demo.retriever, "app"),
        (&demo.vectordb, "retriever"),
        (&demo.llm, "vectordb"),
    ] {
        let peers = allowed_peers(&hop.sidecar, "inbound");
        r.check(
            &format!("{} inbound identity", hop.name),
            peers == [id(peer)],
            format!("{}'s sidecar admitted {}", hop.name, peers.join(", ")),
        );
    }

    println!("\n2. Lateral movement is stopped");
    for target in ["vectordb", "llm"] {
        let before = denials(&demo.app.sidecar, "outbound");
        let Some(out) = demo.app.sidecar.outbound_addr(target) else {
            r.check("egress", false, format!("app has no {target} listener"));
            continue;
        };
        let res = http::get(out, "/search?q=secrets").await;
        let denied = counted_above(before, || denials(&demo.app.sidecar, "outbound")).await;
        r.check(
            &format!("egress app -> {target}"),
            res.is_err() && denied,
            format!(
                "app's own sidecar refused the call ({})",
                res.err().unwrap_or_else(|| "answered!".into())
            ),
        );
    }
    let vdb_in = demo.vectordb.sidecar.inbound_addr("http");
    if let Some(addr) = vdb_in {
        let before = denials(&demo.vectordb.sidecar, "inbound");
        let res = mtls_get(
            addr,
            demo.app.sidecar.identity().clone(),
            &id("vectordb"),
            false,
        )
        .await;
        r.check(
            "ingress with app's SVID",
            res.is_err()
                && counted_above(before, || denials(&demo.vectordb.sidecar, "inbound")).await,
            format!(
                "a direct mTLS call to vectordb presenting {} was closed after authorization",
                id("app")
            ),
        );

        let before = handshake_failures(&demo.vectordb.sidecar, "untrusted");
        let outcome = match foreign_identity(demo) {
            Ok(store) => mtls_get(addr, store, &id("vectordb"), true).await,
            Err(e) => Ok(format!("could not build the foreign identity: {e}")),
        };
        r.check(
            "another trust domain",
            outcome.is_err()
                && counted_above(before, || {
                    handshake_failures(&demo.vectordb.sidecar, "untrusted")
                })
                .await,
            "spiffe://evil.example/ns/rag/sa/retriever failed the handshake (untrusted)",
        );

        let before = handshake_failures(&demo.vectordb.sidecar, "protocol");
        let plain = plaintext_probe(addr).await;
        r.check(
            "plaintext",
            !plain
                && counted_above(before, || {
                    handshake_failures(&demo.vectordb.sidecar, "protocol")
                })
                .await,
            "an HTTP request in cleartext to vectordb's inbound port was dropped",
        );
    } else {
        r.check("ingress", false, "vectordb has no inbound listener");
    }

    println!("\n3. Live revocation through the control plane");
    let mut revoked = super::policy_for(&chain_policies(), "vectordb");
    revoked.inbound.clear();
    match put_policy(&mut demo.admin, revoked).await {
        Ok(version) => {
            let applied = wait_for(
                "vectordb applies the revocation",
                Duration::from_secs(5),
                || demo.vectordb.sidecar.policy().version() >= version,
            )
            .await;
            let res = ask(demo).await;
            r.check(
                "revoke retriever -> vectordb",
                applied.is_ok() && res.is_err(),
                format!(
                    "policy v{version}: the next question fails ({})",
                    res.err().unwrap_or_else(|| "answered!".into())
                ),
            );
        }
        Err(e) => r.check("revoke", false, e.to_string()),
    }
    match put_policy(
        &mut demo.admin,
        super::policy_for(&chain_policies(), "vectordb"),
    )
    .await
    {
        Ok(version) => {
            let applied = wait_for(
                "vectordb applies the restore",
                Duration::from_secs(5),
                || demo.vectordb.sidecar.policy().version() >= version,
            )
            .await;
            let res = ask(demo).await;
            r.check(
                "restore",
                applied.is_ok() && res.is_ok(),
                format!("policy v{version}: answers flow again"),
            );
        }
        Err(e) => r.check("restore", false, e.to_string()),
    }
    end_users(demo, &mut r).await;
    print_counters(demo);
    r
}

/// A token of the demo IdP for `sub`, in `groups`, valid for ten minutes.
fn user_token(demo: &Demo, sub: &str, groups: &[&str]) -> Result<String, String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": super::IDP_ISSUER, "aud": super::IDP_AUDIENCE, "sub": sub,
        "groups": groups, "iat": now, "exp": now + 600,
    });
    let serde_json::Value::Object(claims) = claims else {
        return Err("claims are an object".into());
    };
    demo.idp.sign(&claims).map_err(|e| e.to_string())
}

/// The finance/marketing rule: the same app, two users; the retriever's sidecar decides
/// per request from the user's token, and says so in its audit log.
async fn end_users(demo: &Demo, r: &mut Report) {
    println!("\n4. End users: finance may read finance documents, marketing may not");
    let users = [("alice", "finance", 200u16), ("bob", "marketing", 403)];
    for (user, group, want) in users {
        let status = match user_token(demo, user, &[group]) {
            Ok(token) => http::get_as(
                demo.app.addr,
                "/docs?dept=finance",
                Some(&format!("Bearer {token}")),
            )
            .await
            .map(|(s, _)| s),
            Err(e) => Err(e),
        };
        r.check(
            &format!("{user} ({group}) reads the finance report"),
            status.as_ref().is_ok_and(|s| *s == want),
            match &status {
                Ok(s) => format!("HTTP {s}, decided at the retriever's sidecar"),
                Err(e) => e.clone(),
            },
        );
    }
    let status = http::get(demo.app.addr, "/docs?dept=finance").await;
    r.check(
        "no token",
        matches!(status, Ok((401, _))),
        match status {
            Ok((s, _)) => format!("HTTP {s}: the retriever's sidecar asks for a token"),
            Err(e) => e,
        },
    );
    let log = super::audit_log(demo.dir.path(), "retriever");
    let read = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["event"] == "http" && v["path"] != "/retrieve")
            .collect()
    };
    // Audit records are written by their own thread: wait until the three are there.
    let _ = wait_for(
        "the retriever's audit records",
        Duration::from_secs(5),
        || read().len() >= 3,
    )
    .await;
    let lines = read();
    println!("     the retriever's audit log ({}):", log.display());
    for v in lines.iter().rev().take(3).rev() {
        println!(
            "       {} user={} {} {} -> {} ({})",
            v["event"].as_str().unwrap_or_default(),
            v["user"].as_str().unwrap_or("-"),
            v["method"].as_str().unwrap_or_default(),
            v["path"].as_str().unwrap_or_default(),
            v["decision"].as_str().unwrap_or_default(),
            v["reason"].as_str().unwrap_or_default(),
        );
    }
}

/// The sidecars' own counters after the tour, straight from their metrics registries.
fn print_counters(demo: &Demo) {
    println!(
        "\n5. What the sidecars counted (warden_authz_decisions_total, warden_tls_handshakes_total)"
    );
    println!(
        "     {:<10} {:>8} {:>8} {:>11} {:>9}",
        "sidecar", "allowed", "denied", "untrusted", "protocol"
    );
    for s in demo.services() {
        let allowed = super::metrics::sum(
            &s.sidecar,
            "warden_authz_decisions_total",
            &[("decision", "allow")],
        );
        let denied = super::metrics::sum(
            &s.sidecar,
            "warden_authz_decisions_total",
            &[("decision", "deny")],
        );
        println!(
            "     {:<10} {:>8} {:>8} {:>11} {:>9}",
            s.name,
            allowed,
            denied,
            handshake_failures(&s.sidecar, "untrusted"),
            handshake_failures(&s.sidecar, "protocol")
        );
    }
}

pub fn where_next(demo: &Demo) {
    println!("\nWhere to look next:");
    for s in demo.services() {
        println!(
            "  {:<10} sidecar admin  {}/metrics  /readyz  /debug/policy  /debug/connections",
            s.name,
            s.admin_url()
        );
        println!(
            "  {:<10} audit log      {}",
            "",
            super::audit_log(demo.dir.path(), s.name).display()
        );
    }
    let admins: Vec<String> = demo
        .services()
        .iter()
        .map(|s| format!("--admin {}", s.admin_url()))
        .collect();
    println!("\n  warden top {}", admins.join(" "));
    println!(
        "  warden policy --control-plane https://{} --identity-dir {} list",
        demo.cp.addr(),
        demo.admin_dir().display()
    );
    println!(
        "  warden policy --control-plane https://{} --identity-dir {} history {}",
        demo.cp.addr(),
        demo.admin_dir().display(),
        id("vectordb")
    );
}

/// An identity from a CA nobody here trusts: what an attacker from outside would hold.
fn foreign_identity(demo: &Demo) -> anyhow::Result<Arc<IdentityStore>> {
    let td = TrustDomain::new("evil.example").map_err(|e| anyhow!("{e}"))?;
    let ca = warden_control::ca::BuiltinCa::load_or_create(&demo.dir.path().join("evil-ca"), &td)?;
    let me =
        SpiffeId::parse("spiffe://evil.example/ns/rag/sa/retriever").map_err(|e| anyhow!("{e}"))?;
    let store = IdentityStore::new();
    store.set(Arc::new(ca.identity_for(&me, Duration::from_secs(600))?));
    Ok(store)
}

/// GET through mTLS presenting `identity`; `Ok` only if an HTTP answer came back.
async fn mtls_get(
    addr: std::net::SocketAddr,
    identity: Arc<IdentityStore>,
    server: &str,
    any_server: bool,
) -> Result<String, String> {
    let server_id = SpiffeId::parse(server).map_err(|e| e.to_string())?;
    let config = if any_server {
        let mut c = (*warden_sidecar::tls::client_config(&identity, &server_id)
            .map_err(|e| e.to_string())?)
        .clone();
        c.dangerous().set_certificate_verifier(Arc::new(AnyServer));
        Arc::new(c)
    } else {
        warden_sidecar::tls::client_config(&identity, &server_id).map_err(|e| e.to_string())?
    };
    let work = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("vectordb.invalid").map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake failed: {e}"))?;
        tls.write_all(b"GET /search?q=secrets HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        if out.starts_with(b"HTTP/") {
            Ok(String::from_utf8_lossy(&out).into_owned())
        } else {
            Err("closed without an answer".into())
        }
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// True if a cleartext HTTP request got an HTTP answer.
/// Whether `count()` rises above `before` within two seconds. A sidecar records a refusal on
/// its worker thread, and the refused peer may see its connection end (a TLS alert is sent
/// before the failure surfaces) a moment before the count moves.
async fn counted_above(before: u64, mut count: impl FnMut() -> u64) -> bool {
    super::wait_for("the refusal to be counted", Duration::from_secs(2), || {
        count() > before
    })
    .await
    .is_ok()
}

async fn plaintext_probe(addr: std::net::SocketAddr) -> bool {
    let work = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /search?q=secrets HTTP/1.1\r\nhost: vectordb\r\n\r\n")
            .await
            .ok()?;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        Some(out.starts_with(b"HTTP/"))
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The attacker's verifier: it does not care who the server is.
#[derive(Debug)]
struct AnyServer;

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &warden_identity::provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &warden_identity::provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        warden_identity::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
