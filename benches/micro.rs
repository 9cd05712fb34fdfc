//! Micro-benchmarks of the per-connection hot path: SPIFFE ID parsing, X509-SVID
//! validation, the policy decision at 10 / 1,000 / 100,000 exact rules (plus wildcards),
//! and a complete mTLS 1.3 handshake between Warden's own rustls client and server configs,
//! driven in memory (no sockets, no async runtime) so only TLS + verification is measured.
//!
//! Run: `cargo bench --bench micro` (full) or `cargo bench --bench micro -- --quick`.
//! Goal (see BENCHMARKS.md): `policy/decide/exact/100000` under 100 ns.

#[path = "../tests/common/pki.rs"]
#[allow(dead_code)]
mod pki;

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rustls::pki_types::UnixTime;
use rustls::{ClientConnection, ServerConnection};
use warden_identity::svid::{self, Usage};
use warden_identity::{IdentityStore, SpiffeId};
use warden_policy::{Direction, Pattern, PolicySnapshot, PolicySource, WorkloadPolicy};

const TD: &str = "example.org";
const CLIENT_ID: &str = "spiffe://example.org/ns/rag/sa/retriever";
const SERVER_ID: &str = "spiffe://example.org/ns/rag/sa/vectordb";

fn spiffe_id(c: &mut Criterion) {
    let mut g = c.benchmark_group("spiffe_id");
    g.bench_function("parse", |b| {
        b.iter(|| SpiffeId::parse(black_box(CLIENT_ID)).expect("valid ID"))
    });
    g.finish();
}

fn svid_validation(c: &mut Criterion) {
    let ca = pki::Ca::new(TD);
    let leaf = ca.svid(CLIENT_ID);
    let bundles = pki::Ca::bundles(&[&ca]);
    let now = UnixTime::now();
    // Sanity: the benchmark measures the success path, not an early rejection.
    svid::validate(&leaf.chain[0], &[], &bundles, now, Usage::Client).expect("valid SVID");
    let mut g = c.benchmark_group("svid");
    g.bench_function("validate", |b| {
        b.iter(|| {
            svid::validate(
                black_box(&leaf.chain[0]),
                &[],
                black_box(&bundles),
                now,
                Usage::Client,
            )
            .expect("valid SVID")
        })
    });
    // What a handshake pays for a peer whose chain it has seen before (`Identity::
    // validate_peer`: a SHA-256 of the chain and a map lookup instead of the ECDSA check).
    let ours = ca.identity(SERVER_ID, &[]);
    ours.validate_peer(&leaf.chain[0], &[], now, Usage::Client)
        .expect("valid SVID");
    g.bench_function("validate_peer_remembered", |b| {
        b.iter(|| {
            ours.validate_peer(black_box(&leaf.chain[0]), &[], now, Usage::Client)
                .expect("valid SVID")
        })
    });
    g.bench_function("spiffe_id_of", |b| {
        b.iter(|| svid::spiffe_id_of(black_box(&leaf.chain[0])).expect("has an ID"))
    });
    g.finish();
}

/// A snapshot whose inbound listener `http` allows `patterns`.
fn snapshot(patterns: Vec<Pattern>) -> PolicySnapshot {
    let mut policy = WorkloadPolicy::new(SpiffeId::parse(SERVER_ID).expect("valid ID"));
    policy.inbound.insert("http".into(), patterns);
    policy.version = 1;
    PolicySnapshot::compile(Some(&policy), PolicySource::ControlPlane)
}

fn exact_id(i: usize) -> String {
    format!("spiffe://{TD}/ns/team{}/sa/service{i}", i % 97)
}

