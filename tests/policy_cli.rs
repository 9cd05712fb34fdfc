//! `warden policy` against a real control plane: every subcommand, and errors a person
//! understands with a non-zero exit.

mod common;

use std::path::Path;
use std::process::Command;

use common::control::*;
use common::pki::Ca;
use common::{TD, id};

fn policy_cmd(cp_url: &str, identity: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["policy", "--control-plane", cp_url, "--identity-dir"])
        .arg(identity)
        .args(args)
        .output()
        .expect("run warden policy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn every_policy_subcommand_works_end_to_end() {
    let ca = Ca::new(TD);
    let cp = CpProcess::start(&ca);
    let _ = cp.admin().await;
    let url = cp.url();
    let admin = cp.admin_dir();
    let file = cp.dir.path().join("policy.toml");
    std::fs::write(
        &file,
        format!(
            "[[workload]]\nspiffe_id = \"spiffe://{TD}/ns/rag/sa/vectordb\"\ninbound.http = [\"spiffe://{TD}/ns/rag/sa/retriever\"]\noutbound.llm = [\"spiffe://{TD}/ns/rag/sa/llm\"]\n\n[[workload]]\nspiffe_id = \"spiffe://{TD}/ns/rag/sa/llm\"\ninbound.http = [\"spiffe://{TD}/ns/rag/sa/vectordb\"]\n"
        ),
    )
    .expect("write");
    let file = file.to_string_lossy().into_owned();

    let (ok, out, err) = policy_cmd(&url, &admin, &["put", "-f", &file]);
    assert!(ok, "put failed: {err}");
    assert!(
        out.contains(&format!("spiffe://{TD}/ns/rag/sa/vectordb: version 1")),
        "{out}"
    );
    assert!(
        out.contains(&format!("spiffe://{TD}/ns/rag/sa/llm: version 2")),
        "{out}"
    );

    let (ok, out, err) = policy_cmd(&url, &admin, &["get", &id("/ns/rag/sa/vectordb")]);
    assert!(ok, "get failed: {err}");
    assert!(
        out.contains("inbound.http")
            || out.contains("[workload.inbound]")
            || out.contains("http ="),
        "{out}"
    );
    assert!(
        out.contains(&id("/ns/rag/sa/retriever")) && out.contains(&id("/ns/rag/sa/llm")),
        "{out}"
    );
    // What `get` prints is a valid policy file again.
    let reparsed =
        warden_policy::parse_policy_file(&out).expect("get output parses as a policy file");
    assert_eq!(reparsed.len(), 1);

    let (ok, out, _) = policy_cmd(&url, &admin, &["list"]);
    assert!(
        ok && out.contains(&id("/ns/rag/sa/vectordb")) && out.contains(&id("/ns/rag/sa/llm")),
        "{out}"
    );

    // Compare-and-set through the CLI: a stale version is refused with a clear message.
    let (ok, _, err) = policy_cmd(
        &url,
        &admin,
        &["put", "-f", &file, "--expected-version", "1"],
    );
    assert!(!ok);
    assert!(err.contains("exactly one workload"), "{err}");
    let single = cp.dir.path().join("one.toml");
    std::fs::write(
        &single,
        format!("[[workload]]\nspiffe_id = \"spiffe://{TD}/ns/rag/sa/llm\"\ninbound.http = []\n"),
    )
    .expect("w");
    let single = single.to_string_lossy().into_owned();
    let (ok, _, err) = policy_cmd(
        &url,
        &admin,
        &["put", "-f", &single, "--expected-version", "1"],
    );
    assert!(!ok, "stale write accepted");
    assert!(
        err.contains("stale version") && err.contains("current version is 2"),
        "{err}"
    );
    let (ok, out, err) = policy_cmd(
        &url,
        &admin,
        &["put", "-f", &single, "--expected-version", "2"],
    );
    assert!(ok, "{err}");
    assert!(out.contains("version 3"), "{out}");

    let (ok, out, _) = policy_cmd(&url, &admin, &["history", &id("/ns/rag/sa/llm")]);
    assert!(ok);
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(&id(ADMIN_PATH)))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");

    let (ok, out, _) = policy_cmd(&url, &admin, &["delete", &id("/ns/rag/sa/llm")]);
    assert!(ok && out.contains("deleted at version 4"), "{out}");
    let (ok, _, err) = policy_cmd(&url, &admin, &["get", &id("/ns/rag/sa/llm")]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, out, _) = policy_cmd(&url, &admin, &["history", &id("/ns/rag/sa/llm")]);
    assert!(ok && out.contains("delete"), "{out}");

    let (ok, out, err) = policy_cmd(&url, &admin, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("store version 4"), "{out}");
}

#[tokio::test]
async fn errors_are_explained_and_exit_non_zero() {
    let ca = Ca::new(TD);
    let cp = CpProcess::start(&ca);
    let _ = cp.admin().await;
    let ids = tempfile::tempdir().expect("tmp");

    // Not an admin.
    let workload = identity_dir(&ca, ids.path(), "/ns/rag/sa/app");
    let (ok, _, err) = policy_cmd(&cp.url(), &workload, &["list"]);
    assert!(!ok);
    assert!(
        err.contains("permission denied") && err.contains("not an admin"),
        "{err}"
    );

    // Nothing listening.
    let dead = format!("https://{}", free_port());
    let (ok, _, err) = policy_cmd(&dead, &cp.admin_dir(), &["list"]);
    assert!(!ok);
    assert!(err.contains("cannot reach the control plane"), "{err}");

    // A malformed policy file is refused before any network traffic, naming the key.
    let bad = ids.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[[workload]]\nspiffe_id = \"spiffe://{TD}/w\"\ninbound.http = [\"spiffe://{TD}/a*\"]\n"
        ),
    )
    .expect("w");
    let (ok, _, err) = policy_cmd(
        &dead,
        &cp.admin_dir(),
        &["put", "-f", &bad.to_string_lossy()],
    );
    assert!(!ok);
    assert!(err.contains("workload[0].inbound.http[0]"), "{err}");

    // No identity at all.
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["policy", "--control-plane", &cp.url(), "list"])
        .env_remove("SPIFFE_ENDPOINT_SOCKET")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--identity-dir"));
}
