//! `warden inject`, run as the real binary on the inputs under tests/golden/inject/:
//! `NAME.in.yaml` must give exactly `NAME.out.yaml`, give it again when fed its own output
//! (idempotence), and every output document must read as its typed Kubernetes object.
//! `NAME.error.yaml` must be refused with a non-zero exit, no output, and a message naming
//! the document and, for syntax errors, the line.
//!
//! `WARDEN_BLESS=1 cargo test --test inject` rewrites the `.out.yaml` files (review the diff).

mod k8s_typed;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_yaml_ng::Value;

const IMAGE: &str = "ghcr.io/warden-mesh/warden:test";
/// The flags every golden run gets: what a generated sidecar config needs.
const FLAGS: [&str; 4] = [
    "--trust-domain",
    "example.org",
    "--control-plane",
    "https://warden-control.warden-system.svc.cluster.local:7443",
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

fn inject(input: &[u8], extra: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["inject", "-f", "-", "--image", IMAGE])
        .args(FLAGS)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warden starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input)
        .expect("writes stdin");
    child.wait_with_output().expect("warden finishes")
}

fn ok_stdout(name: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{name}: warden inject failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}

fn cases(suffix: &str) -> Vec<(String, PathBuf)> {
    let mut found: Vec<_> = std::fs::read_dir(golden_dir())
        .expect("golden dir")
        .map(|e| e.expect("dir entry").path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.strip_suffix(suffix)?.to_owned();
            Some((name, p))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn each_input_gives_its_golden_output_and_is_idempotent() {
    let bless = std::env::var_os("WARDEN_BLESS").is_some();
    let cases = cases(".in.yaml");
    let names: Vec<_> = cases.iter().map(|(n, _)| n.as_str()).collect();
    for required in [
        "deployment",
        "statefulset",
        "daemonset",
        "replicaset",
        "replicationcontroller",
        "job",
        "cronjob",
        "pod",
        "list",
        "multi-document",
        "opt-out",
        "upgrade",
    ] {
        assert!(names.contains(&required), "missing golden case {required}");
    }
    for (name, input_path) in cases {
        let input = std::fs::read(&input_path).expect("reads input");
        let out = ok_stdout(&name, &inject(&input, &[]));
        let golden_path = golden_dir().join(format!("{name}.out.yaml"));
        if bless {
            std::fs::write(&golden_path, &out).expect("writes golden");
        }
        let golden = std::fs::read_to_string(&golden_path)
            .unwrap_or_else(|e| panic!("{}: {e}", golden_path.display()));
        assert_eq!(out, golden, "{name}: output differs from {name}.out.yaml");

        // Injecting twice equals injecting once, byte for byte.
        let again = ok_stdout(&name, &inject(out.as_bytes(), &[]));
        assert_eq!(again, out, "{name}: a second run changed the output");

        // The output is valid Kubernetes, and every document is still there.
        let in_docs = k8s_typed::documents(&String::from_utf8_lossy(&input)).expect("input");
        let out_docs = k8s_typed::documents(&out).expect("output parses");
        assert_eq!(in_docs.len(), out_docs.len(), "{name}: document count");
        for (i, doc) in out_docs.iter().enumerate() {
            k8s_typed::check_object(doc)
                .unwrap_or_else(|e| panic!("{name}: output document {}: {e:#}", i + 1));
        }
    }
}

fn pod_specs(doc: &Value) -> Vec<&Value> {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    match kind {
        "List" => doc
            .get("items")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .flat_map(pod_specs)
            .collect(),
        "Pod" => doc.get("spec").into_iter().collect(),
        "CronJob" => doc
            .get("spec")
            .and_then(|s| s.get("jobTemplate"))
            .and_then(|s| s.get("spec"))
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
            .into_iter()
            .collect(),
        _ => doc
            .get("spec")
            .and_then(|s| s.get("template"))
            .and_then(|t| t.get("spec"))
            .into_iter()
            .collect(),
    }
}

#[test]
fn every_injected_pod_has_the_sidecar_its_socket_and_its_config() {
    for (name, path) in cases(".in.yaml") {
        let out = ok_stdout(&name, &inject(&std::fs::read(&path).expect("input"), &[]));
        for doc in k8s_typed::documents(&out).expect("parses") {
            for spec in pod_specs(&doc) {
                let init = spec.get("initContainers").and_then(Value::as_sequence);
                let sidecar = init
                    .into_iter()
                    .flatten()
                    .find(|c| c.get("name").and_then(Value::as_str) == Some("warden"));
                if name == "opt-out" {
                    assert!(sidecar.is_none(), "opt-out was injected");
                    continue;
                }
                let sidecar = sidecar.unwrap_or_else(|| panic!("{name}: no warden sidecar"));
                assert_eq!(sidecar["image"], Value::from(IMAGE));
                assert_eq!(sidecar["restartPolicy"], Value::from("Always"));
                assert_eq!(
                    sidecar["env"][0]["name"],
                    Value::from("SPIFFE_ENDPOINT_SOCKET")
                );
                assert_eq!(
                    sidecar["securityContext"]["readOnlyRootFilesystem"],
                    Value::from(true)
                );
                let volumes = spec["volumes"].as_sequence().expect("volumes");
                let csi = volumes
                    .iter()
                    .find(|v| v["name"] == "warden-workload-api")
                    .expect("socket volume");
                assert_eq!(csi["csi"]["driver"], Value::from("csi.spiffe.io"));
                assert_eq!(csi["csi"]["readOnly"], Value::from(true));
                check_probes_and_scrape_use_the_metrics_port(&name, &doc, spec, sidecar);
            }
        }
    }
}

/// The pod exposes the sidecar's metrics-only listener and nothing of its admin server:
/// one port named `warden-metrics` besides the inbound one, every probe on it, and the
/// scrape annotation (when warden inject wrote it) pointing at it.
fn check_probes_and_scrape_use_the_metrics_port(
    name: &str,
    doc: &Value,
    spec: &Value,
    sidecar: &Value,
) {
    let ports = sidecar["ports"].as_sequence().expect("sidecar ports");
    let names: Vec<_> = ports.iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(
        names
            .iter()
            .all(|n| ["warden-inbound", "warden-metrics"].contains(n)),
        "{name}: the sidecar exposes {names:?}; the admin port must stay inside the pod"
    );
    let metrics = ports
        .iter()
        .find(|p| p["name"] == "warden-metrics")
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("{name}: no warden-metrics port"));
    let expected = if name == "daemonset" { 15090 } else { 15020 };
    assert_eq!(metrics, expected, "{name}: metrics port");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(
            sidecar[probe]["httpGet"]["port"],
            Value::from("warden-metrics"),
            "{name}: {probe}"
        );
    }
    assert_eq!(sidecar["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(sidecar["livenessProbe"]["httpGet"]["path"], "/healthz");
    // The pod template's annotations (a bare Pod: its own); a user's own scrape
    // configuration (the DaemonSet's) is left alone.
    let holder = if doc["kind"] == "Pod" {
        doc
    } else {
        pod_templates(doc)
            .into_iter()
            .find(|t| std::ptr::eq(&t["spec"], spec))
            .expect("the template of this spec")
    };
    let annotations = &holder["metadata"]["annotations"];
    if name != "daemonset" {
        assert_eq!(
            annotations["prometheus.io/port"],
            Value::from(metrics.to_string()),
            "{name}: scrape port"
        );
        assert_eq!(annotations["prometheus.io/path"], "/metrics", "{name}");
    }
}

/// Pod templates of a workload document (for a List, of all its items).
fn pod_templates(doc: &Value) -> Vec<&Value> {
    match doc["kind"].as_str().unwrap_or("") {
        "List" => doc["items"]
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(pod_templates)
            .collect(),
        "CronJob" => vec![&doc["spec"]["jobTemplate"]["spec"]["template"]],
        _ => vec![&doc["spec"]["template"]],
    }
}

#[test]
fn an_earlier_injection_exposing_the_admin_port_is_moved_to_the_metrics_port() {
    let input = std::fs::read_to_string(golden_dir().join("upgrade.in.yaml")).expect("in");
    assert!(
        input.contains("warden-admin"),
        "the input is an old injection"
    );
    let out = ok_stdout("upgrade", &inject(input.as_bytes(), &[]));
    assert!(!out.contains("warden-admin"), "{out}");
    assert!(!out.contains("15000"), "{out}");
    assert!(out.contains("prometheus.io/port: \"15020\""), "{out}");
    // Otherwise the same as a fresh injection of the same workload.
    let fresh = std::fs::read_to_string(golden_dir().join("deployment.out.yaml")).expect("out");
    assert_eq!(out, fresh);
}

#[test]
fn pass_through_documents_are_copied_byte_for_byte() {
    let input = std::fs::read_to_string(golden_dir().join("multi-document.in.yaml")).expect("in");
    let out = ok_stdout("multi-document", &inject(input.as_bytes(), &[]));
    let service_start = input.find("# A Service").expect("service comment");
    assert!(
        out.ends_with(&input[service_start..]),
        "the Service and the comment-only document must be unchanged:\n{out}"
    );
    let config_map = &input[input
        .find("---\napiVersion: v1\nkind: ConfigMap")
        .expect("cm")
        ..input.find("---\napiVersion: apps/v1").expect("deploy")];
    assert!(out.contains(config_map), "the ConfigMap must be unchanged");

    let opt_out = std::fs::read(golden_dir().join("opt-out.in.yaml")).expect("in");
    assert_eq!(inject(&opt_out, &[]).stdout, opt_out);
}

#[test]
fn a_new_image_rerenders_an_injected_workload_in_place() {
    let input = std::fs::read(golden_dir().join("deployment.in.yaml")).expect("in");
    let first = ok_stdout("deployment", &inject(&input, &[]));
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["inject", "-f", "-", "--image", "example.com/warden:next"])
        .args(FLAGS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(first.as_bytes())
        .expect("writes");
    let second = String::from_utf8(child.wait_with_output().expect("runs").stdout).expect("utf-8");
    // The init image follows the sidecar image (`-init` added to its name).
    let init = IMAGE.replace("warden:", "warden-init:");
    assert_eq!(
        second,
        first
            .replace(IMAGE, "example.com/warden:next")
            .replace(&init, "example.com/warden-init:next")
    );
}

fn refused(file: &str) -> String {
    let input = std::fs::read(golden_dir().join(file)).expect("input");
    let out = inject(&input, &[]);
    assert!(!out.status.success(), "{file}: must exit non-zero");
    assert!(
        out.stdout.is_empty(),
        "{file}: must write nothing to stdout"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn invalid_yaml_is_refused_naming_document_and_line() {
    let err = refused("invalid-yaml.error.yaml");
    assert!(err.contains("document 2"), "{err}");
    assert!(err.contains("YAML syntax error"), "{err}");
    // The bad indentation is on line 10 of the file, not of the document.
    assert!(err.contains("line 10"), "{err}");
}

#[test]
fn a_workload_without_containers_is_refused() {
    let err = refused("no-containers.error.yaml");
    assert!(err.contains("document 2"), "{err}");
    assert!(err.contains("Deployment \"empty\""), "{err}");
    assert!(err.contains("has no containers"), "{err}");
}

#[test]
fn a_foreign_container_named_warden_is_refused() {
    let err = refused("conflict.error.yaml");
    assert!(err.contains("Deployment \"homegrown\""), "{err}");
    assert!(
        err.contains("already has a container named \"warden\""),
        "{err}"
    );
}

#[test]
fn the_old_admin_port_annotation_is_refused_pointing_at_metrics_port() {
    let err = refused("admin-port.error.yaml");
    assert!(err.contains("document 2"), "{err}");
    assert!(err.contains("Deployment \"web\""), "{err}");
    assert!(err.contains("warden.dev/admin-port"), "{err}");
    assert!(err.contains("warden.dev/metrics-port"), "{err}");
    assert!(err.contains("metrics_listen"), "{err}");
    // Said once, not repeated by the error chain.
    assert_eq!(err.matches("no longer supported").count(), 1, "{err}");
}

#[test]
fn an_app_port_on_the_metrics_port_is_refused() {
    let input = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
spec:
  containers:
  - name: web
    image: registry.example.com/web:1
    ports:
    - containerPort: 15020
";
    let out = inject(input.as_bytes(), &[]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already uses port 15020"), "{err}");
    assert!(err.contains("warden.dev/metrics-port"), "{err}");

    let moved = input.replace(
        "metadata:\n  name: web\n",
        "metadata:\n  name: web\n  annotations:\n    warden.dev/metrics-port: \"15021\"\n",
    );
    let out = ok_stdout("moved", &inject(moved.as_bytes(), &[]));
    assert!(out.contains("containerPort: 15021"), "{out}");
    assert!(out.contains("prometheus.io/port: \"15021\""), "{out}");
}

#[test]
fn a_file_argument_and_a_missing_file() {
    let path = golden_dir().join("pod.in.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["inject", "--image", IMAGE, "-f"])
        .arg(&path)
        .args(FLAGS)
        .output()
        .expect("runs");
    let golden = std::fs::read(golden_dir().join("pod.out.yaml")).expect("golden");
    assert_eq!(out.stdout, golden);

    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["inject", "-f", "/nonexistent/manifest.yaml"])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/manifest.yaml"));
}

#[test]
fn help_states_what_is_preserved() {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["inject", "--help"])
        .output()
        .expect("runs");
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "copied byte for byte",
        "order of the keys",
        "Comments",
        "warden.dev/inject",
        "warden.dev/inbound-port",
        "warden.dev/metrics-port",
        "warden.dev/admin-port",
        "no longer accepted",
        "metrics_listen",
        "kubectl port-forward",
        "warden.dev/config-map",
        "warden.dev/capture: \"false\"",
        "NET_ADMIN",
        "uid 1337",
        "/app-health/<container>/<livez|readyz|startupz>",
        "HTTPS and gRPC probes",
        "exec probes",
        "warden.dev/sidecar-config",
        "warden.dev/app-probes",
        "warden.dev/skip-outbound-cidrs",
        "--serve",
        "AdmissionReview",
        "HTTP 400",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}
