//! Finds the pod template of each supported workload kind and adds the Warden sidecar to it.
//!
//! It must never touch a document it does not understand (other kinds, other API groups),
//! never overwrite something a user wrote (a foreign `warden` container or volume is a
//! conflict, a `prometheus.io/*` annotation is left as it is), and never produce a pod that
//! differs between a first and a second run with the same options.

use serde_yaml_ng::{Mapping, Value};

use super::settings::{ConfigSource, Decision, Settings};
use super::{Options, capture, containers, probes};

/// Annotations read from the pod template (or from a bare Pod's own metadata).
pub const ANNOTATION_INJECT: &str = "warden.dev/inject";
pub const ANNOTATION_INBOUND_PORT: &str = "warden.dev/inbound-port";
pub const ANNOTATION_METRICS_PORT: &str = "warden.dev/metrics-port";
/// Read by earlier versions as the port of the whole admin server, which then had to bind
/// the pod IP. Refused now, with a message pointing at [`ANNOTATION_METRICS_PORT`].
pub const ANNOTATION_ADMIN_PORT: &str = "warden.dev/admin-port";
pub const ANNOTATION_CONFIG_MAP: &str = "warden.dev/config-map";
/// `"false"`: explicit mode (the sidecar's own listeners), as before traffic capture.
pub const ANNOTATION_CAPTURE: &str = "warden.dev/capture";
/// Comma-separated lists handed to `warden init`: traffic left alone by capture.
pub const ANNOTATION_SKIP_INBOUND_PORTS: &str = "warden.dev/skip-inbound-ports";
pub const ANNOTATION_SKIP_OUTBOUND_PORTS: &str = "warden.dev/skip-outbound-ports";
pub const ANNOTATION_SKIP_OUTBOUND_CIDRS: &str = "warden.dev/skip-outbound-cidrs";
/// Capture mode, generated config: the services the pod calls, one per line,
/// `NAME HOST:PORT[,HOST:PORT...] SERVER_SPIFFE_ID` (an `[[outbound]]` with `destinations`).
pub const ANNOTATION_OUTBOUND: &str = "warden.dev/outbound";
/// Capture mode, generated config: TLS to non-mesh hosts let through by SNI, one per line,
/// `NAME HOST[,HOST...] PORT[,PORT...]` (an `[[egress]]`).
pub const ANNOTATION_EGRESS: &str = "warden.dev/egress";
/// Written by `warden inject`: the generated `sidecar.toml` (capture mode without
/// `warden.dev/config-map`), mounted into the sidecar through the downward API.
pub const ANNOTATION_SIDECAR_CONFIG: &str = "warden.dev/sidecar-config";
/// Written by `warden inject`: the `[[app_probe]]` entries of the probes it rewrote, which
/// also hold the app's original checks (see `probes.rs`).
pub const ANNOTATION_APP_PROBES: &str = "warden.dev/app-probes";
/// Written by `warden inject`: marks the `warden` container and volumes as its own, so a
/// second run may re-render them instead of refusing them as a conflict.
pub const ANNOTATION_INJECTED: &str = "warden.dev/injected";

pub const CONTAINER_NAME: &str = "warden";
/// The init container that runs `warden init` (capture mode).
pub const INIT_CONTAINER_NAME: &str = "warden-init";
/// The app's containers in a pod spec (init containers, then the others), each with its
/// name (`""` when it has none): every container but Warden's own two.
pub fn app_containers(spec: &Mapping) -> impl Iterator<Item = (&str, &Value)> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|list| {
            spec.get(list)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
        })
        .map(|c| (c.get("name").and_then(Value::as_str).unwrap_or(""), c))
        .filter(|(name, _)| *name != CONTAINER_NAME && *name != INIT_CONTAINER_NAME)
}