fn policy_decision(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy/decide");
    for n in [10usize, 1_000, 100_000] {
        let patterns = (0..n)
            .map(|i| Pattern::parse(&exact_id(i)).expect("valid pattern"))
            .collect();
        let snap = snapshot(patterns);
        let hit = SpiffeId::parse(&exact_id(n / 2)).expect("valid ID");
        let miss = SpiffeId::parse(&format!("spiffe://{TD}/ns/other/sa/nobody")).expect("id");
        assert!(snap.decide(Direction::Inbound, "http", &hit).allowed);
        assert!(!snap.decide(Direction::Inbound, "http", &miss).allowed);
        g.bench_with_input(BenchmarkId::new("exact", n), &hit, |b, peer| {
            b.iter(|| snap.decide(Direction::Inbound, black_box("http"), black_box(peer)))
        });
        g.bench_with_input(BenchmarkId::new("exact_miss", n), &miss, |b, peer| {
            b.iter(|| snap.decide(Direction::Inbound, black_box("http"), black_box(peer)))
        });
    }
    // Wildcards: 1,000 `ns/teamN/**` rules plus `*` rules; the peer matches a `**` rule deep
    // in the trie, and a miss walks the trie without a match.
    let mut patterns: Vec<Pattern> = (0..1_000)
        .map(|i| Pattern::parse(&format!("spiffe://{TD}/ns/team{i}/**")).expect("pattern"))
        .collect();
    patterns.extend(
        (0..100).map(|i| {
            Pattern::parse(&format!("spiffe://{TD}/ns/*/sa/frontend{i}")).expect("pattern")
        }),
    );
    let snap = snapshot(patterns);
    let hit = SpiffeId::parse(&format!("spiffe://{TD}/ns/team500/sa/api/v1")).expect("id");
    let star = SpiffeId::parse(&format!("spiffe://{TD}/ns/x/sa/frontend42")).expect("id");
    let miss = SpiffeId::parse(&format!("spiffe://{TD}/ns/nobody/sa/api")).expect("id");
    assert!(snap.decide(Direction::Inbound, "http", &hit).allowed);
    assert!(snap.decide(Direction::Inbound, "http", &star).allowed);
    assert!(!snap.decide(Direction::Inbound, "http", &miss).allowed);
    for (name, peer) in [
        ("wildcard_1100/double_star", &hit),
        ("wildcard_1100/star", &star),
        ("wildcard_1100/miss", &miss),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| snap.decide(Direction::Inbound, black_box("http"), black_box(peer)))
        });
    }
    g.finish();
}

