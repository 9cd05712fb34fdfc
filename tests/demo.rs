//! `warden demo --once` is the README's first command: it must answer the question and
//! show every attack refused, and exit 0 only then.

use std::process::Command;

#[test]
fn demo_once_answers_the_question_and_refuses_every_attack() {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["demo", "--once"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run warden demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("Q: how does zero trust stop lateral movement"),
        "{stdout}"
    );
    assert!(stdout.contains("A: "), "no answer: {stdout}");
    for step in [
        "[ok] answer",
        "[ok] retriever inbound identity",
        "[ok] vectordb inbound identity",
        "[ok] llm inbound identity",
        "[ok] egress app -> vectordb",
        "[ok] egress app -> llm",
        "[ok] ingress with app's SVID",
        "[ok] another trust domain",
        "[ok] plaintext",
        "[ok] revoke retriever -> vectordb",
        "[ok] restore",
        "[ok] alice (finance) reads the finance report",
        "[ok] bob (marketing) reads the finance report",
        "[ok] no token",
        "user=bob GET /docs/finance/q3-report -> deny (claims_mismatch)",
    ] {
        assert!(stdout.contains(step), "missing {step:?}:\n{stdout}");
    }
    assert!(!stdout.contains("[FAILED]"), "{stdout}");
    // The demo cleans up after itself: its temporary directory is gone.
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Temporary files: "))
        .expect("the demo names its temporary directory");
    assert!(
        !std::path::Path::new(dir.trim()).exists(),
        "{dir} was left behind"
    );
}