/// `/run` of `warden-init`: room for the xtables lock on a read-only root filesystem.
pub const XTABLES_VOLUME: &str = "warden-xtables";
pub const CONFIG_VOLUME: &str = "warden-config";
pub const SOCKET_VOLUME: &str = "warden-workload-api";
pub const DATA_VOLUME: &str = "warden-data";
pub const CONFIG_DIR: &str = "/etc/warden";
pub const SOCKET_DIR: &str = "/spiffe-workload-api";
pub const SOCKET_ENDPOINT: &str = "unix:///spiffe-workload-api/spire-agent.sock";
pub const DATA_DIR: &str = "/var/lib/warden";
pub const DEFAULT_INBOUND_PORT: u16 = 8443;
/// The sidecar's metrics-only listener (`[admin] metrics_listen`): `/metrics`, `/healthz`,
/// `/readyz`, nothing else. The kubelet and Prometheus reach the pod IP, so this is the one
/// admin port a pod exposes; the full admin server stays on loopback (security invariant 6,
/// `docs/security.md`).
pub const DEFAULT_METRICS_PORT: u16 = 15020;
/// The name of the metrics port in the container's port list; the probes refer to it.
pub const METRICS_PORT_NAME: &str = "warden-metrics";

/// A problem with one workload, said so the user can fix the manifest.
#[derive(Debug, thiserror::Error)]
#[error("{path}{kind} {name:?}: {problem}")]
pub struct WorkloadError {
    /// Where inside the document, e.g. `items[2]: `; empty for a top-level object.
    pub path: String,
    pub kind: String,
    pub name: String,
    pub problem: String,
}

/// Injects into `doc` (one parsed YAML document) in place. Documents of other kinds are
/// left alone. What the user should know but is not an error goes to `warnings`.
pub fn inject_object(
    doc: &mut Value,
    opts: &Options,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<(), WorkloadError> {
    let Value::Mapping(object) = doc else {
        return Ok(());
    };
    let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::to_owned);
    let (Some(api_version), Some(kind)) = (text("apiVersion"), text("kind")) else {
        return Ok(());
    };
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let name = object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let fail = |problem: String| WorkloadError {
        path: path.to_owned(),
        kind: kind.clone(),
        name: name.clone(),
        problem,
    };
    let template_path: &[&str] = match (group, kind.as_str()) {
        ("", "List") => {
            if let Some(Value::Sequence(items)) = object.get_mut("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    inject_object(item, opts, &format!("{path}items[{i}]: "), warnings)?;
                }
            }
            return Ok(());
        }
        ("", "Pod") => &[],
        ("", "ReplicationController")
        | ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job") => &["spec", "template"],
        ("batch", "CronJob") => &["spec", "jobTemplate", "spec", "template"],
        _ => return Ok(()),
    };
    let mut holder = object;
    let mut walked = String::new();
    for key in template_path {
        walked.push_str(if walked.is_empty() { "" } else { "." });
        walked.push_str(key);
        holder = match holder.get_mut(*key) {
            Some(Value::Mapping(m)) => m,
            _ => return Err(fail(format!("{walked} is missing or not a mapping"))),
        };
    }
    PodInjector {
        opts,
        workload_name: &name,
        fail: &fail,
    }
    .inject(holder, warnings)
}

struct PodInjector<'a> {
    opts: &'a Options,
    workload_name: &'a str,
    fail: &'a dyn Fn(String) -> WorkloadError,
}

