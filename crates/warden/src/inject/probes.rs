//! The app's probes under traffic capture. The kubelet probes the pod IP; with capture on,
//! a plaintext probe of a captured port would reach the sidecar's mTLS listener and fail.
//! So an `httpGet` or `tcpSocket` probe of a captured port is rewritten, as Istio does, to
//! an `httpGet` on the sidecar's metrics port with path
//! `/app-health/<container>/<livez|readyz|startupz>`, and the original check goes into the
//! sidecar's `[[app_probe]]` entries (the sidecar runs it over loopback).
//!
//! The originals are kept in the pod annotation `warden.dev/app-probes`, written as those
//! `[[app_probe]]` entries, so that a second run (or a switch to
//! `warden.dev/capture: "false"`) can restore them: injecting twice gives the same pod.
//! HTTPS, gRPC and exec probes are left alone (exec runs inside the container; HTTPS and
//! gRPC of a captured port fail, and the injector warns).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};

use super::settings::Settings;
use super::workload::*;

const KINDS: [(&str, &str); 3] = [
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
    ("startupProbe", "startupz"),
];
/// The sidecar's `[[app_probe]]` limit (the admin server's connection lifetime).
const MAX_TIMEOUT_SECONDS: u64 = 60;

/// One `[[app_probe]]` entry: what the sidecar checks in the kubelet's place.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppProbe {
    pub path: String,
    pub forward: String,
    pub http_path: Option<String>,
    pub timeout: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entries {
    #[serde(default)]
    app_probe: Vec<AppProbe>,
}

/// Reads the entries an earlier run wrote into `warden.dev/app-probes`.
pub(super) fn parse_annotation(text: &str) -> Result<Vec<AppProbe>, String> {
    toml::from_str::<Entries>(text)
        .map(|e| e.app_probe)
        .map_err(|e| format!("annotation {ANNOTATION_APP_PROBES} cannot be read back: {e}"))
}

/// The entries as TOML: the text of `warden.dev/app-probes`, and the `[[app_probe]]` part
/// of a generated `sidecar.toml`.
pub(super) fn to_toml(probes: &[AppProbe]) -> String {
    let mut out = String::new();
    for (i, p) in probes.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("[[app_probe]]\n");
        let _ = writeln!(out, "path = {}", toml_string(&p.path));
        let _ = writeln!(out, "forward = {}", toml_string(&p.forward));
        if let Some(h) = &p.http_path {
            let _ = writeln!(out, "http_path = {}", toml_string(h));
        }
        if let Some(t) = &p.timeout {
            let _ = writeln!(out, "timeout = {}", toml_string(t));
        }
        if !p.headers.is_empty() {
            let pairs: Vec<String> = p
                .headers
                .iter()
                .map(|(k, v)| format!("{} = {}", toml_string(k), toml_string(v)))
                .collect();
            let _ = writeln!(out, "headers = {{ {} }}", pairs.join(", "));
        }
    }
    out
}

/// A TOML basic string.
pub(super) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Rewrites (capture mode) or restores (explicit mode) the probes of every app container
/// in `spec`; returns the `[[app_probe]]` entries the sidecar needs, in container order.
/// `earlier` are the entries of an earlier run, to restore the probes it rewrote.
pub(super) fn handle(
    spec: &mut Mapping,
    s: &Settings,
    earlier: &[AppProbe],
    err: &dyn Fn(String) -> WorkloadError,
    warnings: &mut Vec<String>,
) -> Result<Vec<AppProbe>, WorkloadError> {
    let mut entries = Vec::new();
    for list in ["initContainers", "containers"] {
        let Some(Value::Sequence(containers)) = spec.get_mut(list) else {
            continue;
        };
        for c in containers.iter_mut() {
            let Value::Mapping(c) = c else { continue };
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if name == CONTAINER_NAME || name == INIT_CONTAINER_NAME {
                continue;
            }
            let ports = c.get("ports").cloned().unwrap_or(Value::Null);
            for (key, kind) in KINDS {
                let Some(Value::Mapping(probe)) = c.get_mut(key) else {
                    continue;
                };
                let path = format!("{}{name}/{kind}", warden_sidecar::app_probe::PATH_PREFIX);
                if s.already_injected && is_rewritten(probe, &path, s.metrics_port) {
                    let original = earlier.iter().find(|e| e.path == path).ok_or_else(|| {
                        err(format!(
                            "container {name:?}: {key} points at the sidecar's {path}, but annotation \
                             {ANNOTATION_APP_PROBES} has no entry for it; put the app's own probe back"
                        ))
                    })?;
                    restore(probe, original)
                        .map_err(|p| err(format!("container {name:?}: {key}: {p}")))?;
                }
                if s.capture().is_none() {
                    continue;
                }
                let what = format!("container {name:?}: {key}");
                if let Some(entry) = rewrite(probe, &path, &ports, s, &what, warnings) {
                    entries.push(entry);
                }
            }
        }
    }
    Ok(entries)
}

