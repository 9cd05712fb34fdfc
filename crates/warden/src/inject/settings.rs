//! Reads a pod's `warden.dev/*` annotations (and the `warden.dev/inject` label) into the
//! settings of one injection. Every value is checked here, so the rest of the injector
//! works with valid ports, names and CIDRs only, and a mistake is reported with the
//! annotation that holds it.

use std::net::IpAddr;

use serde_yaml_ng::{Mapping, Value};

use super::workload::*;

/// How the app's traffic reaches the sidecar.
pub(super) enum Mode {
    /// `warden.dev/capture: "false"`: the sidecar's own listeners, which the app and its
    /// peers must dial (an inbound port, loopback outbound listeners).
    Explicit { inbound_port: Option<u16> },
    /// The default: `warden init` redirects every TCP connection in and out of the pod.
    Capture(Capture),
}

/// `warden.dev/skip-*`: traffic `warden init` leaves alone (besides the metrics port).
#[derive(Default)]
pub(super) struct Capture {
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub skip_outbound_cidrs: Vec<String>,
    /// `warden.dev/outbound`: (name, destinations, server SPIFFE ID).
    pub outbound: Vec<(String, Vec<String>, String)>,
    /// `warden.dev/egress`: (name, hosts, ports).
    pub egress: Vec<(String, Vec<String>, Vec<u16>)>,
}

/// Where the sidecar's `sidecar.toml` comes from.
pub(super) enum ConfigSource {
    /// A ConfigMap the user writes (`warden.dev/config-map`, or `<workload>-warden` in
    /// explicit mode).
    ConfigMap(String),
    /// Capture mode without `warden.dev/config-map`: written by `warden inject` into the
    /// pod annotation `warden.dev/sidecar-config`, mounted through the downward API.
    Generated,
}

pub(super) struct Settings {
    pub mode: Mode,
    pub metrics_port: u16,
    pub config: ConfigSource,
    /// Marked `warden.dev/injected` by an earlier run: its containers, volumes, probes and
    /// annotations are ours to re-render.
    pub already_injected: bool,
}

impl Settings {
    pub fn capture(&self) -> Option<&Capture> {
        match &self.mode {
            Mode::Capture(c) => Some(c),
            Mode::Explicit { .. } => None,
        }
    }

    /// Whether `warden init` redirects inbound connections to `port` to the sidecar.
    pub fn captures_inbound(&self, port: u16) -> bool {
        self.capture()
            .is_some_and(|c| port != self.metrics_port && !c.skip_inbound_ports.contains(&port))
    }
}

/// What [`read`] found: settings, or "leave this pod alone".
pub(super) enum Decision {
    OptedOut,
    Inject(Settings),
}

