//! Every manifest under deploy/kubernetes is valid, offline: each document reads as its
//! typed Kubernetes object (k8s-openapi, with a round trip that catches unknown fields),
//! SPIRE's ClusterSPIFFEID and kustomization.yaml as strict hand-written structs; every
//! kustomization lists only files that exist and every manifest is listed by one; every
//! embedded Warden config parses with Warden's own parsers; no sidecar config binds its admin
//! server (debug views) off loopback, and every probe and scrape of a sidecar goes to its
//! metrics-only listener (security invariant 6). For the RAG demo it also checks
//! that the chain is what the docs say: each hop admits only its predecessor, ports agree
//! between sidecar config, container and annotations, and each workload file is exactly
//! what `warden inject` makes of it. For the injection webhook, that the
//! MutatingWebhookConfiguration, its Service, Deployment and certificate point at each other
//! and that it injects with the control plane's trust domain and address.

mod k8s_typed;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde_yaml_ng::Value;
use warden_control::ControlPlaneConfig;
use warden_sidecar::SidecarConfig;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("reads dir")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(p);
        }
    }
}

struct Manifests {
    /// Every object document, with the file it came from.
    objects: Vec<(PathBuf, Value)>,
}

fn load() -> Manifests {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(!files.is_empty(), "no manifests found");
    // Kustomizations first, so the listing check below sees every one of them.
    let is_kustomization = |f: &PathBuf| f.file_name().is_some_and(|n| n == "kustomization.yaml");
    files.sort_by_key(|f| !is_kustomization(f));
    let mut listed = BTreeSet::new();
    let mut objects = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("reads manifest");
        let rel = file.strip_prefix(deploy_dir()).expect("inside deploy");
        if is_kustomization(file) {
            let k: k8s_typed::Kustomization =
                serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", rel.display()));
            assert_eq!(k.api_version, "kustomize.config.k8s.io/v1beta1", "{rel:?}");
            assert_eq!(k.kind, "Kustomization", "{rel:?}");
            let dir = file.parent().expect("has a parent");
            for r in &k.resources {
                let target = dir.join(r);
                assert!(
                    target.is_file() || target.join("kustomization.yaml").is_file(),
                    "{}: resource {r} is neither a file nor a kustomization directory",
                    rel.display()
                );
                listed.insert(target.canonicalize().expect("resource exists"));
            }
            continue;
        }
        let docs = k8s_typed::documents(&text).unwrap_or_else(|e| panic!("{rel:?}: {e:#}"));
        for (i, doc) in docs.into_iter().enumerate() {
            k8s_typed::check_object(&doc)
                .unwrap_or_else(|e| panic!("{}: document {}: {e:#}", rel.display(), i + 1));
            objects.push((file.clone(), doc));
        }
        assert!(
            listed.contains(&file.canonicalize().expect("exists")),
            "{} is not listed in its kustomization.yaml",
            rel.display()
        );
    }
    Manifests { objects }
}

#[test]
fn every_manifest_is_a_valid_typed_object_listed_by_a_kustomization() {
    let m = load();
    let kinds: BTreeSet<String> = m
        .objects
        .iter()
        .map(|(_, d)| d["kind"].as_str().unwrap_or("").to_owned())
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "ClusterSPIFFEID",
        "Job",
        "MutatingWebhookConfiguration",
        "Certificate",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "no {kind} in deploy/kubernetes");
    }
}

