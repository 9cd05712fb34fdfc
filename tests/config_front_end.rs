//! One configuration front-end for every config file: the sidecar's and the control plane's
//! `[identity]` tables accept and refuse the same input (one table of cases for both), and
//! both files' errors name the file, the key path and, where the parser knows it, the line.

use warden_control::ControlPlaneConfig;
use warden_sidecar::SidecarConfig;

const SIDECAR: &str = r#"
trust_domain = "example.org"
[[inbound]]
name = "http"
listen = "127.0.0.1:0"
forward = "127.0.0.1:1"
"#;

const CONTROL: &str = r#"
trust_domain = "example.org"
listen = "127.0.0.1:0"
data_dir = "/var/lib/warden"
admins = ["spiffe://example.org/warden/admin"]
"#;

/// `Ok(())` when accepted, else the key the error names.
fn sidecar(identity: &str) -> Result<(), String> {
    SidecarConfig::from_toml("sidecar.toml", &format!("{SIDECAR}{identity}"))
        .map(|_| ())
        .map_err(|e| e.key)
}

fn control(identity: &str) -> Result<(), String> {
    ControlPlaneConfig::from_toml("control.toml", &format!("{CONTROL}{identity}"))
        .map(|_| ())
        .map_err(|e| e.key)
}

#[test]
fn both_identity_tables_accept_and_refuse_the_same_input() {
    let cases: &[(&str, Result<(), &str>)] = &[
        ("[identity]\nsource = \"workload-api\"\n", Ok(())),
        (
            "[identity]\nsource = \"workload-api\"\nendpoint = \"unix:///run/spire/agent.sock\"\nspiffe_id = \"spiffe://example.org/ns/a/sa/b\"\n",
            Ok(()),
        ),
        (
            "[identity]\nsource = \"workload-api\"\nendpoint = \"unix://run/agent.sock\"\n",
            Err("identity.endpoint"),
        ),
        (
            "[identity]\nsource = \"workload-api\"\nspiffe_id = \"spiffe://other.org/ns/a\"\n",
            Err("identity.spiffe_id"),
        ),
        (
            "[identity]\nsource = \"workload-api\"\nspiffe_id = \"spiffe://example.org\"\n",
            Err("identity.spiffe_id"),
        ),
        (
            "[identity]\nsource = \"workload-api\"\ncert = \"tls.crt\"\n",
            Err("identity.cert"),
        ),
        (
            "[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\n",
            Ok(()),
        ),
        (
            "[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"\"\nbundle = \"b\"\n",
            Err("identity.key"),
        ),
        (
            "[identity]\nsource = \"files\"\ncert = \"c\"\nbundle = \"b\"\n",
            Err("identity.key"),
        ),
        (
            "[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\nendpoint = \"tcp://1.2.3.4:1\"\n",
            Err("identity.endpoint"),
        ),
        (
            "[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\nspiffe_id = \"spiffe://example.org/a\"\n",
            Err("identity.spiffe_id"),
        ),
        ("[identity]\nsource = \"vault\"\n", Err("identity.source")),
        (
            "[identity]\nsource = \"files\"\nbogus = 1\n",
            Err("identity.bogus"),
        ),
        ("[identity]\n", Err("identity")),
    ];
    for (table, want) in cases {
        let want = want.map_err(str::to_owned);
        assert_eq!(sidecar(table), want, "sidecar: {table}");
        assert_eq!(control(table), want, "control plane: {table}");
    }
}

#[test]
fn control_plane_errors_name_the_file_the_key_and_the_line() {
    let e = ControlPlaneConfig::from_toml(
        "control.toml",
        &format!("{CONTROL}[ca]\nsvid_ttl = \"1h\"\nbogus = true\n"),
    )
    .expect_err("unknown key");
    assert_eq!(e.file, "control.toml");
    assert_eq!(e.key, "ca.bogus");
    assert!(e.problem.ends_with("(line 8)"), "{e}");
    let e = ControlPlaneConfig::from_toml("control.toml", &format!("{CONTROL}\"\" = 1\n"))
        .expect_err("empty key");
    assert_eq!(e.key, "(top level)", "{e}");
    let e = ControlPlaneConfig::from_toml("control.toml", "trust_domain = ").expect_err("syntax");
    assert_eq!(e.key, "(syntax)");
    assert!(e.problem.contains("(line 1)"), "{e}");
}