/// Whether `probe` is one an earlier run rewrote: an `httpGet` of `path` on the metrics port.
fn is_rewritten(probe: &Mapping, path: &str, metrics_port: u16) -> bool {
    let Some(Value::Mapping(get)) = probe.get("httpGet") else {
        return false;
    };
    get.get("path").and_then(Value::as_str) == Some(path)
        && get.get("port").and_then(Value::as_u64) == Some(u64::from(metrics_port))
}

/// Puts the app's own check back in place of the rewritten `httpGet`.
fn restore(probe: &mut Mapping, original: &AppProbe) -> Result<(), String> {
    let port = original
        .forward
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| {
            format!(
                "annotation {ANNOTATION_APP_PROBES}: forward {:?} has no port",
                original.forward
            )
        })?;
    let (key, handler) = match &original.http_path {
        Some(http_path) => {
            let mut get = Mapping::new();
            get.insert("path".into(), http_path.as_str().into());
            get.insert("port".into(), port.into());
            if !original.headers.is_empty() {
                let headers = original
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        let mut h = Mapping::new();
                        h.insert("name".into(), n.as_str().into());
                        h.insert("value".into(), v.as_str().into());
                        Value::Mapping(h)
                    })
                    .collect();
                get.insert("httpHeaders".into(), Value::Sequence(headers));
            }
            ("httpGet", get)
        }
        None => {
            let mut tcp = Mapping::new();
            tcp.insert("port".into(), port.into());
            ("tcpSocket", tcp)
        }
    };
    replace_key(probe, "httpGet", key, Value::Mapping(handler));
    Ok(())
}

/// Rewrites one probe of a captured port; `None` when it stays as it is.
fn rewrite(
    probe: &mut Mapping,
    path: &str,
    ports: &Value,
    s: &Settings,
    what: &str,
    warnings: &mut Vec<String>,
) -> Option<AppProbe> {
    let captured = |port: &Value| resolve_port(port, ports).filter(|p| s.captures_inbound(*p));
    let timeout = match probe.get("timeoutSeconds").and_then(Value::as_u64) {
        Some(t) if t > 1 => Some(format!("{}s", t.min(MAX_TIMEOUT_SECONDS))),
        _ => None,
    };
    let rewritten = |handler_key: &str, probe: &mut Mapping| {
        let mut get = Mapping::new();
        get.insert("path".into(), path.into());
        get.insert("port".into(), s.metrics_port.into());
        replace_key(probe, handler_key, "httpGet", Value::Mapping(get));
    };
    if let Some(Value::Mapping(get)) = probe.get("httpGet") {
        if get.contains_key("host") {
            return None; // probes another host: not this pod's capture
        }
        let port = captured(get.get("port")?)?;
        let scheme = get.get("scheme").and_then(Value::as_str).unwrap_or("HTTP");
        if !scheme.eq_ignore_ascii_case("HTTP") {
            warnings.push(format!(
                "{what}: an {scheme} probe of captured port {port} is left as it is and will fail (the \
                 sidecar expects mTLS there); use an HTTP or exec probe, add the port to \
                 {ANNOTATION_SKIP_INBOUND_PORTS}, or set {ANNOTATION_CAPTURE}: \"false\""
            ));
            return None;
        }
        let http_path = match get.get("path").and_then(Value::as_str) {
            Some(p) if p.starts_with('/') => p.to_owned(),
            Some(p) => format!("/{p}"),
            None => "/".to_owned(),
        };
        let headers = get
            .get("httpHeaders")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(|h| {
                let name = h.get("name")?.as_str()?;
                let value = h.get("value")?.as_str()?;
                Some((name.to_owned(), value.to_owned()))
            })
            .collect();
        rewritten("httpGet", probe);
        return Some(AppProbe {
            path: path.to_owned(),
            forward: format!("127.0.0.1:{port}"),
            http_path: Some(http_path),
            timeout,
            headers,
        });
    }
    if let Some(Value::Mapping(tcp)) = probe.get("tcpSocket") {
        if tcp.contains_key("host") {
            return None;
        }
        let port = captured(tcp.get("port")?)?;
        rewritten("tcpSocket", probe);
        return Some(AppProbe {
            path: path.to_owned(),
            forward: format!("127.0.0.1:{port}"),
            http_path: None,
            timeout,
            headers: BTreeMap::new(),
        });
    }
    if let Some(Value::Mapping(grpc)) = probe.get("grpc")
        && let Some(port) = grpc.get("port").and_then(captured)
    {
        warnings.push(format!(
            "{what}: a gRPC probe of captured port {port} is left as it is and will fail (the sidecar \
             expects mTLS there); use an exec probe, add the port to {ANNOTATION_SKIP_INBOUND_PORTS}, \
             or set {ANNOTATION_CAPTURE}: \"false\""
        ));
    }
    None
}

