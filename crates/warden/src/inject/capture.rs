//! Capture mode: the `warden-init` init container that programs the pod's network
//! namespace (`warden init`), the checks that keep capture from being walked around, and
//! the sidecar config `warden inject` writes when the user names no ConfigMap.
//!
//! Why the generated config lives in a pod annotation (`warden.dev/sidecar-config`, mounted
//! through the downward API) and not in a ConfigMap: the admission webhook can only change
//! the pod it is asked about, not create other objects, and the CLI and the webhook must
//! give the same pod. A config in the pod also rolls the pods when it changes.

use std::fmt::Write as _;

use serde_yaml_ng::{Mapping, Value};

use super::Options;
use super::probes::{self, AppProbe, toml_string};
use super::settings::{Capture, Settings};
use super::workload::*;

/// The sidecar's uid: `warden init` leaves its connections alone, so the sidecar never
/// captures itself, and no app container may use it.
pub const PROXY_UID: u64 = 1337;
/// `[capture] inbound` and `outbound`: where `warden init` redirects.
pub const CAPTURE_INBOUND_PORT: u16 = 15006;
pub const CAPTURE_OUTBOUND_PORT: u16 = 15001;
/// The full admin server binds 127.0.0.1:15000 in the pod's network namespace.
pub const ADMIN_PORT: u16 = 15000;

/// The init container that runs `warden init` before the sidecar starts. It runs as root
/// with NET_ADMIN and NET_RAW (iptables needs both) and nothing else, and ends before any
/// app container starts.
pub(super) fn init_container(opts: &Options, s: &Settings, c: &Capture) -> Value {
    let list = |items: Vec<String>| items.join(",");
    let mut skip_inbound = vec![s.metrics_port.to_string()];
    skip_inbound.extend(c.skip_inbound_ports.iter().map(u16::to_string));
    let mut args: Vec<Value> = vec![
        "init".into(),
        "--proxy-uid".into(),
        PROXY_UID.to_string().into(),
        "--inbound-port".into(),
        CAPTURE_INBOUND_PORT.to_string().into(),
        "--outbound-port".into(),
        CAPTURE_OUTBOUND_PORT.to_string().into(),
        "--skip-inbound-ports".into(),
        list(skip_inbound).into(),
    ];
    if !c.skip_outbound_ports.is_empty() {
        args.push("--skip-outbound-ports".into());
        args.push(list(c.skip_outbound_ports.iter().map(u16::to_string).collect()).into());
    }
    if !c.skip_outbound_cidrs.is_empty() {
        args.push("--skip-outbound-cidrs".into());
        args.push(list(c.skip_outbound_cidrs.clone()).into());
    }
    map([
        ("name", INIT_CONTAINER_NAME.into()),
        (
            "image",
            opts.init_image
                .clone()
                .unwrap_or_else(|| init_image_of(&opts.image))
                .into(),
        ),
        ("imagePullPolicy", "IfNotPresent".into()),
        ("args", Value::Sequence(args)),
        (
            "resources",
            map([(
                "requests",
                map([("cpu", "10m".into()), ("memory", "16Mi".into())]),
            )]),
        ),
        (
            "securityContext",
            map([
                ("runAsUser", 0u64.into()),
                ("runAsNonRoot", false.into()),
                ("allowPrivilegeEscalation", false.into()),
                ("readOnlyRootFilesystem", true.into()),
                (
                    "capabilities",
                    map([
                        (
                            "add",
                            Value::Sequence(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                        ),
                        ("drop", Value::Sequence(vec!["ALL".into()])),
                    ]),
                ),
            ]),
        ),
        // iptables takes its lock in /run/xtables.lock; the root filesystem is read-only.
        (
            "volumeMounts",
            Value::Sequence(vec![map([
                ("name", XTABLES_VOLUME.into()),
                ("mountPath", "/run".into()),
            ])]),
        ),
    ])
}

/// Refuses pods where capture cannot hold: host networking (the rules would program the
/// node), and an app container running as the proxy uid (its connections would pass).
pub(super) fn check_pod(
    spec: &Mapping,
    err: &dyn Fn(String) -> WorkloadError,
) -> Result<(), WorkloadError> {
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(err(format!(
            "uses hostNetwork: warden init would redirect the node's traffic; set {ANNOTATION_CAPTURE}: \"false\" \
             or {ANNOTATION_INJECT}: \"false\""
        )));
    }
    let pod_uid = spec
        .get("securityContext")
        .and_then(|s| s.get("runAsUser"))
        .and_then(Value::as_u64);
    for (name, c) in app_containers(spec) {
        let uid = c
            .get("securityContext")
            .and_then(|s| s.get("runAsUser"))
            .and_then(Value::as_u64)
            .or(pod_uid);
        if uid == Some(PROXY_UID) {
            let name = if name.is_empty() { "?" } else { name };
            return Err(err(format!(
                "container {name:?} runs as uid {PROXY_UID}, the sidecar's: its connections would not be \
                 captured; run it as another user"
            )));
        }
    }
    Ok(())
}

