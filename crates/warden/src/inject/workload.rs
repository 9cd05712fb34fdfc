//! Finds the pod template of each supported workload kind and adds the Warden sidecar to it.
//!
//! It must never touch a document it does not understand (other kinds, other API groups),
//! never overwrite something a user wrote (a foreign `warden` container or volume is a
//! conflict, a `prometheus.io/*` annotation is left as it is), and never produce a pod that
//! differs between a first and a second run with the same options.

use serde_yaml_ng::{Mapping, Value};

use super::Options;

/// Annotations read from the pod template (or from a bare Pod's own metadata).
pub const ANNOTATION_INJECT: &str = "warden.dev/inject";
pub const ANNOTATION_INBOUND_PORT: &str = "warden.dev/inbound-port";
pub const ANNOTATION_METRICS_PORT: &str = "warden.dev/metrics-port";
/// Read by earlier versions as the port of the whole admin server, which then had to bind
/// the pod IP. Refused now, with a message pointing at [`ANNOTATION_METRICS_PORT`].
pub const ANNOTATION_ADMIN_PORT: &str = "warden.dev/admin-port";
pub const ANNOTATION_CONFIG_MAP: &str = "warden.dev/config-map";
/// Written by `warden inject`: marks the `warden` container and volumes as its own, so a
/// second run may re-render them instead of refusing them as a conflict.
pub const ANNOTATION_INJECTED: &str = "warden.dev/injected";

pub const CONTAINER_NAME: &str = "warden";
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
/// The distroless `nonroot` user.
const RUN_AS: u64 = 65532;

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
/// left alone.
pub fn inject_object(doc: &mut Value, opts: &Options, path: &str) -> Result<(), WorkloadError> {
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
                    inject_object(item, opts, &format!("{path}items[{i}]: "))?;
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
    .inject(holder)
}

struct PodInjector<'a> {
    opts: &'a Options,
    workload_name: &'a str,
    fail: &'a dyn Fn(String) -> WorkloadError,
}

struct Settings {
    inbound_port: Option<u16>,
    metrics_port: u16,
    config_map: String,
    already_injected: bool,
}