/// (namespace, name) -> data of every ConfigMap.
fn config_maps(m: &Manifests) -> BTreeMap<(String, String), BTreeMap<String, String>> {
    m.objects
        .iter()
        .filter(|(_, d)| d["kind"] == "ConfigMap")
        .map(|(_, d)| {
            let key = (
                d["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
                d["metadata"]["name"].as_str().unwrap_or("").to_owned(),
            );
            let data = serde_yaml_ng::from_value(d["data"].clone()).expect("string data");
            (key, data)
        })
        .collect()
}

#[test]
fn embedded_warden_configs_parse_with_wardens_own_parsers() -> anyhow::Result<()> {
    let m = load();
    let (mut sidecars, mut control_planes, mut policies) = (0, 0, 0);
    for ((ns, name), data) in config_maps(&m) {
        for (key, text) in data {
            let file = format!("ConfigMap {ns}/{name} key {key}");
            match key.as_str() {
                "sidecar.toml" => {
                    SidecarConfig::from_toml(&file, &text)?;
                    sidecars += 1;
                }
                "control-plane.toml" => {
                    ControlPlaneConfig::from_toml(&file, &text)?;
                    control_planes += 1;
                }
                "policy.toml" => {
                    warden_policy::parse_policy_file(&text).with_context(|| file.clone())?;
                    policies += 1;
                }
                _ => {}
            }
        }
    }
    // Control planes: base (embedded store) and ha (etcd).
    assert_eq!((sidecars, control_planes, policies), (4, 2, 1));
    Ok(())
}

const CHAIN: [&str; 4] = ["app", "retriever", "vectordb", "llm"];

fn id(sa: &str) -> String {
    format!("spiffe://example.org/ns/rag/sa/{sa}")
}

#[test]
fn the_rag_chain_admits_only_each_predecessor_and_its_ports_agree() -> anyhow::Result<()> {
    let m = load();
    let maps = config_maps(&m);
    for (i, tier) in CHAIN.iter().enumerate() {
        let deployment = m
            .objects
            .iter()
            .map(|(_, d)| d)
            .find(|d| {
                d["kind"] == "Deployment"
                    && d["metadata"]["namespace"] == "rag"
                    && d["metadata"]["name"] == *tier
            })
            .with_context(|| format!("no Deployment rag/{tier}"))?;
        let template = &deployment["spec"]["template"];
        let annotations = &template["metadata"]["annotations"];
        let spec = &template["spec"];
        let sidecar = spec["initContainers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "warden")
            .with_context(|| format!("{tier}: no warden sidecar"))?;
        let port = |name: &str| {
            sidecar["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
        };
        let config_map = spec["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "warden-config")
            .and_then(|v| v["configMap"]["name"].as_str())
            .with_context(|| format!("{tier}: no warden-config volume"))?;
        let toml = maps
            .get(&("rag".to_owned(), config_map.to_owned()))
            .and_then(|d| d.get("sidecar.toml"))
            .with_context(|| format!("{tier}: ConfigMap rag/{config_map} with sidecar.toml"))?;
        let config = SidecarConfig::from_toml(config_map, toml)?;

        assert_eq!(spec["serviceAccountName"], Value::from(*tier));
        let metrics = config
            .metrics_listen
            .with_context(|| format!("{tier}: no [admin] metrics_listen"))?;
        assert_eq!(port("warden-metrics"), Some(u64::from(metrics.port())));
        assert_eq!(port("warden-admin"), None, "{tier}: admin port exposed");
        assert!(
            config.admin_listen.ip().is_loopback(),
            "{tier}: the admin server binds loopback"
        );
        assert_eq!(annotations["prometheus.io/scrape"], Value::from("true"));
        assert_eq!(
            annotations["prometheus.io/port"],
            Value::from(metrics.port().to_string())
        );
        match i {
            0 => {
                assert!(config.inbound.is_empty(), "the app is the entry point");
                assert_eq!(port("warden-inbound"), None);
            }
            _ => {
                let [inbound] = config.inbound.as_slice() else {
                    panic!("{tier}: expected exactly one inbound listener");
                };
                let allow: Vec<String> = inbound.allow.iter().map(|p| p.to_string()).collect();
                assert_eq!(
                    allow,
                    [id(CHAIN[i - 1])],
                    "{tier} admits only its predecessor"
                );
                assert_eq!(
                    port("warden-inbound"),
                    inbound.listen.map(|l| u64::from(l.port()))
                );
            }
        }
        let servers: Vec<String> = config
            .outbound
            .iter()
            .map(|o| o.server_id.to_string())
            .collect();
        let expected: Vec<String> = CHAIN.get(i + 1).map(|next| id(next)).into_iter().collect();
        assert_eq!(servers, expected, "{tier} calls only its successor");
    }
    Ok(())
}

#[test]
fn the_demo_workloads_are_exactly_what_warden_inject_makes() {
    let dir = deploy_dir().join("examples/rag-demo");
    for tier in CHAIN {
        let path = dir.join(format!("{tier}.yaml"));
        let text = std::fs::read(&path).expect("reads");
        let image = k8s_typed::documents(&String::from_utf8_lossy(&text))
            .expect("parses")
            .iter()
            .filter(|d| d["kind"] == "Deployment")
            .find_map(|d| {
                d["spec"]["template"]["spec"]["initContainers"][0]["image"]
                    .as_str()
                    .map(str::to_owned)
            })
            .expect("a sidecar image");
        let out = Command::new(env!("CARGO_BIN_EXE_warden"))
            .args(["inject", "--image", &image, "-f"])
            .arg(&path)
            .output()
            .expect("runs warden inject");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == text,
            "{tier}.yaml is not what `warden inject` produces; regenerate it"
        );
    }
}

/// The pod template of a workload object (a bare Pod: the object itself).
fn pod_template(doc: &Value) -> Option<&Value> {
    match doc["kind"].as_str()? {
        "Pod" => Some(doc),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => Some(&doc["spec"]["template"]),
        "CronJob" => Some(&doc["spec"]["jobTemplate"]["spec"]["template"]),
        _ => None,
    }
}

/// Security invariant 6 on Kubernetes: a sidecar's admin server (with the debug views) binds
/// loopback; what the pod exposes to the kubelet and Prometheus is the metrics-only listener,
/// and every probe and scrape annotation of every sidecar points at exactly that port.
#[test]
fn sidecar_admin_stays_on_loopback_and_probes_and_scrapes_use_metrics_listen() -> anyhow::Result<()>
{
    let m = load();
    let maps = config_maps(&m);
    for ((ns, name), data) in &maps {
        let Some(toml) = data.get("sidecar.toml") else {
            continue;
        };
        let config = SidecarConfig::from_toml(name, toml)?;
        assert!(
            config.admin_listen.ip().is_loopback(),
            "ConfigMap {ns}/{name}: [admin] listen = {} is not loopback; expose \
             [admin] metrics_listen instead",
            config.admin_listen
        );
        if let Some(metrics) = config.metrics_listen {
            assert!(
                metrics.ip().is_unspecified(),
                "ConfigMap {ns}/{name}: metrics_listen {metrics}: the kubelet probes the pod IP"
            );
        }
    }

    let mut sidecars = 0;
    for (file, doc) in &m.objects {
        let Some(template) = pod_template(doc) else {
            continue;
        };
        let what = format!(
            "{}: {} {}",
            file.strip_prefix(deploy_dir()).unwrap_or(file).display(),
            doc["kind"].as_str().unwrap_or("?"),
            doc["metadata"]["name"].as_str().unwrap_or("?")
        );
        let spec = &template["spec"];
        let Some(sidecar) = ["initContainers", "containers"]
            .iter()
            .flat_map(|list| spec[*list].as_sequence().into_iter().flatten())
            .find(|c| c["name"] == "warden")
        else {
            continue;
        };
        sidecars += 1;
        let ns = doc["metadata"]["namespace"].as_str().unwrap_or("");
        let config_map = spec["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == "warden-config")
            .and_then(|v| v["configMap"]["name"].as_str())
            .with_context(|| format!("{what}: no warden-config volume"))?;
        let toml = maps
            .get(&(ns.to_owned(), config_map.to_owned()))
            .and_then(|d| d.get("sidecar.toml"))
            .with_context(|| format!("{what}: no ConfigMap {ns}/{config_map} with sidecar.toml"))?;
        let config = SidecarConfig::from_toml(config_map, toml)?;
        let metrics = config
            .metrics_listen
            .with_context(|| {
                format!("{what}: {config_map} has no [admin] metrics_listen to probe")
            })?
            .port();

        let ports = sidecar["ports"].as_sequence().cloned().unwrap_or_default();
        let resolve = |port: &Value| -> Option<u64> {
            match port {
                Value::String(name) => ports
                    .iter()
                    .find(|p| p["name"] == name.as_str())
                    .and_then(|p| p["containerPort"].as_u64()),
                other => other.as_u64(),
            }
        };
        assert!(
            ports
                .iter()
                .all(|p| p["containerPort"].as_u64() != Some(u64::from(config.admin_listen.port()))),
            "{what}: the sidecar exposes its admin port {}",
            config.admin_listen.port()
        );
        for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
            let http = &sidecar[probe]["httpGet"];
            if http.is_null() {
                continue;
            }
            assert_eq!(
                resolve(&http["port"]),
                Some(u64::from(metrics)),
                "{what}: {probe} port must be metrics_listen's port {metrics}"
            );
            let path = http["path"].as_str().unwrap_or("");
            assert!(
                ["/healthz", "/readyz"].contains(&path),
                "{what}: {probe} path {path:?} is not served by the metrics listener"
            );
        }
        let annotations = &template["metadata"]["annotations"];
        if annotations["prometheus.io/scrape"] == "true" {
            assert_eq!(
                annotations["prometheus.io/port"],
                Value::from(metrics.to_string()),
                "{what}: prometheus.io/port must be metrics_listen's port"
            );
            assert_eq!(annotations["prometheus.io/path"], "/metrics", "{what}");
        }
    }
    assert_eq!(sidecars, CHAIN.len(), "workloads with a warden sidecar");
    Ok(())
}

fn object<'a>(m: &'a Manifests, kind: &str, namespace: &str, name: &str) -> &'a Value {
    m.objects
        .iter()
        .map(|(_, d)| d)
        .find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"] == name
                && (namespace.is_empty() || d["metadata"]["namespace"] == namespace)
        })
        .unwrap_or_else(|| panic!("no {kind} {namespace}/{name}"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The webhook is reachable where its configuration says (Service, port, path), with a
/// certificate for that name whose CA the API server is given; it selects only pods of
/// namespaces labelled warden.dev/inject=enabled on CREATE, lets a pod labelled
/// warden.dev/inject: "false" (its own included) through untouched, and injects with the
/// control plane's trust domain and address.
#[test]
fn the_injection_webhook_is_wired_to_its_service_certificate_and_namespaces() -> anyhow::Result<()>
{
    let m = load();
    let config = m
        .objects
        .iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == "MutatingWebhookConfiguration")
        .context("no MutatingWebhookConfiguration")?;
    let [hook] = config["webhooks"]
        .as_sequence()
        .context("webhooks")?
        .as_slice()
    else {
        panic!("expected one webhook");
    };
    assert_eq!(strings(&hook["admissionReviewVersions"]), ["v1"]);
    assert_eq!(hook["sideEffects"], "None");
    assert!(
        ["Fail", "Ignore"].contains(&hook["failurePolicy"].as_str().unwrap_or("")),
        "failurePolicy must be explicit"
    );
    assert_eq!(
        hook["namespaceSelector"]["matchLabels"]["warden.dev/inject"],
        "enabled"
    );
    let opt_out = &hook["objectSelector"]["matchExpressions"][0];
    assert_eq!(opt_out["key"], "warden.dev/inject");
    assert_eq!(opt_out["operator"], "NotIn");
    assert_eq!(strings(&opt_out["values"]), ["false"]);
    let [rule] = hook["rules"].as_sequence().context("rules")?.as_slice() else {
        panic!("expected one rule");
    };
    assert_eq!(strings(&rule["apiGroups"]), [""]);
    assert_eq!(strings(&rule["apiVersions"]), ["v1"]);
    assert_eq!(strings(&rule["operations"]), ["CREATE"]);
    assert_eq!(strings(&rule["resources"]), ["pods"]);

    let target = &hook["clientConfig"]["service"];
    assert_eq!(target["path"], "/inject");
    let ns = target["namespace"].as_str().context("service namespace")?;
    let service = object(&m, "Service", ns, target["name"].as_str().context("name")?);
    let port = service["spec"]["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["port"] == target["port"])
        .context("the webhook's Service port")?;
    let selector = &service["spec"]["selector"];
    let deployment = m
        .objects
        .iter()
        .map(|(_, d)| d)
        .find(|d| {
            d["kind"] == "Deployment"
                && d["metadata"]["namespace"] == ns
                && selector
                    .as_mapping()
                    .into_iter()
                    .flatten()
                    .all(|(k, v)| d["spec"]["template"]["metadata"]["labels"][k] == *v)
        })
        .context("the Deployment behind the webhook's Service")?;
    let template = &deployment["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["warden.dev/inject"], "false",
        "the webhook must never wait on itself"
    );
    let container = &template["spec"]["containers"][0];
    let args = strings(&container["args"]);
    assert_eq!(args[..2], ["inject", "--serve"]);
    let flag = |name: &str| {
        args.iter()
            .position(|a| *a == name)
            .and_then(|i| args.get(i + 1))
            .copied()
            .unwrap_or_else(|| panic!("the webhook has no {name}"))
    };
    let listen_port: u64 = flag("--listen")
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .context("--listen port")?;
    let container_port = container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == port["targetPort"] || p["containerPort"] == port["targetPort"])
        .context("the Service's targetPort on the webhook container")?;
    assert_eq!(container_port["containerPort"].as_u64(), Some(listen_port));

    // The serving certificate: its Secret is what --tls-dir holds, its name the Service's,
    // and the API server is given its CA.
    let tls_dir = flag("--tls-dir");
    let mount = container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["mountPath"] == tls_dir)
        .context("--tls-dir is a volume mount")?;
    let secret = template["spec"]["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
        .and_then(|v| v["secret"]["secretName"].as_str())
        .context("--tls-dir is a Secret")?;
    let inject_ca_from = config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
        .as_str()
        .context("caBundle from cert-manager")?;
    let (cert_ns, cert_name) = inject_ca_from.split_once('/').context("ns/name")?;
    let certificate = object(&m, "Certificate", cert_ns, cert_name);
    assert_eq!(certificate["spec"]["secretName"], secret);
    let dns = format!("{}.{ns}.svc", target["name"].as_str().unwrap_or(""));
    assert!(
        strings(&certificate["spec"]["dnsNames"]).contains(&dns.as_str()),
        "the certificate must name {dns}"
    );

    // It injects for this cluster's control plane.
    let maps = config_maps(&m);
    let control = maps
        .values()
        .find_map(|d| d.get("control-plane.toml"))
        .context("control-plane.toml")?;
    let control = ControlPlaneConfig::from_toml("control-plane.toml", control)?;
    assert_eq!(flag("--trust-domain"), control.trust_domain.as_str());
    let url = flag("--control-plane");
    let cp_service = object(&m, "Service", "warden-system", "warden-control");
    assert!(
        url.starts_with("https://warden-control.warden-system.svc")
            && url.ends_with(&format!(
                ":{}",
                cp_service["spec"]["ports"][0]["port"].as_u64().unwrap_or(0)
            )),
        "--control-plane {url} is not the control plane's Service"
    );
    assert!(
        object(&m, "Namespace", "", ns)["metadata"]["labels"]["warden.dev/inject"].is_null(),
        "the webhook's own namespace must not be injected"
    );
    Ok(())
}

/// The HA variant (`deploy/kubernetes/ha`): 3 replicas, at most one down at a time, never
/// two on one node, all on the same etcd store with client TLS from a Secret that is
/// mounted where the config reads it.
#[test]
fn the_ha_control_plane_runs_three_spread_replicas_on_etcd_with_client_tls() -> anyhow::Result<()> {
    let m = load();
    let in_ha = |f: &Path| f.components().any(|c| c.as_os_str() == "ha");
    let find = |kind: &str| {
        m.objects
            .iter()
            .find(|(f, d)| in_ha(f) && d["kind"] == kind)
            .map(|(_, d)| d)
            .with_context(|| format!("no {kind} in deploy/kubernetes/ha"))
    };
    let deployment = find("Deployment")?;
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(3));
    let labels = &spec["template"]["metadata"]["labels"];
    let name = labels["app.kubernetes.io/name"]
        .as_str()
        .context("pod label")?;
    let [term] = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_sequence()
        .context("required pod anti-affinity")?
        .as_slice()
    else {
        panic!("expected one anti-affinity term");
    };
    assert_eq!(term["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        term["labelSelector"]["matchLabels"]["app.kubernetes.io/name"],
        name
    );
    let pdb = find("PodDisruptionBudget")?;
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(2));
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        name
    );
    let service = find("Service")?;
    assert_eq!(service["spec"]["selector"]["app.kubernetes.io/name"], name);

    // The config the pods mount is an etcd store whose TLS files are in the mounted Secret.
    let pod = &spec["template"]["spec"];
    let volumes = pod["volumes"].as_sequence().context("volumes")?;
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .with_context(|| format!("volume {name}"))
    };
    let [container] = pod["containers"]
        .as_sequence()
        .context("containers")?
        .as_slice()
    else {
        panic!("expected one container");
    };
    let mount_of = |volume: &str| {
        container["volumeMounts"]
            .as_sequence()
            .and_then(|ms| ms.iter().find(|m| m["name"] == volume))
            .and_then(|m| m["mountPath"].as_str())
            .with_context(|| format!("mount of {volume}"))
    };
    let config_map = volume("config")?["configMap"]["name"]
        .as_str()
        .context("config ConfigMap")?;
    let maps = config_maps(&m);
    let text = maps
        .get(&("warden-system".to_owned(), config_map.to_owned()))
        .and_then(|d| d.get("control-plane.toml"))
        .context("the HA control-plane.toml")?;
    let config = ControlPlaneConfig::from_toml("control-plane.toml", text)?;
    let warden_control::config::StoreConfig::Etcd(etcd) = &config.store else {
        panic!("the HA control plane is not on etcd: {:?}", config.store);
    };
    assert!(etcd.endpoints.len() >= 3, "{:?}", etcd.endpoints);
    let secret = volume("etcd-client")?;
    assert_eq!(secret["secret"]["secretName"], "warden-etcd-client");
    let secret_dir = Path::new(mount_of("etcd-client")?);
    let (cert, key) = etcd.client.as_ref().context("a client certificate")?;
    for file in [&etcd.ca, cert, key] {
        assert_eq!(
            file.parent(),
            Some(secret_dir),
            "{} is not in the Secret",
            file.display()
        );
    }
    // Nothing durable on the pod: every replica is interchangeable.
    assert!(
        volume("data")?["emptyDir"].is_mapping(),
        "data_dir should be an emptyDir"
    );
    assert_eq!(Path::new(mount_of("data")?), config.data_dir);
    Ok(())
}