/// One `[[inbound]]` of a generated config: a port of an app container.
pub(super) struct InboundPort {
    pub name: String,
    pub port: u16,
}

/// The TCP ports the app containers declare that capture redirects, each once, named after
/// the port (or `port-<n>` when it has no usable, unique name).
pub(super) fn inbound_ports(spec: &Mapping, s: &Settings) -> Vec<InboundPort> {
    let mut found: Vec<InboundPort> = Vec::new();
    let ports = app_containers(spec).flat_map(|(_, c)| {
        c.get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
    });
    for p in ports {
        let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        let Some(port) = p
            .get("containerPort")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok())
        else {
            continue;
        };
        if protocol != "TCP" || !s.captures_inbound(port) || found.iter().any(|f| f.port == port) {
            continue;
        }
        let fallback = format!("port-{port}");
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| warden_policy::ListenerName::parse(n).is_ok())
            .filter(|n| !found.iter().any(|f| f.name == *n) && *n != fallback)
            .map_or(fallback, str::to_owned);
        found.push(InboundPort { name, port });
    }
    found
}

/// The `sidecar.toml` of a pod in capture mode without a ConfigMap of its own.
pub(super) fn generated_config(
    opts: &Options,
    s: &Settings,
    inbound: &[InboundPort],
    app_probes: &[AppProbe],
) -> Result<String, String> {
    let Some(trust_domain) = &opts.trust_domain else {
        return Err(format!(
            "capture mode writes the sidecar's config, which needs the trust domain: pass --trust-domain \
             (and --control-plane), or name your own ConfigMap with annotation {ANNOTATION_CONFIG_MAP}, or \
             set {ANNOTATION_CAPTURE}: \"false\""
        ));
    };
    let capture = s.capture();
    let calls_out = capture.is_some_and(|c| !c.outbound.is_empty() || !c.egress.is_empty());
    if inbound.is_empty() && !calls_out {
        return Err(format!(
            "declares no TCP container port to receive connections on, so a generated sidecar config would \
             have no listener; declare the app's ports (containerPort), or name your own ConfigMap with \
             annotation {ANNOTATION_CONFIG_MAP} (with the [[outbound]] destinations the pod calls), or set \
             {ANNOTATION_CAPTURE}: \"false\""
        ));
    }
    let mut t = String::new();
    t.push_str(
        "# Written by `warden inject` (traffic capture). Run it again to change this; to write your own,\n\
         # put it in a ConfigMap and name it with annotation warden.dev/config-map.\n",
    );
    let _ = writeln!(t, "trust_domain = {}", toml_string(trust_domain));
    t.push_str("\n[identity]\nsource = \"workload-api\"\n");
    if let Some(url) = &opts.control_plane {
        t.push_str("\n[policy]\n");
        let _ = writeln!(t, "control_plane = {}", toml_string(url));
        if let Some(id) = &opts.control_plane_id {
            let _ = writeln!(t, "control_plane_id = {}", toml_string(id));
        }
        let _ = writeln!(t, "cache = \"{DATA_DIR}/policy.json\"");
    }
    let _ = write!(
        t,
        "\n[capture]\ninbound = \"0.0.0.0:{CAPTURE_INBOUND_PORT}\"\noutbound = \"127.0.0.1:{CAPTURE_OUTBOUND_PORT}\"\n"
    );
    for l in inbound {
        let _ = write!(
            t,
            "\n[[inbound]]\nname = {}\nport = {}\n",
            toml_string(&l.name),
            l.port
        );
    }
    if let Some(c) = capture {
        for (name, destinations, server_id) in &c.outbound {
            let list: Vec<String> = destinations.iter().map(|d| toml_string(d)).collect();
            let _ = write!(
                t,
                "\n[[outbound]]\nname = {}\ndestinations = [{}]\nserver_id = {}\n",
                toml_string(name),
                list.join(", "),
                toml_string(server_id)
            );
        }
        for (name, hosts, ports) in &c.egress {
            let hosts: Vec<String> = hosts.iter().map(|h| toml_string(h)).collect();
            let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
            let _ = write!(
                t,
                "\n[[egress]]\nname = {}\nhosts = [{}]\nports = [{}]\n",
                toml_string(name),
                hosts.join(", "),
                ports.join(", ")
            );
        }
    }
    let _ = write!(
        t,
        "\n[admin]\nmetrics_listen = \"0.0.0.0:{}\"\n",
        s.metrics_port
    );
    if !app_probes.is_empty() {
        t.push('\n');
        t.push_str(&probes::to_toml(app_probes));
    }
    // Written here, read by the sidecar: check it with the sidecar's own parser so a
    // pod never starts with a config its sidecar refuses.
    warden_sidecar::SidecarConfig::from_toml(ANNOTATION_SIDECAR_CONFIG, &t)
        .map_err(|e| format!("the generated sidecar config is not valid: {e}"))?;
    Ok(t)
}

