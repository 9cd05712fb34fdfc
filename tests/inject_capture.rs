//! `warden inject` under traffic capture (the default), on the golden outputs and on
//! small inputs: the `warden-init` container has NET_ADMIN and NET_RAW and nothing else and
//! runs before the sidecar, the sidecar runs as the proxy uid, the generated sidecar config
//! is one the sidecar accepts and names every captured port and probe, probes of captured
//! ports point at the sidecar and come back in explicit mode, and what capture cannot
//! honour is refused with the annotation or flag to change.

mod k8s_typed;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_yaml_ng::Value;
use warden_sidecar::SidecarConfig;

const IMAGE: &str = "ghcr.io/warden-mesh/warden:test";
const FLAGS: [&str; 4] = [
    "--trust-domain",
    "example.org",
    "--control-plane",
    "https://warden-control.warden-system.svc.cluster.local:7443",
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/inject")
}

fn run(input: &str, flags: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(["inject", "-f", "-", "--image", IMAGE])
        .args(flags)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("warden starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writes");
    child.wait_with_output().expect("warden finishes")
}

fn inject(input: &str) -> String {
    let out = run(input, &FLAGS);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn refused(input: &str, flags: &[&str]) -> String {
    let out = run(input, flags);
    assert!(!out.status.success(), "must be refused");
    assert!(out.stdout.is_empty(), "nothing written when refused");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// (pod template or bare Pod, its name) of every workload in the golden outputs.
fn golden_pods() -> Vec<(String, Value)> {
    let mut pods = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(golden_dir())
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".out.yaml"))
        .collect();
    files.sort();
    for file in files {
        let name = file
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).expect("reads");
        for doc in k8s_typed::documents(&text).expect("parses") {
            collect(&name, &doc, &mut pods);
        }
    }
    pods
}

fn collect(file: &str, doc: &Value, pods: &mut Vec<(String, Value)>) {
    match doc["kind"].as_str().unwrap_or("") {
        "List" => {
            for item in doc["items"].as_sequence().into_iter().flatten() {
                collect(file, item, pods);
            }
        }
        "Pod" => pods.push((file.to_owned(), doc.clone())),
        "CronJob" => pods.push((
            file.to_owned(),
            doc["spec"]["jobTemplate"]["spec"]["template"].clone(),
        )),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => pods.push((file.to_owned(), doc["spec"]["template"].clone())),
        _ => {}
    }
}