/// Reads the settings of the pod (`pod` holds `metadata` and `spec`).
pub(super) fn read(
    pod: &Mapping,
    workload_name: &str,
    err: &dyn Fn(String) -> WorkloadError,
) -> Result<Decision, WorkloadError> {
    let meta = pod.get("metadata");
    let annotations = meta
        .and_then(|m| m.get("annotations"))
        .cloned()
        .unwrap_or(Value::Null);
    let annotation = |key: &str| -> Result<Option<String>, WorkloadError> {
        match annotations.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(err(format!(
                "annotation {key} is not a string; Kubernetes accepts only strings: quote the value"
            ))),
        }
    };
    let flag = |key: &str, default: bool| -> Result<bool, WorkloadError> {
        match annotation(key)?.as_deref() {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(err(format!(
                "annotation {key}: {other:?}: expected \"true\" or \"false\""
            ))),
        }
    };
    // The label is what the admission webhook's objectSelector sees; the annotation is the
    // long-standing opt-out. Either one keeps the pod as it is.
    let label_opt_out = meta
        .and_then(|m| m.get("labels"))
        .and_then(|l| l.get(ANNOTATION_INJECT))
        .and_then(Value::as_str)
        == Some("false");
    if !flag(ANNOTATION_INJECT, true)? || label_opt_out {
        return Ok(Decision::OptedOut);
    }
    let port = |key: &str, text: &str| -> Result<u16, WorkloadError> {
        match text.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(err(format!(
                "annotation {key}: {text:?} is not a port number (1-65535)"
            ))),
        }
    };
    let ports = |key: &str| -> Result<Vec<u16>, WorkloadError> {
        let Some(text) = annotation(key)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let p = port(key, part)?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    };
    // warden.dev/admin-port used to name the port of the whole admin server, debug
    // views included, bound on the pod IP. Reading it as the metrics port would be a
    // guess: with an old sidecar.toml the probes would keep reaching the full admin
    // server on a public address, with a new one a port nothing listens on. So say
    // what to do instead.
    if annotations.get(ANNOTATION_ADMIN_PORT).is_some() {
        return Err(err(format!(
            "annotation {ANNOTATION_ADMIN_PORT} is no longer supported: probes and Prometheus now use the \
             sidecar's metrics-only listener; replace it with {ANNOTATION_METRICS_PORT} (default \
             {DEFAULT_METRICS_PORT}) and in sidecar.toml set [admin] metrics_listen = \"0.0.0.0:<port>\" \
             and keep [admin] listen on 127.0.0.1 (the default)"
        )));
    }
    let metrics_port = match annotation(ANNOTATION_METRICS_PORT)? {
        Some(text) => port(ANNOTATION_METRICS_PORT, &text)?,
        None => DEFAULT_METRICS_PORT,
    };
    let capture = flag(ANNOTATION_CAPTURE, true)?;
    let skip_keys = [
        ANNOTATION_SKIP_INBOUND_PORTS,
        ANNOTATION_SKIP_OUTBOUND_PORTS,
        ANNOTATION_SKIP_OUTBOUND_CIDRS,
        ANNOTATION_OUTBOUND,
        ANNOTATION_EGRESS,
    ];
    let mode = if capture {
        if annotation(ANNOTATION_INBOUND_PORT)?.is_some() {
            return Err(err(format!(
                "annotation {ANNOTATION_INBOUND_PORT} names the sidecar's own inbound listener, which only \
                 explicit mode has: under traffic capture peers reach the app's own ports; remove it, or set \
                 {ANNOTATION_CAPTURE}: \"false\""
            )));
        }
        let mut cidrs = Vec::new();
        if let Some(text) = annotation(ANNOTATION_SKIP_OUTBOUND_CIDRS)? {
            for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                if !is_cidr(part) {
                    return Err(err(format!(
                        "annotation {ANNOTATION_SKIP_OUTBOUND_CIDRS}: {part:?} is not a CIDR like 10.0.0.0/8 or fd00::/8"
                    )));
                }
                if !cidrs.iter().any(|c| c == part) {
                    cidrs.push(part.to_owned());
                }
            }
        }
        let skip_inbound_ports = ports(ANNOTATION_SKIP_INBOUND_PORTS)?
            .into_iter()
            .filter(|p| *p != metrics_port)
            .collect();
        let lines = |key: &str| -> Result<Vec<(usize, Vec<String>)>, WorkloadError> {
            Ok(annotation(key)?
                .unwrap_or_default()
                .lines()
                .enumerate()
                .map(|(i, l)| {
                    (
                        i + 1,
                        l.split_whitespace().map(str::to_owned).collect::<Vec<_>>(),
                    )
                })
                .filter(|(_, fields)| !fields.is_empty())
                .collect())
        };
        let mut outbound = Vec::new();
        for (n, fields) in lines(ANNOTATION_OUTBOUND)? {
            let [name, destinations, server_id] = fields.as_slice() else {
                return Err(err(format!(
                    "annotation {ANNOTATION_OUTBOUND} line {n}: expected `NAME HOST:PORT[,HOST:PORT...] SERVER_SPIFFE_ID`"
                )));
            };
            let destinations = destinations.split(',').map(str::to_owned).collect();
            outbound.push((name.clone(), destinations, server_id.clone()));
        }
        let mut egress = Vec::new();
        for (n, fields) in lines(ANNOTATION_EGRESS)? {
            let bad = || {
                err(format!(
                    "annotation {ANNOTATION_EGRESS} line {n}: expected `NAME HOST[,HOST...] PORT[,PORT...]`"
                ))
            };
            let [name, hosts, ports] = fields.as_slice() else {
                return Err(bad());
            };
            let ports = ports
                .split(',')
                .map(|p| p.parse::<u16>().map_err(|_| bad()))
                .collect::<Result<Vec<_>, _>>()?;
            egress.push((
                name.clone(),
                hosts.split(',').map(str::to_owned).collect(),
                ports,
            ));
        }
        Mode::Capture(Capture {
            skip_inbound_ports,
            skip_outbound_ports: ports(ANNOTATION_SKIP_OUTBOUND_PORTS)?,
            skip_outbound_cidrs: cidrs,
            outbound,
            egress,
        })
    } else {
        if let Some(key) = skip_keys.iter().find(|k| annotations.get(**k).is_some()) {
            return Err(err(format!(
                "annotation {key} applies to traffic capture, which {ANNOTATION_CAPTURE}: \"false\" turns off"
            )));
        }
        let inbound_port = match annotation(ANNOTATION_INBOUND_PORT)?.as_deref() {
            Some("none") => None,
            Some(text) => Some(port(ANNOTATION_INBOUND_PORT, text)?),
            None => Some(DEFAULT_INBOUND_PORT),
        };
        if inbound_port == Some(metrics_port) {
            return Err(err(format!(
                "the inbound and the metrics port are both {metrics_port}; set {ANNOTATION_INBOUND_PORT} or {ANNOTATION_METRICS_PORT}"
            )));
        }
        Mode::Explicit { inbound_port }
    };
    let config = match annotation(ANNOTATION_CONFIG_MAP)? {
        Some(name) => ConfigSource::ConfigMap(name),
        None if capture => ConfigSource::Generated,
        None if !workload_name.is_empty() => {
            ConfigSource::ConfigMap(format!("{workload_name}-warden"))
        }
        None => {
            return Err(err(format!(
                "has no metadata.name to derive the sidecar's ConfigMap name from; set annotation {ANNOTATION_CONFIG_MAP}"
            )));
        }
    };
    if let ConfigSource::ConfigMap(name) = &config
        && !is_dns_subdomain(name)
    {
        return Err(err(format!(
            "ConfigMap name {name:?} is not a valid Kubernetes name (lowercase a-z, 0-9, '-', '.', at most 253)"
        )));
    }
    Ok(Decision::Inject(Settings {
        mode,
        metrics_port,
        config,
        already_injected: annotation(ANNOTATION_INJECTED)?.as_deref() == Some("true"),
    }))
}

/// `10.0.0.0/8`, `fd00::/8`: an IP address and a prefix length that fits it.
fn is_cidr(text: &str) -> bool {
    let Some((ip, len)) = text.split_once('/') else {
        return false;
    };
    let (Ok(ip), Ok(len)) = (ip.parse::<IpAddr>(), len.parse::<u8>()) else {
        return false;
    };
    len <= if ip.is_ipv4() { 32 } else { 128 }
}

/// RFC 1123 subdomain, as Kubernetes requires of object names.
pub(super) fn is_dns_subdomain(name: &str) -> bool {
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

    #[test]
    fn cidrs() {
        for ok in ["10.0.0.0/8", "10.96.0.1/32", "fd00::/8", "::/0"] {
            assert!(is_cidr(ok), "{ok}");
        }
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "fd00::/129",
            "x/8",
            "10.0.0.0/-1",
            "",
        ] {
            assert!(!is_cidr(bad), "{bad}");
        }
    }
}