/// A probe's port: a number, or the name of one of the container's ports (as the kubelet
/// resolves it).
fn resolve_port(port: &Value, ports: &Value) -> Option<u16> {
    match port {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(name) => match name.parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => ports
                .as_sequence()?
                .iter()
                .find(|p| p.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|p| p.get("containerPort")?.as_u64())
                .and_then(|p| u16::try_from(p).ok()),
        },
        _ => None,
    }
    .filter(|p| *p > 0)
}

/// Replaces the entry `old` of `map` by `new_key: value` at the same position.
fn replace_key(map: &mut Mapping, old: &str, new_key: &str, value: Value) {
    let mut value = Some(value);
    let rebuilt: Mapping = std::mem::take(map)
        .into_iter()
        .map(|(k, v)| {
            if k.as_str() == Some(old) {
                (Value::from(new_key), value.take().unwrap_or(Value::Null))
            } else {
                (k, v)
            }
        })
        .collect();
    *map = rebuilt;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_their_toml() {
        let probes = vec![
            AppProbe {
                path: "/app-health/web/readyz".into(),
                forward: "127.0.0.1:8080".into(),
                http_path: Some("/ready?x=\"1\"".into()),
                timeout: Some("3s".into()),
                headers: [
                    ("Host".to_owned(), "web".to_owned()),
                    ("X-A".to_owned(), "b\\c".to_owned()),
                ]
                .into_iter()
                .collect(),
            },
            AppProbe {
                path: "/app-health/web/livez".into(),
                forward: "127.0.0.1:9000".into(),
                http_path: None,
                timeout: None,
                headers: BTreeMap::new(),
            },
        ];
        let text = to_toml(&probes);
        assert_eq!(parse_annotation(&text).expect("parses"), probes, "{text}");
        assert!(parse_annotation("[[app_probe]]\npath = 1\n").is_err());
        assert_eq!(parse_annotation("").expect("empty"), []);
    }

    #[test]
    fn named_ports_resolve_against_the_containers_ports() {
        let ports: Value = serde_yaml_ng::from_str(
            "- {name: http, containerPort: 8080}\n- {containerPort: 9090}\n",
        )
        .expect("yaml");
        assert_eq!(resolve_port(&Value::from("http"), &ports), Some(8080));
        assert_eq!(resolve_port(&Value::from(9090), &ports), Some(9090));
        assert_eq!(resolve_port(&Value::from("9091"), &ports), Some(9091));
        assert_eq!(resolve_port(&Value::from("grpc"), &ports), None);
        assert_eq!(resolve_port(&Value::from(70000), &ports), None);
    }
}
