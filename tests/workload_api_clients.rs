//! The Workload API answers the gRPC clients that name the socket in `:authority`: gRPC
//! C-core (py-spiffe with default options, C++, Ruby, PHP) sends the percent-encoded socket
//! path, grpc-java the raw path. h2 alone resets such streams; Warden repairs the header
//! (crates/warden-control/src/h2_authority.rs).
//!
//! - a raw HTTP/2 client, frame by frame, sends both forms (and a dynamic-table reference to
//!   one of them) and gets an SVID on each stream;
//! - py-spiffe from PyPI, with default options, fetches an SVID and its bundle, and a
//!   JWT-SVID, which it verifies with the JWT bundle and has the Workload API validate.
//!   It runs from the virtualenv `.ci/run` makes (`tests/.venv`); elsewhere the test skips
//!   with the reason, unless `WARDEN_REQUIRE_INTEROP=1` (set by `.ci/run`) makes that a failure.

mod common;
#[path = "support/h2raw.rs"]
mod h2raw;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::id;
use common::workload_api::{TestCa, my_uid, registration, serve};
use h2raw::*;
use prost::Message;
use tokio::net::UnixStream;
use warden_proto::workload::X509svidResponse;

const HOUR: Duration = Duration::from_secs(3600);
const FETCH_SVID: &str = "/SpiffeWorkloadAPI/FetchX509SVID";
const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_raw_http2_client_sending_the_socket_path_as_authority_gets_its_svid() {
    let t = TestCa::new();
    let sock = t.socket("java-and-c-core");
    let _api = serve(
        &t.ca,
        vec![registration(&sock, "/ns/rag/sa/retriever", Some(my_uid()))],
        HOUR,
    )
    .await;
    let raw_path = sock.display().to_string();
    let encoded_path = raw_path.replace('/', "%2F");

    let socket = UnixStream::connect(&sock).await.expect("connect");
    let mut h2 = RawH2::start(socket).await.expect("preface");
    let empty_request = message_prefix(0);
    let fetch = |authority| grpc_request(FETCH_SVID, authority, &[("workload.spiffe.io", b"true")]);
    let mut out = Vec::new();
    // Stream 1: grpc-java's raw path.
    out.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &fetch(field(0, ":authority", raw_path.as_bytes())),
    ));
    out.extend(frame(DATA, END_STREAM, 1, &empty_request));
    // Stream 3: C-core's percent-encoded path, entered in the dynamic table.
    let block = fetch(field(0x40, ":authority", encoded_path.as_bytes()));
    out.extend(frame(HEADERS, END_HEADERS, 3, &block));
    out.extend(frame(DATA, END_STREAM, 3, &empty_request));
    // Stream 5: the same authority by its dynamic-table index (62), as C-core repeats it.
    out.extend(frame(HEADERS, END_HEADERS, 5, &fetch(vec![0x80 | 62])));
    out.extend(frame(DATA, END_STREAM, 5, &empty_request));
    h2.send(&out).await.expect("write requests");

    let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut svids: HashMap<u32, String> = HashMap::new();
    let got_all = h2
        .read_until(DEADLINE, |_, f| {
            match f.kind {
                RST_STREAM => panic!("stream {} reset: {:?}", f.stream, f.payload),
                GOAWAY => panic!("connection refused with GOAWAY: {:?}", f.payload),
                DATA => {
                    let body = bodies.entry(f.stream).or_default();
                    body.extend_from_slice(&f.payload);
                    if body.len() >= 5 {
                        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
                        if body.len() >= 5 + len {
                            let msg =
                                X509svidResponse::decode(&body[5..5 + len]).expect("protobuf");
                            svids.insert(f.stream, msg.svids[0].spiffe_id.clone());
                        }
                    }
                }
                _ => {}
            }
            svids.len() == 3
        })
        .await;
    assert!(got_all, "three SVIDs in time; got {svids:?}");
    for stream in [1, 3, 5] {
        assert_eq!(
            svids[&stream],
            id("/ns/rag/sa/retriever"),
            "stream {stream}"
        );
    }
}