/// Checks the flags that go into every generated config with the sidecar's own parser,
/// naming the flag: a config with a placeholder listener and nothing else of the pod's.
pub(super) fn check_flags(opts: &Options) -> Result<(), String> {
    if opts.trust_domain.is_none() {
        if opts.control_plane.is_some() {
            return Err(
                "--control-plane goes into generated configs, which need --trust-domain too".into(),
            );
        }
        return Ok(());
    }
    let s = Settings {
        mode: super::settings::Mode::Capture(Capture::default()),
        metrics_port: DEFAULT_METRICS_PORT,
        config: super::settings::ConfigSource::Generated,
        already_injected: false,
    };
    let inbound = [InboundPort {
        name: "check".into(),
        port: 1,
    }];
    let config = generated_config(opts, &s, &inbound, &[]);
    match config {
        Ok(_) => Ok(()),
        Err(e) if e.contains("policy.control_plane_id") => Err(format!("--control-plane-id: {e}")),
        Err(e) if e.contains("policy.control_plane") => Err(format!("--control-plane: {e}")),
        Err(e) if e.contains("trust_domain") => Err(format!("--trust-domain: {e}")),
        Err(e) => Err(e),
    }
}

/// The app's ports must stay clear of the ports the sidecar binds under capture.
pub(super) fn sidecar_ports() -> [(u16, &'static str); 3] {
    [
        (CAPTURE_INBOUND_PORT, "[capture] inbound"),
        (CAPTURE_OUTBOUND_PORT, "[capture] outbound"),
        (ADMIN_PORT, "[admin] listen"),
    ]
}

/// The init image that goes with sidecar image `image`: the same repository name with
/// `-init` appended, same tag or digest (the Dockerfile builds both from one source).
pub(crate) fn init_image_of(image: &str) -> String {
    // The repository ends at the tag's ':' (after the last '/', so a registry port is not
    // taken for a tag) or at a digest's '@'.
    let name_end = image
        .find('@')
        .or_else(|| {
            let last_slash = image.rfind('/').map_or(0, |i| i + 1);
            image[last_slash..].find(':').map(|i| last_slash + i)
        })
        .unwrap_or(image.len());
    format!("{}-init{}", &image[..name_end], &image[name_end..])
}

#[cfg(test)]
mod init_image_tests {
    use super::init_image_of;

    #[test]
    fn the_init_image_is_the_sidecar_image_with_init_in_its_name() {
        assert_eq!(
            init_image_of("ghcr.io/warden-mesh/warden:0.1.0"),
            "ghcr.io/warden-mesh/warden-init:0.1.0"
        );
        assert_eq!(
            init_image_of("registry.local:5000/warden"),
            "registry.local:5000/warden-init"
        );
        assert_eq!(init_image_of("warden@sha256:abc"), "warden-init@sha256:abc");
    }
}