impl PodInjector<'_> {
    fn err(&self, problem: impl Into<String>) -> WorkloadError {
        (self.fail)(problem.into())
    }

    /// `pod` holds `metadata` and `spec`: a Pod object, or a workload's pod template.
    fn inject(&self, pod: &mut Mapping) -> Result<(), WorkloadError> {
        let annotations = pod
            .get("metadata")
            .and_then(|m| m.get("annotations"))
            .cloned()
            .unwrap_or(Value::Null);
        let annotation = |key: &str| -> Result<Option<String>, WorkloadError> {
            match annotations.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(self.err(format!(
                    "annotation {key} is not a string; Kubernetes accepts only strings: quote the value"
                ))),
            }
        };
        match annotation(ANNOTATION_INJECT)?.as_deref() {
            Some("false") => return Ok(()),
            None | Some("true") => {}
            Some(other) => {
                return Err(self.err(format!(
                    "annotation {ANNOTATION_INJECT}: {other:?}: expected \"true\" or \"false\""
                )));
            }
        }
        let port = |key: &str, default: u16| -> Result<u16, WorkloadError> {
            match annotation(key)? {
                None => Ok(default),
                Some(text) => match text.parse::<u16>() {
                    Ok(p) if p > 0 => Ok(p),
                    _ => Err(self.err(format!(
                        "annotation {key}: {text:?} is not a port number (1-65535)"
                    ))),
                },
            }
        };
        let inbound_port = match annotation(ANNOTATION_INBOUND_PORT)?.as_deref() {
            Some("none") => None,
            _ => Some(port(ANNOTATION_INBOUND_PORT, DEFAULT_INBOUND_PORT)?),
        };
        // warden.dev/admin-port used to name the port of the whole admin server, debug
        // views included, bound on the pod IP. Reading it as the metrics port would be a
        // guess: with an old sidecar.toml the probes would keep reaching the full admin
        // server on a public address, with a new one a port nothing listens on. So say
        // what to do instead.
        if annotations.get(ANNOTATION_ADMIN_PORT).is_some() {
            return Err(self.err(format!(
                "annotation {ANNOTATION_ADMIN_PORT} is no longer supported: probes and Prometheus now use the \
                 sidecar's metrics-only listener; replace it with {ANNOTATION_METRICS_PORT} (default \
                 {DEFAULT_METRICS_PORT}) and in sidecar.toml set [admin] metrics_listen = \"0.0.0.0:<port>\" \
                 and keep [admin] listen on 127.0.0.1 (the default)"
            )));
        }
        let metrics_port = port(ANNOTATION_METRICS_PORT, DEFAULT_METRICS_PORT)?;
        if inbound_port == Some(metrics_port) {
            return Err(self.err(format!(
                "the inbound and the metrics port are both {metrics_port}; set {ANNOTATION_INBOUND_PORT} or {ANNOTATION_METRICS_PORT}"
            )));
        }
        let config_map = match annotation(ANNOTATION_CONFIG_MAP)? {
            Some(name) => name,
            None if !self.workload_name.is_empty() => format!("{}-warden", self.workload_name),
            None => {
                return Err(self.err(format!(
                    "has no metadata.name to derive the sidecar's ConfigMap name from; set annotation {ANNOTATION_CONFIG_MAP}"
                )));
            }
        };
        if !is_dns_subdomain(&config_map) {
            return Err(self.err(format!(
                "ConfigMap name {config_map:?} is not a valid Kubernetes name (lowercase a-z, 0-9, '-', '.', at most 253)"
            )));
        }
        let settings = Settings {
            inbound_port,
            metrics_port,
            config_map,
            already_injected: annotation(ANNOTATION_INJECTED)?.as_deref() == Some("true"),
        };

        let Some(Value::Mapping(spec)) = pod.get_mut("spec") else {
            return Err(self.err("has no pod spec, so no containers to add a sidecar to"));
        };
        let earlier_ports = self.inject_spec(spec, &settings)?;
        self.annotate(pod, &settings, &earlier_ports);
        Ok(())
    }

    /// Returns the admin/metrics ports of the sidecar an earlier run added (empty if none),
    /// so that [`Self::annotate`] can move a scrape annotation that pointed at them.
    fn inject_spec(&self, spec: &mut Mapping, s: &Settings) -> Result<Vec<u64>, WorkloadError> {
        match spec.get("containers") {
            Some(Value::Sequence(c)) if !c.is_empty() => {}
            _ => {
                return Err(self.err("has no containers; a sidecar needs a workload to sit beside"));
            }
        }
        // Take out a sidecar of ours from an earlier run (remembering where it was), or
        // refuse a container of the same name that someone else put there.
        let mut position = None;
        let mut earlier_ports = Vec::new();
        for list in ["initContainers", "containers"] {
            let Some(Value::Sequence(containers)) = spec.get_mut(list) else {
                continue;
            };
            if let Some(i) = containers
                .iter()
                .position(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER_NAME))
            {
                if !s.already_injected {
                    return Err(self.err(format!(
                        "{list} already has a container named {CONTAINER_NAME:?} that warden inject did not add \
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
                    position = Some(i);
                }
            }
        }
        // Two containers in a pod share one network namespace: a port clash would make the
        // sidecar (or the app) fail to bind at run time. Say so now.
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
                    for (ours, key) in [
                        (s.inbound_port, ANNOTATION_INBOUND_PORT),
                        (Some(s.metrics_port), ANNOTATION_METRICS_PORT),
                    ] {
                        if ours.map(u64::from) == Some(n) {
                            return Err(self.err(format!(
                                "container {cname:?} already uses port {n}, which the sidecar needs; set annotation {key}"
                            )));
                        }
                    }
                }
            }
        }
        let init = match spec
            .entry(Value::from("initContainers"))
            .or_insert_with(|| Value::Sequence(Vec::new()))
        {
            Value::Sequence(seq) => seq,
            _ => return Err(self.err("spec.initContainers is not a list")),
        };
        let at = position.unwrap_or(0).min(init.len());
        init.insert(at, self.sidecar(s));

        let volumes = match spec
            .entry(Value::from("volumes"))
            .or_insert_with(|| Value::Sequence(Vec::new()))
        {
            Value::Sequence(seq) => seq,
            _ => return Err(self.err("spec.volumes is not a list")),
        };
        for volume in self.volumes(s) {
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

    /// Marks the pod as injected and, unless the user already configured scraping, points
    /// Prometheus at the sidecar's metrics. A `prometheus.io/port` naming a port of the
    /// sidecar an earlier run added (`earlier_ports`, such as the old public admin port)
    /// is about this sidecar, not the app, so it follows the metrics port.
    fn annotate(&self, pod: &mut Mapping, s: &Settings, earlier_ports: &[u64]) {
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
    }

    /// The sidecar, as a Kubernetes native sidecar: an init container with
    /// `restartPolicy: Always`, so it starts before the app, stops after it, and does not
    /// keep a Job from completing.
    fn sidecar(&self, s: &Settings) -> Value {
        let probe = |path: &str, period: u64, failures: u64| {
            map([
                (
                    "httpGet",
                    map([("path", path.into()), ("port", METRICS_PORT_NAME.into())]),
                ),
                ("periodSeconds", period.into()),
                ("failureThreshold", failures.into()),
            ])
        };
        let mut ports = Vec::new();
        if let Some(p) = s.inbound_port {
            ports.push(map([
                ("name", "warden-inbound".into()),
                ("containerPort", p.into()),
                ("protocol", "TCP".into()),
            ]));
        }
        // Only the metrics-only listener: the full admin server (debug views) binds
        // loopback and is not a container port.
        ports.push(map([
            ("name", METRICS_PORT_NAME.into()),
            ("containerPort", s.metrics_port.into()),
            ("protocol", "TCP".into()),
        ]));
        let mount = |name: &str, path: &str, read_only: bool| {
            let mut m = map([("name", name.into()), ("mountPath", path.into())]);
            if let Value::Mapping(fields) = &mut m
                && read_only
            {
                fields.insert("readOnly".into(), true.into());
            }
            m
        };
        map([
            ("name", CONTAINER_NAME.into()),
            ("image", self.opts.image.as_str().into()),
            ("imagePullPolicy", "IfNotPresent".into()),
            ("restartPolicy", "Always".into()),
            (
                "args",
                Value::Sequence(vec![
                    "sidecar".into(),
                    "--config".into(),
                    format!("{CONFIG_DIR}/sidecar.toml").into(),
                ]),
            ),
            (
                "env",
                Value::Sequence(vec![map([
                    ("name", "SPIFFE_ENDPOINT_SOCKET".into()),
                    ("value", SOCKET_ENDPOINT.into()),
                ])]),
            ),
            ("ports", Value::Sequence(ports)),
            // The app starts only once the sidecar's listeners are up.
            ("startupProbe", probe("/healthz", 1, 30)),
            ("readinessProbe", probe("/readyz", 5, 3)),
            ("livenessProbe", probe("/healthz", 10, 3)),
            (
                "resources",
                map([(
                    "requests",
                    map([("cpu", "50m".into()), ("memory", "32Mi".into())]),
                )]),
            ),
            (
                "securityContext",
                map([
                    ("runAsNonRoot", true.into()),
                    ("runAsUser", RUN_AS.into()),
                    ("runAsGroup", RUN_AS.into()),
                    ("allowPrivilegeEscalation", false.into()),
                    ("readOnlyRootFilesystem", true.into()),
                    (
                        "capabilities",
                        map([("drop", Value::Sequence(vec!["ALL".into()]))]),
                    ),
                    ("seccompProfile", map([("type", "RuntimeDefault".into())])),
                ]),
            ),
            (
                "volumeMounts",
                Value::Sequence(vec![
                    mount(CONFIG_VOLUME, CONFIG_DIR, true),
                    mount(SOCKET_VOLUME, SOCKET_DIR, true),
                    mount(DATA_VOLUME, DATA_DIR, false),
                ]),
            ),
        ])
    }

    fn volumes(&self, s: &Settings) -> [Value; 3] {
        [
            map([
                ("name", CONFIG_VOLUME.into()),
                ("configMap", map([("name", s.config_map.as_str().into())])),
            ]),
            map([
                ("name", SOCKET_VOLUME.into()),
                (
                    "csi",
                    map([
                        ("driver", "csi.spiffe.io".into()),
                        ("readOnly", true.into()),
                    ]),
                ),
            ]),
            // Room for the last-known-good policy cache on a read-only root filesystem;
            // it survives a sidecar restart, which is when it matters.
            map([
                ("name", DATA_VOLUME.into()),
                ("emptyDir", map([("sizeLimit", "16Mi".into())])),
            ]),
        ]
    }
}

fn map<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect())
}

/// RFC 1123 subdomain, as Kubernetes requires of object names.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names() {
        for ok in ["web-warden", "a", "a.b-c", "0x"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "Web", "-a", "a-", "a..b", "a_b"] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