/// `tests/.venv/bin/python` with py-spiffe, or why there is none.
fn python_with_spiffe() -> Result<PathBuf, String> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/.venv/bin/python");
    if !python.exists() {
        return Err(format!(
            "{} not found (.ci/run creates it: python3 -m venv tests/.venv && tests/.venv/bin/pip install spiffe)",
            python.display()
        ));
    }
    let probe = std::process::Command::new(&python)
        .args(["-c", "import spiffe"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !probe.status.success() {
        return Err("py-spiffe is not installed in tests/.venv (pip install spiffe)".into());
    }
    Ok(python)
}

/// Skips (printing why) or, under `WARDEN_REQUIRE_INTEROP=1`, fails.
fn skip_or_fail(why: &str) {
    if std::env::var("WARDEN_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!("interop test cannot run, and WARDEN_REQUIRE_INTEROP=1: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

const PY_CLIENT: &str = r#"
import sys
from spiffe import WorkloadApiClient
with WorkloadApiClient(socket_path=sys.argv[1]) as client:
    svid = client.fetch_x509_svid(timeout=10)
    bundles = client.fetch_x509_bundles(timeout=10)
    print(svid.spiffe_id)
    print(len(svid.cert_chain))
    print(len(bundles.bundles))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_with_default_options_gets_an_svid() {
    let python = match python_with_spiffe() {
        Ok(p) => p,
        Err(why) => return skip_or_fail(&why),
    };
    let t = TestCa::new();
    let sock = t.socket("python");
    let _api = serve(
        &t.ca,
        vec![registration(&sock, "/ns/rag/sa/retriever", Some(my_uid()))],
        HOUR,
    )
    .await;
    let endpoint = format!("unix://{}", sock.display());
    let run = tokio::process::Command::new(&python)
        .args(["-c", PY_CLIENT, &endpoint])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("py-spiffe answered in time")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "py-spiffe failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(id("/ns/rag/sa/retriever").as_str()));
    assert_eq!(lines.next(), Some("1"), "one certificate in the chain");
    assert_eq!(lines.next(), Some("1"), "the bundle of the trust domain");
}

const PY_JWT_CLIENT: &str = r#"
import sys
from spiffe import WorkloadApiClient, JwtSvid
with WorkloadApiClient(socket_path=sys.argv[1]) as client:
    svid = client.fetch_jwt_svid(audience={"rag-retriever"}, timeout=10)
    print(svid.spiffe_id)
    bundles = client.fetch_jwt_bundles(timeout=10)
    bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
    # Verified locally with the JWT bundle (PyJWT and cryptography underneath) ...
    local = JwtSvid.parse_and_validate(svid.token, bundle, {"rag-retriever"})
    print(local.spiffe_id)
    # ... and by the Workload API.
    remote = client.validate_jwt_svid(svid.token, "rag-retriever", timeout=10)
    print(remote.spiffe_id)
    try:
        client.validate_jwt_svid(svid.token, "someone-else", timeout=10)
        print("wrong audience accepted")
    except Exception:
        print("wrong audience refused")
    print(svid.token)
"#;

/// py-spiffe fetches a JWT-SVID and the JWT bundle, verifies the token with the bundle
/// itself, and has the Workload API validate it; the token also validates at a sidecar's
/// `warden_jwt` validator, by the JWT bundle the same API serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_fetches_and_validates_jwt_svids() {
    let python = match python_with_spiffe() {
        Ok(p) => p,
        Err(why) => return skip_or_fail(&why),
    };
    let t = TestCa::new();
    let sock = t.socket("python-jwt");
    let _api = serve(
        &t.ca,
        vec![registration(&sock, "/ns/rag/sa/app", Some(my_uid()))],
        HOUR,
    )
    .await;
    let endpoint = format!("unix://{}", sock.display());
    let run = tokio::process::Command::new(&python)
        .args(["-c", PY_JWT_CLIENT, &endpoint])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("py-spiffe answered in time")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "py-spiffe failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let app = id("/ns/rag/sa/app");
    assert_eq!(
        lines.get(..4),
        Some(
            &[
                app.as_str(),
                app.as_str(),
                app.as_str(),
                "wrong audience refused"
            ][..]
        ),
        "{stdout}"
    );
    let token = lines.get(4).expect("token");
    // The same token at the sidecar's validator, with the bundle from FetchJWTBundles.
    let mut client = common::workload_api::raw_client(&sock).await;
    let mut stream = client
        .fetch_jwt_bundles(common::workload_api::with_header(
            warden_proto::workload::JwtBundlesRequest {},
        ))
        .await
        .expect("bundles")
        .into_inner();
    let msg = stream.message().await.expect("message").expect("first");
    let mut bundles = warden_jwt::JwtBundles::new();
    for (td, jwks) in msg.bundles {
        bundles.insert(
            warden_identity::TrustDomain::new(&td).expect("td"),
            warden_jwt::Jwks::from_spiffe_bundle(&jwks).expect("JWKS"),
        );
    }
    let claims = warden_jwt::Validator::new(warden_jwt::ValidatorConfig::jwt_svid(vec![
        "rag-retriever".into(),
    ]))
    .validate_jwt_svid(token, &bundles, std::time::SystemTime::now())
    .expect("valid at the sidecar too");
    assert_eq!(claims.sub.as_deref(), Some(app.as_str()));
}
