//! What `warden inject` adds to a pod spec: the `warden` sidecar container and its volumes.
//! Pure rendering from [`Settings`]; where they go and what they replace is
//! `workload.rs`'s business.

use serde_yaml_ng::Value;

use super::Options;
use super::capture::PROXY_UID;
use super::settings::{ConfigSource, Mode, Settings};
use super::workload::*;

/// The distroless `nonroot` user: the sidecar's uid in explicit mode. Under capture it
/// runs as [`PROXY_UID`], whose connections `warden init` leaves alone.
const RUN_AS: u64 = 65532;

/// The sidecar, as a Kubernetes native sidecar: an init container with
/// `restartPolicy: Always`, so it starts before the app, stops after it, and does not
/// keep a Job from completing.
pub(super) fn sidecar(opts: &Options, s: &Settings) -> Value {
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
    if let Mode::Explicit {
        inbound_port: Some(p),
    } = s.mode
    {
        ports.push(map([
            ("name", "warden-inbound".into()),
            ("containerPort", p.into()),
            ("protocol", "TCP".into()),
        ]));
    }
    // Only the metrics-only listener: the full admin server (debug views) binds
    // loopback and is not a container port. Under capture, the capture listeners are
    // reached through redirects, not as container ports.
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
    let uid = if s.capture().is_some() {
        PROXY_UID
    } else {
        RUN_AS
    };
    map([
        ("name", CONTAINER_NAME.into()),
        ("image", opts.image.as_str().into()),
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
                ("runAsUser", uid.into()),
                ("runAsGroup", uid.into()),
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

/// The volumes the pod needs, and the names of earlier ones of ours it no longer needs.
pub(super) fn volumes(s: &Settings) -> (Vec<Value>, Vec<&'static str>) {
    let config = match &s.config {
        ConfigSource::ConfigMap(name) => map([
            ("name", CONFIG_VOLUME.into()),
            ("configMap", map([("name", name.as_str().into())])),
        ]),
        // The generated config is the pod's own annotation, as a file.
        ConfigSource::Generated => map([
            ("name", CONFIG_VOLUME.into()),
            (
                "downwardAPI",
                map([(
                    "items",
                    Value::Sequence(vec![map([
                        ("path", "sidecar.toml".into()),
                        (
                            "fieldRef",
                            map([(
                                "fieldPath",
                                format!("metadata.annotations['{ANNOTATION_SIDECAR_CONFIG}']")
                                    .into(),
                            )]),
                        ),
                    ])]),
                )]),
            ),
        ]),
    };
    let mut wanted = vec![
        config,
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
    ];
    let mut unused = Vec::new();
    if s.capture().is_some() {
        wanted.push(map([
            ("name", XTABLES_VOLUME.into()),
            (
                "emptyDir",
                map([("medium", "Memory".into()), ("sizeLimit", "1Mi".into())]),
            ),
        ]));
    } else {
        unused.push(XTABLES_VOLUME);
    }
    (wanted, unused)
}