fn container<'a>(spec: &'a Value, list: &str, name: &str) -> Option<(usize, &'a Value)> {
    spec[list]
        .as_sequence()?
        .iter()
        .enumerate()
        .find(|(_, c)| c["name"] == name)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

#[test]
fn captured_pods_get_warden_init_with_only_net_admin_and_net_raw_before_a_sidecar_running_as_1337()
{
    let (mut captured, mut explicit) = (0, 0);
    for (file, pod) in golden_pods() {
        let annotations = &pod["metadata"]["annotations"];
        if annotations["warden.dev/inject"] == "false" {
            continue;
        }
        let spec = &pod["spec"];
        let (at, sidecar) = container(spec, "initContainers", "warden")
            .unwrap_or_else(|| panic!("{file}: no sidecar"));
        let context = &sidecar["securityContext"];
        if annotations["warden.dev/capture"] == "false" {
            explicit += 1;
            assert!(
                container(spec, "initContainers", "warden-init").is_none(),
                "{file}: explicit mode has no warden-init"
            );
            assert_eq!(context["runAsUser"], Value::from(65532), "{file}");
            continue;
        }
        captured += 1;
        let (init_at, init) = container(spec, "initContainers", "warden-init")
            .unwrap_or_else(|| panic!("{file}: no warden-init"));
        assert_eq!(
            init_at + 1,
            at,
            "{file}: warden-init runs right before the sidecar"
        );
        assert_eq!(
            init["restartPolicy"],
            Value::Null,
            "{file}: an ordinary init container"
        );
        assert_eq!(
            init["image"],
            Value::from(IMAGE.replace("warden:", "warden-init:")),
            "{file}: the init image (with iptables) that goes with the sidecar image"
        );
        let sc = &init["securityContext"];
        assert_eq!(
            strings(&sc["capabilities"]["add"]),
            ["NET_ADMIN", "NET_RAW"],
            "{file}: capabilities added"
        );
        assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{file}");
        assert_eq!(sc["runAsUser"], Value::from(0), "{file}");
        assert_eq!(sc["runAsNonRoot"], Value::from(false), "{file}");
        assert_eq!(sc["allowPrivilegeEscalation"], Value::from(false), "{file}");
        assert_eq!(sc["readOnlyRootFilesystem"], Value::from(true), "{file}");
        assert!(sc.get("privileged").is_none(), "{file}: never privileged");
        let keys: Vec<&str> = sc
            .as_mapping()
            .expect("securityContext")
            .keys()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "runAsUser",
                "runAsNonRoot",
                "allowPrivilegeEscalation",
                "readOnlyRootFilesystem",
                "capabilities"
            ],
            "{file}: nothing else in warden-init's securityContext"
        );
        let args = strings(&init["args"]);
        assert_eq!(
            args[..7],
            [
                "init",
                "--proxy-uid",
                "1337",
                "--inbound-port",
                "15006",
                "--outbound-port",
                "15001"
            ]
        );
        let metrics = sidecar["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "warden-metrics")
            .and_then(|p| p["containerPort"].as_u64())
            .expect("metrics port");
        let skip = args
            .iter()
            .position(|a| *a == "--skip-inbound-ports")
            .map(|i| args[i + 1])
            .expect("--skip-inbound-ports");
        assert!(
            skip.split(',').any(|p| p == metrics.to_string()),
            "{file}: the kubelet must reach the metrics port {metrics}: {skip}"
        );
        assert_eq!(
            context["runAsUser"],
            Value::from(1337),
            "{file}: the proxy uid"
        );
        assert_eq!(context["runAsNonRoot"], Value::from(true), "{file}");
        let ports: Vec<&str> = sidecar["ports"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(
            ports,
            ["warden-metrics"],
            "{file}: no inbound port under capture"
        );
    }
    assert!(
        captured >= 6 && explicit >= 5,
        "{captured} captured, {explicit} explicit"
    );
}

/// Every generated config is one the sidecar accepts: [capture] on Warden's ports, one
/// `[[inbound]]` per captured TCP port, the metrics listener, and an `[[app_probe]]` for
/// every probe that now points at the sidecar, checking the app's original port.
#[test]
fn generated_configs_parse_and_cover_every_captured_port_and_rewritten_probe() {
    let mut generated = 0;
    for (file, pod) in golden_pods() {
        let Some(toml) = pod["metadata"]["annotations"]["warden.dev/sidecar-config"].as_str()
        else {
            continue;
        };
        generated += 1;
        let config = SidecarConfig::from_toml(&file, toml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.capture.inbound,
            Some("0.0.0.0:15006".parse().expect("addr"))
        );
        assert_eq!(
            config.capture.outbound,
            Some("127.0.0.1:15001".parse().expect("addr"))
        );
        assert!(config.admin_listen.ip().is_loopback());
        let metrics = config.metrics_listen.expect("metrics_listen").port();
        let spec = &pod["spec"];
        let volume = spec["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "warden-config")
            .expect("config volume");
        assert_eq!(
            volume["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            "metadata.annotations['warden.dev/sidecar-config']",
            "{file}"
        );
        let skipped: Vec<u16> = pod["metadata"]["annotations"]["warden.dev/skip-inbound-ports"]
            .as_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        let mut app_ports = Vec::new();
        for list in ["initContainers", "containers"] {
            for c in spec[list].as_sequence().into_iter().flatten() {
                if c["name"] == "warden" || c["name"] == "warden-init" {
                    continue;
                }
                for p in c["ports"].as_sequence().into_iter().flatten() {
                    let port = p["containerPort"].as_u64().expect("port") as u16;
                    let tcp = p["protocol"].as_str().unwrap_or("TCP") == "TCP";
                    if tcp && !skipped.contains(&port) && !app_ports.contains(&port) {
                        app_ports.push(port);
                    }
                }
                for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                    let get = &c[probe]["httpGet"];
                    let Some(path) = get["path"]
                        .as_str()
                        .filter(|p| p.starts_with("/app-health/"))
                    else {
                        continue;
                    };
                    assert_eq!(
                        get["port"].as_u64(),
                        Some(u64::from(metrics)),
                        "{file}: {path}"
                    );
                    let entry = config
                        .app_probes
                        .iter()
                        .find(|e| e.path == path)
                        .unwrap_or_else(|| panic!("{file}: no [[app_probe]] for {path}"));
                    assert!(entry.forward.ip().is_loopback(), "{file}: {path}");
                }
            }
        }
        let listeners: Vec<u16> = config.inbound.iter().filter_map(|l| l.port).collect();
        assert_eq!(
            listeners, app_ports,
            "{file}: one [[inbound]] per captured port"
        );
        assert!(
            config
                .inbound
                .iter()
                .all(|l| l.listen.is_none() && l.forward.starts_with("127.0.0.1:"))
        );
    }
    assert!(generated >= 4, "{generated} generated configs");
}

#[test]
fn probes_are_moved_to_the_sidecar_and_come_back_in_explicit_mode() {
    let input = std::fs::read_to_string(golden_dir().join("probes.in.yaml")).expect("in");
    let out = run(&input, &FLAGS);
    assert!(out.status.success());
    let warnings = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "HTTPS probe of captured port 8443",
        "gRPC probe of captured port 50051",
    ] {
        assert!(warnings.contains(needle), "{warnings}");
    }
    let injected = String::from_utf8(out.stdout).expect("utf-8");
    let pod = &k8s_typed::documents(&injected).expect("yaml")[0];
    let (_, api) = container(&pod["spec"], "containers", "api").expect("api");
    assert_eq!(
        api["livenessProbe"]["httpGet"]["path"],
        "/app-health/api/livez"
    );
    assert_eq!(api["livenessProbe"]["httpGet"]["port"], Value::from(15020));
    assert_eq!(api["livenessProbe"]["timeoutSeconds"], Value::from(3));
    assert_eq!(
        api["readinessProbe"]["httpGet"]["port"], "admin",
        "a skipped port stays"
    );
    assert!(api["startupProbe"]["exec"].is_mapping(), "exec stays");
    let (_, shipper) = container(&pod["spec"], "initContainers", "log-shipper").expect("shipper");
    assert_eq!(
        shipper["readinessProbe"]["httpGet"]["path"], "/app-health/log-shipper/readyz",
        "a tcpSocket probe of the app's own native sidecar"
    );

    // Explicit mode (capture off, skip annotations gone): the app's probes are back, as
    // are its ports; warden-init, its volume and the generated annotations are gone.
    let explicit = injected
        .replace(
            "    warden.dev/skip-inbound-ports: \"9090\"\n    warden.dev/skip-outbound-ports: \"5432,6379\"\n    warden.dev/skip-outbound-cidrs: \"10.96.0.1/32, fd00:10:96::1/128\"\n",
            "    warden.dev/capture: \"false\"\n    warden.dev/inbound-port: \"9443\"\n",
        );
    assert_ne!(explicit, injected);
    let back = inject(&explicit);
    let pod = &k8s_typed::documents(&back).expect("yaml")[0];
    for gone in [
        "warden-init",
        "warden-xtables",
        "warden.dev/sidecar-config",
        "warden.dev/app-probes",
        "/app-health/",
    ] {
        assert!(!back.contains(gone), "{gone} is still there:\n{back}");
    }
    let (_, api) = container(&pod["spec"], "containers", "api").expect("api");
    assert_eq!(api["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(api["livenessProbe"]["httpGet"]["port"], Value::from(8080));
    assert_eq!(
        api["livenessProbe"]["httpGet"]["httpHeaders"][0]["value"],
        "api.rag.internal"
    );
    let (_, shipper) = container(&pod["spec"], "initContainers", "log-shipper").expect("shipper");
    assert_eq!(
        shipper["readinessProbe"]["tcpSocket"]["port"],
        Value::from(24224)
    );
    let (_, sidecar) = container(&pod["spec"], "initContainers", "warden").expect("sidecar");
    assert_eq!(sidecar["securityContext"]["runAsUser"], Value::from(65532));
    // Explicit mode, injected again: unchanged. Capture again: the first output.
    assert_eq!(inject(&back), back);
    let recaptured = inject(&back.replace(
        "    warden.dev/capture: \"false\"\n    warden.dev/inbound-port: \"9443\"\n",
        "    warden.dev/skip-inbound-ports: \"9090\"\n    warden.dev/skip-outbound-ports: \"5432,6379\"\n    warden.dev/skip-outbound-cidrs: \"10.96.0.1/32, fd00:10:96::1/128\"\n",
    ));
    let again = &k8s_typed::documents(&recaptured).expect("yaml")[0];
    let first = &k8s_typed::documents(&injected).expect("yaml")[0];
    assert_eq!(
        again["spec"], first["spec"],
        "capture again: the same pod spec"
    );
}

#[test]
fn a_pod_with_its_own_config_map_is_told_which_app_probes_its_toml_needs() {
    let input = std::fs::read_to_string(golden_dir().join("job.in.yaml")).expect("in");
    let out = run(&input, &FLAGS);
    assert!(out.status.success());
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        warnings.contains("ConfigMap \"reindex-warden\""),
        "{warnings}"
    );
    assert!(warnings.contains("warden.dev/app-probes"), "{warnings}");
    // No trust domain is needed when nothing is generated.
    let out = run(&input, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // warden-init may have an image of its own (warden plus iptables).
    let out = run(&input, &["--init-image", "example.com/warden-init:1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let doc = &k8s_typed::documents(&text).expect("yaml")[0];
    let spec = &doc["spec"]["template"]["spec"];
    let image =
        |name: &str| container(spec, "initContainers", name).map(|(_, c)| c["image"].clone());
    assert_eq!(
        image("warden-init"),
        Some(Value::from("example.com/warden-init:1"))
    );
    assert_eq!(image("warden"), Some(Value::from(IMAGE)));
}

const POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: web
  annotations:
    example.com/x: \"1\"
spec:
  containers:
  - name: web
    image: registry.example.com/web:1
    ports:
    - containerPort: 8080
";

fn with_annotation(line: &str) -> String {
    POD.replace(
        "    example.com/x: \"1\"\n",
        &format!("    example.com/x: \"1\"\n    {line}\n"),
    )
}

#[test]
fn what_capture_cannot_honour_is_refused_saying_what_to_change() {
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (
            POD.replace("spec:\n", "spec:\n  hostNetwork: true\n"),
            FLAGS.to_vec(),
            "hostNetwork",
        ),
        (
            POD.replace(
                "spec:\n",
                "spec:\n  securityContext:\n    runAsUser: 1337\n",
            ),
            FLAGS.to_vec(),
            "runs as uid 1337",
        ),
        (
            POD.replace(
                "    ports:\n",
                "    securityContext:\n      runAsUser: 1337\n    ports:\n",
            ),
            FLAGS.to_vec(),
            "runs as uid 1337",
        ),
        (
            with_annotation("warden.dev/inbound-port: \"8443\""),
            FLAGS.to_vec(),
            "warden.dev/capture: \"false\"",
        ),
        (
            with_annotation(
                "warden.dev/capture: \"false\"\n    warden.dev/skip-outbound-ports: \"53\"",
            ),
            FLAGS.to_vec(),
            "warden.dev/skip-outbound-ports applies to traffic capture",
        ),
        (
            with_annotation("warden.dev/skip-inbound-ports: \"80,x\""),
            FLAGS.to_vec(),
            "\"x\" is not a port number",
        ),
        (
            with_annotation("warden.dev/skip-outbound-cidrs: \"10.0.0.0/40\""),
            FLAGS.to_vec(),
            "is not a CIDR",
        ),
        (
            with_annotation("warden.dev/capture: \"maybe\""),
            FLAGS.to_vec(),
            "expected \"true\" or \"false\"",
        ),
        (
            POD.replace("8080", "15006"),
            FLAGS.to_vec(),
            "[capture] inbound",
        ),
        (
            POD.replace("8080", "15000"),
            FLAGS.to_vec(),
            "[admin] listen",
        ),
        (POD.to_owned(), vec![], "--trust-domain"),
        (
            POD.replace("    ports:\n    - containerPort: 8080\n", ""),
            FLAGS.to_vec(),
            "no TCP container port",
        ),
        (
            with_annotation(
                "warden.dev/injected: \"true\"\n    warden.dev/app-probes: \"[[app_probe]]\\npath = 1\\n\"",
            ),
            FLAGS.to_vec(),
            "warden.dev/app-probes cannot be read back",
        ),
        (
            POD.to_owned(),
            vec!["--trust-domain", "Not A Domain!"],
            "--trust-domain",
        ),
        (
            POD.to_owned(),
            vec![
                "--trust-domain",
                "example.org",
                "--control-plane",
                "http://cp:7443",
            ],
            "--control-plane",
        ),
    ];
    for (input, flags, needle) in cases {
        let err = refused(&input, &flags);
        assert!(
            err.contains(needle),
            "expected {needle:?} in:\n{err}\nfor:\n{input}"
        );
    }
    // A rewritten probe whose original is not on record cannot be put back.
    let injected = inject(&POD.replace(
        "    ports:\n    - containerPort: 8080\n",
        "    ports:\n    - containerPort: 8080\n    readinessProbe:\n      tcpSocket: {port: 8080}\n",
    ));
    let without_record = remove_annotation(&injected, "warden.dev/app-probes");
    let err = refused(&without_record, &FLAGS);
    assert!(err.contains("has no entry for it"), "{err}");
}

/// `text` without the annotation `key` (a literal block: its line and the indented ones
/// after it).
fn remove_annotation(text: &str, key: &str) -> String {
    let mut out = String::new();
    let mut skipping = None;
    for line in text.split_inclusive('\n') {
        let indent = line.len() - line.trim_start().len();
        if let Some(at) = skipping {
            if indent > at {
                continue;
            }
            skipping = None;
        }
        if line.trim_start().starts_with(&format!("{key}:")) {
            skipping = Some(indent);
            continue;
        }
        out.push_str(line);
    }
    out
}

/// A captured pod that calls other services: `warden.dev/outbound` and `warden.dev/egress`
/// become `[[outbound]] destinations` and `[[egress]]` in the generated config, which the
/// sidecar's own parser accepts; a malformed line names the annotation and the line.
#[test]
fn outbound_and_egress_annotations_become_capture_listeners() {
    let input = with_annotation(
        "warden.dev/outbound: |\n      retriever retriever.rag.svc.cluster.local:8080,198.18.0.3:8080 spiffe://example.org/ns/rag/sa/retriever\n    warden.dev/egress: \"llm-api api.llm.example 443\"",
    );
    let out = inject(&input);
    let doc: Value = serde_yaml_ng::from_str(&out).expect("yaml");
    let toml = doc["metadata"]["annotations"]["warden.dev/sidecar-config"]
        .as_str()
        .expect("generated config");
    let config = warden_sidecar::SidecarConfig::from_toml("generated", toml).expect("valid");
    assert_eq!(config.outbound.len(), 1, "{toml}");
    assert_eq!(config.outbound[0].name, "retriever");
    assert_eq!(
        config.outbound[0].destinations,
        ["retriever.rag.svc.cluster.local:8080", "198.18.0.3:8080"]
    );
    assert_eq!(
        config.outbound[0].server_id.as_str(),
        "spiffe://example.org/ns/rag/sa/retriever"
    );
    assert_eq!(config.egress.len(), 1);
    assert_eq!(config.egress[0].hosts, ["api.llm.example"]);
    assert_eq!(config.egress[0].ports, [443]);
    // Idempotent with the annotations.
    assert_eq!(inject(&out), out);

    let e = refused(
        &with_annotation("warden.dev/outbound: \"retriever only-two-fields\""),
        &FLAGS,
    );
    assert!(e.contains("warden.dev/outbound line 1"), "{e}");
    let e = refused(
        &with_annotation("warden.dev/egress: \"llm api.llm.example https\""),
        &FLAGS,
    );
    assert!(e.contains("warden.dev/egress line 1"), "{e}");
    let e = refused(
        &with_annotation("warden.dev/outbound: \"r r:80 not-a-spiffe-id\""),
        &FLAGS,
    );
    assert!(e.contains("outbound[0].server_id"), "{e}");
}