impl PodInjector<'_> {
    fn err(&self, problem: impl Into<String>) -> WorkloadError {
        (self.fail)(problem.into())
    }

    /// `pod` holds `metadata` and `spec`: a Pod object, or a workload's pod template.
    fn inject(&self, pod: &mut Mapping, warnings: &mut Vec<String>) -> Result<(), WorkloadError> {
        let s = match super::settings::read(pod, self.workload_name, self.fail)? {
            Decision::OptedOut => return Ok(()),
            Decision::Inject(s) => s,
        };
        let earlier_probes = match pod
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .and_then(|a| a.get(ANNOTATION_APP_PROBES))
            .and_then(Value::as_str)
        {
            Some(text) if s.already_injected => {
                probes::parse_annotation(text).map_err(|e| self.err(e))?
            }
            _ => Vec::new(),
        };
        let Some(Value::Mapping(spec)) = pod.get_mut("spec") else {
            return Err(self.err("has no pod spec, so no containers to add a sidecar to"));
        };
        if s.capture().is_some() {
            capture::check_pod(spec, self.fail)?;
        }
        let earlier_ports = self.place(spec, &s)?;
        let mut notes = Vec::new();
        let app_probes = probes::handle(spec, &s, &earlier_probes, self.fail, &mut notes)?;
        let generated = match (&s.config, s.capture()) {
            (ConfigSource::Generated, Some(_)) => {
                let inbound = capture::inbound_ports(spec, &s);
                Some(
                    capture::generated_config(self.opts, &s, &inbound, &app_probes)
                        .map_err(|e| self.err(e))?,
                )
            }
            _ => None,
        };
        if let ConfigSource::ConfigMap(name) = &s.config
            && !app_probes.is_empty()
        {
            notes.push(format!(
                "probes were moved to the sidecar: the sidecar.toml of ConfigMap {name:?} must hold the \
                 [[app_probe]] entries of annotation {ANNOTATION_APP_PROBES}"
            ));
        }
        warnings.extend(notes.into_iter().map(|n| self.err(n).to_string()));
        self.annotate(pod, &s, &earlier_ports, &app_probes, generated);
        Ok(())
    }

    /// Puts the sidecar (and, under capture, `warden-init` before it) into the pod's init
    /// containers and its volumes into the pod. Returns the admin/metrics ports of the
    /// sidecar an earlier run added (empty if none), so that [`Self::annotate`] can move a
    /// scrape annotation that pointed at them.
    fn place(&self, spec: &mut Mapping, s: &Settings) -> Result<Vec<u64>, WorkloadError> {
        match spec.get("containers") {
            Some(Value::Sequence(c)) if !c.is_empty() => {}
            _ => {
                return Err(self.err("has no containers; a sidecar needs a workload to sit beside"));
            }
        }
        // Take out the containers of an earlier run (remembering where they were), or
        // refuse containers of the same names that someone else put there.
        let mut position: Option<usize> = None;
        let mut earlier_ports = Vec::new();
        for list in ["initContainers", "containers"] {
            let Some(Value::Sequence(containers)) = spec.get_mut(list) else {
                continue;
            };
            for ours in [INIT_CONTAINER_NAME, CONTAINER_NAME] {
                let Some(i) = containers
                    .iter()
                    .position(|c| c.get("name").and_then(Value::as_str) == Some(ours))
                else {
                    continue;
                };
                if !s.already_injected {
                    return Err(self.err(format!(
                        "{list} already has a container named {ours:?} that warden inject did not add \
                         (no annotation {ANNOTATION_INJECTED}: \"true\"); rename it or remove it"
                    )));
                }
                let earlier = containers.remove(i);
                // `warden-admin`: the port of versions that exposed the whole admin server.
                earlier_ports.extend(
                    earlier
                        .get("ports")
                        .and_then(Value::as_sequence)
                        .into_iter()
                        .flatten()
                        .filter(|p| {
                            matches!(
                                p.get("name").and_then(Value::as_str),
                                Some(METRICS_PORT_NAME | "warden-admin")
                            )
                        })
                        .filter_map(|p| p.get("containerPort").and_then(Value::as_u64)),
                );
                if list == "initContainers" {
                    position = Some(position.map_or(i, |p| p.min(i)));
                }
            }
        }
        self.check_port_clashes(spec, s)?;
        let init = match spec
            .entry(Value::from("initContainers"))
            .or_insert_with(|| Value::Sequence(Vec::new()))
        {
            Value::Sequence(seq) => seq,
            _ => return Err(self.err("spec.initContainers is not a list")),
        };
        let at = position.unwrap_or(0).min(init.len());
        // `warden-init` is an ordinary init container: it has finished (the rules are in
        // place) before the native sidecar and everything after it starts.
        init.insert(at, containers::sidecar(self.opts, s));
        if let Some(c) = s.capture() {
            init.insert(at, capture::init_container(self.opts, s, c));
        }

        let volumes = match spec
            .entry(Value::from("volumes"))
            .or_insert_with(|| Value::Sequence(Vec::new()))
        {
            Value::Sequence(seq) => seq,
            _ => return Err(self.err("spec.volumes is not a list")),
        };
        let (wanted, unused) = containers::volumes(s);
        if s.already_injected {
            volumes.retain(|v| {
                !unused
                    .iter()
                    .any(|u| v.get("name").and_then(Value::as_str) == Some(u))
            });
        }
        for volume in wanted {
            let name = volume.get("name").cloned();
            match volumes.iter().position(|v| v.get("name") == name.as_ref()) {
                Some(i) if s.already_injected => volumes[i] = volume,
                Some(_) => {
                    return Err(self.err(format!(
                        "already has a volume named {:?} that warden inject did not add; rename it",
                        name.as_ref().and_then(Value::as_str).unwrap_or("?")
                    )));
                }
                None => volumes.push(volume),
            }
        }
        Ok(earlier_ports)
    }

    /// Two containers in a pod share one network namespace: a port clash would make the
    /// sidecar (or the app) fail to bind at run time. Say so now.
    fn check_port_clashes(&self, spec: &Mapping, s: &Settings) -> Result<(), WorkloadError> {
        let mut taken: Vec<(u16, String)> = vec![(
            s.metrics_port,
            format!("set annotation {ANNOTATION_METRICS_PORT}"),
        )];
        match &s.mode {
            super::settings::Mode::Explicit { inbound_port } => {
                if let Some(p) = inbound_port {
                    taken.push((*p, format!("set annotation {ANNOTATION_INBOUND_PORT}")));
                }
            }
            super::settings::Mode::Capture(_) => {
                for (p, what) in capture::sidecar_ports() {
                    taken.push((
                        p,
                        format!(
                            "the sidecar binds it for {what}; move the app's port or set {ANNOTATION_CAPTURE}: \"false\""
                        ),
                    ));
                }
            }
        }
        for list in ["initContainers", "containers"] {
            let Some(Value::Sequence(containers)) = spec.get(list) else {
                continue;
            };
            for c in containers {
                let cname = c.get("name").and_then(Value::as_str).unwrap_or("?");
                let ports = c.get("ports").and_then(Value::as_sequence);
                for p in ports.into_iter().flatten() {
                    let Some(n) = p.get("containerPort").and_then(Value::as_u64) else {
                        continue;
                    };
                    if let Some((_, fix)) = taken.iter().find(|(ours, _)| u64::from(*ours) == n) {
                        return Err(self.err(format!(
                            "container {cname:?} already uses port {n}, which the sidecar needs; {fix}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Marks the pod as injected, records what was generated for it and, unless the user
    /// already configured scraping, points Prometheus at the sidecar's metrics. A
    /// `prometheus.io/port` naming a port of the sidecar an earlier run added
    /// (`earlier_ports`, such as the old public admin port) is about this sidecar, not the
    /// app, so it follows the metrics port.
    fn annotate(
        &self,
        pod: &mut Mapping,
        s: &Settings,
        earlier_ports: &[u64],
        app_probes: &[probes::AppProbe],
        generated: Option<String>,
    ) {
        if !pod.contains_key("metadata") {
            // Kubernetes writes metadata before spec; keep that order for readability.
            let rest = std::mem::take(pod);
            pod.insert("metadata".into(), Value::Mapping(Mapping::new()));
            pod.extend(rest);
        }
        let Some(Value::Mapping(meta)) = pod.get_mut("metadata") else {
            return;
        };
        let annotations = meta
            .entry("annotations".into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        if !annotations.is_mapping() {
            *annotations = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(annotations) = annotations else {
            return;
        };
        annotations.insert(ANNOTATION_INJECTED.into(), "true".into());
        let scrapes_earlier_sidecar = annotations
            .get("prometheus.io/port")
            .and_then(Value::as_str)
            .and_then(|p| p.parse::<u64>().ok())
            .is_some_and(|p| earlier_ports.contains(&p));
        if scrapes_earlier_sidecar {
            annotations.insert(
                "prometheus.io/port".into(),
                s.metrics_port.to_string().into(),
            );
        }
        if !annotations.contains_key("prometheus.io/scrape") {
            annotations.insert("prometheus.io/scrape".into(), "true".into());
            annotations.insert(
                "prometheus.io/port".into(),
                s.metrics_port.to_string().into(),
            );
            annotations.insert("prometheus.io/path".into(), "/metrics".into());
        }
        // Set in place when present (so a second run keeps the key order), added at the
        // end otherwise, removed when no longer wanted.
        let mut set = |key: &str, value: Option<String>| match value {
            Some(v) => {
                annotations.insert(key.into(), v.into());
            }
            None => {
                annotations.shift_remove(key);
            }
        };
        set(
            ANNOTATION_APP_PROBES,
            (!app_probes.is_empty()).then(|| probes::to_toml(app_probes)),
        );
        set(ANNOTATION_SIDECAR_CONFIG, generated);
    }
}

/// A mapping from `(key, value)` pairs, in order.
pub(super) fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
}