/// Two identities from one CA, as the two sidecars of a hop would have them.
struct Pair {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

fn pair() -> Pair {
    let ca = pki::Ca::new(TD);
    let server_store = IdentityStore::new();
    server_store.set(ca.identity(SERVER_ID, &[]));
    let client_store = IdentityStore::new();
    client_store.set(ca.identity(CLIENT_ID, &[]));
    let server_id = SpiffeId::parse(SERVER_ID).expect("valid ID");
    Pair {
        server: warden_sidecar::tls::server_config(&server_store).expect("server config"),
        client: warden_sidecar::tls::client_config(&client_store, &server_id)
            .expect("client config"),
    }
}

/// Moves every pending TLS record from one side to the other, through `buf`.
fn flush<C, D>(
    from: &mut C,
    to_read: &mut dyn FnMut(&mut &[u8]) -> usize,
    buf: &mut Vec<u8>,
) -> bool
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
{
    let mut moved = false;
    while from.wants_write() {
        buf.clear();
        from.write_tls(buf).expect("write to a Vec");
        let mut rest: &[u8] = buf;
        while !rest.is_empty() {
            to_read(&mut rest);
        }
        moved = true;
    }
    moved
}

fn handshake(pair: &Pair, buf: &mut Vec<u8>) -> (ClientConnection, ServerConnection) {
    let name = warden_sidecar::tls::server_name("127.0.0.1:8443");
    let mut client = ClientConnection::new(pair.client.clone(), name).expect("client conn");
    let mut server = ServerConnection::new(pair.server.clone()).expect("server conn");
    while client.is_handshaking() || server.is_handshaking() {
        let a = flush(
            &mut client,
            &mut |rd| {
                let n = server.read_tls(rd).expect("read_tls");
                server
                    .process_new_packets()
                    .expect("server accepts the client");
                n
            },
            buf,
        );
        let b = flush(
            &mut server,
            &mut |rd| {
                let n = client.read_tls(rd).expect("read_tls");
                client
                    .process_new_packets()
                    .expect("client accepts the server");
                n
            },
            buf,
        );
        assert!(a || b, "handshake stalled");
    }
    (client, server)
}

fn tls(c: &mut Criterion) {
    let pair = pair();
    let mut buf = Vec::with_capacity(64 * 1024);
    let (client, server) = handshake(&pair, &mut buf);
    // Printed once so BENCHMARKS.md can say what was negotiated.
    eprintln!(
        "tls: negotiated {:?}, key exchange {:?}, peer {:?}",
        client.negotiated_cipher_suite().map(|s| s.suite()),
        client.negotiated_key_exchange_group().map(|g| g.name()),
        server
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| svid::spiffe_id_of(c).map(|id| id.to_string())),
    );
    let mut g = c.benchmark_group("tls");
    g.bench_function("mtls_handshake_pair", |b| {
        b.iter(|| handshake(&pair, &mut buf))
    });
    // One 16 KiB record sealed by the client and opened by the server: rustls' bulk cost,
    // to compare with `openssl speed -evp aes-128-gcm` at 16 KiB.
    let (mut client, mut server) = handshake(&pair, &mut buf);
    let payload = vec![0x5au8; 16 * 1024];
    let mut plain = vec![0u8; 16 * 1024];
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("record_16k_seal_open", |b| {
        b.iter(|| {
            std::io::Write::write_all(&mut client.writer(), &payload).expect("write");
            flush(
                &mut client,
                &mut |rd| {
                    let n = server.read_tls(rd).expect("read_tls");
                    server.process_new_packets().expect("record");
                    n
                },
                &mut buf,
            );
            std::io::Read::read_exact(&mut server.reader(), &mut plain).expect("read");
        })
    });
    g.finish();
}

/// What metrics and the audit log cost one connection: every hook a connection goes through
/// (labels, handshake ok, decision, open, close), with the audit log writing to /dev/null
/// ("on") or disabled ("metrics only"). Compared in BENCHMARKS.md with the CPU a sidecar
/// spends per connection in the mesh run, this is the observability overhead.
fn telemetry(c: &mut Criterion) {
    use warden_sidecar::audit::{AuditLimits, AuditLog};
    use warden_sidecar::metrics::Metrics;
    use warden_sidecar::{CloseReason, Telemetry};
    let mut g = c.benchmark_group("telemetry");
    let listener: Arc<str> = Arc::from("http");
    let peer = SpiffeId::parse(CLIENT_ID).expect("id");
    let addr: std::net::SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let policy = snapshot(vec![Pattern::parse(CLIENT_ID).expect("pattern")]);
    let audit_on = AuditLog::open(
        Some(std::path::Path::new("/dev/null")),
        AuditLimits::default(),
    )
    .expect("audit");
    for (name, audit) in [
        ("connection_hooks/on", audit_on),
        ("connection_hooks/metrics_only", AuditLog::disabled()),
    ] {
        let t = Telemetry::new(Metrics::new(1024), audit);
        let mut conn_id = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                conn_id += 1;
                let labels = t.peer(Direction::Inbound, &listener, &peer);
                t.handshake_ok(&labels, std::time::Instant::now());
                let decision = policy.decide(Direction::Inbound, "http", &peer);
                t.decision(&labels, conn_id, addr, &decision, 1);
                let meters = t.open(&labels);
                drop(meters);
                t.closed(&labels, conn_id, addr, CloseReason::Eof, 1024, 1024);
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = spiffe_id, svid_validation, policy_decision, tls, telemetry
}
criterion_main!(benches);
