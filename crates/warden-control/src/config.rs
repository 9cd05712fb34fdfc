//! The control plane's TOML configuration, through the same front-end as the sidecar's
//! (`warden-config`): unknown keys are errors, and every error names the file, the key path
//! and the problem (with the line where the parser knows it). The `[identity]` table is the
//! sidecar's, plus `source = "builtin-ca"`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
pub use warden_config::ConfigError;
use warden_config::{Errors, RawIdentity, parse_duration, read_config_file};
use warden_identity::IdentityConfig;
use warden_identity::{SpiffeId, TrustDomain};

mod insight;
mod store;
pub use insight::{AdminConfig, DEFAULT_ADMIN_LISTEN};
pub use store::{EtcdConfig, StoreConfig, endpoint_authority};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: String,
    listen: String,
    data_dir: PathBuf,
    #[serde(default)]
    admins: Vec<String>,
    #[serde(default)]
    identity: Option<RawIdentity>,
    #[serde(default)]
    ca: RawCa,
    #[serde(default)]
    workload_api: Vec<RawRegistration>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    store: store::RawStore,
    #[serde(default)]
    edges: insight::RawEdges,
    #[serde(default)]
    anomaly: insight::RawAnomaly,
    #[serde(default)]
    admin: insight::RawAdmin,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    idle_timeout: Option<String>,
    max_connections_per_peer: Option<usize>,
    max_streams_per_peer: Option<usize>,
    max_message_bytes_per_peer: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCa {
    enabled: Option<bool>,
    svid_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistration {
    socket: PathBuf,
    spiffe_id: String,
    uid: Option<u32>,
}

/// Where the control plane's own serving SVID comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlIdentity {
    /// Issued by the built-in CA to itself, rotated like any workload's.
    BuiltinCa { spiffe_id: SpiffeId },
    /// Any sidecar source (SPIRE's Workload API, files).
    Source(IdentityConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaConfig {
    pub enabled: bool,
    pub svid_ttl: Duration,
}

/// One `[[workload_api]]` registration: the socket a workload is handed, and its identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRegistration {
    pub socket: PathBuf,
    pub spiffe_id: SpiffeId,
    /// When set, only callers with this Unix uid (SO_PEERCRED) get this identity.
    pub uid: Option<u32>,
}

/// `[limits]`: what one caller may hold (each caller is a workload with a valid SVID, or a
/// local process on a Workload API socket; zero trust assumes any may be compromised).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlLimits {
    /// A connection (policy API or Workload API) with no call in flight this long is
    /// closed. A sidecar's policy watch and a workload's SVID stream are calls in flight.
    pub idle_timeout: Duration,
    /// Policy API connections per caller SPIFFE ID. Every replica of a workload has the
    /// same ID (one per service account) and holds one connection: raise it above the
    /// largest replica count.
    pub max_connections_per_peer: usize,
    /// Policy API calls in flight (HTTP/2 streams; a watch is one) per caller SPIFFE ID,
    /// over all its connections. The same note on replicas applies.
    pub max_streams_per_peer: usize,
    /// Bytes of request messages the policy API may hold for one caller SPIFFE ID at
    /// once, over all its calls (each call counts the largest message it has announced,
    /// until it ends). A sidecar's watch holds its largest edge report (at most 192 KiB,
    /// usually a few KiB), so the default fits hundreds of replicas reporting at the
    /// largest size and bounds what one caller can make the control plane hold.
    pub max_message_bytes_per_peer: usize,
}

/// The largest request message of the policy API (PutPolicy's limit): the smallest
/// `max_message_bytes_per_peer` that still lets an admin write any policy.
pub const MAX_REQUEST_MESSAGE: usize = 4 * 1024 * 1024;

impl Default for ControlLimits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            max_connections_per_peer: 1024,
            max_streams_per_peer: 1024,
            max_message_bytes_per_peer: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ControlPlaneConfig {
    pub trust_domain: TrustDomain,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admins: Vec<SpiffeId>,
    pub identity: ControlIdentity,
    pub ca: CaConfig,
    pub workload_api: Vec<WorkloadRegistration>,
    pub limits: ControlLimits,
    pub store: StoreConfig,
    /// `[edges]`: the sidecars' edge reports.
    pub edges: crate::insight::EdgesConfig,
    /// `[anomaly]`: the rules run on them.
    pub anomaly: crate::insight::anomaly::AnomalyConfig,
    /// `[admin]`: the HTTP admin listener.
    pub admin: AdminConfig,
}

impl ControlPlaneConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let (file, text) = read_config_file(path)?;
        Self::from_toml(&file, &text)
    }

    pub fn from_toml(file: &str, text: &str) -> Result<Self, ConfigError> {
        let at = Errors { file };
        let e = |key: &str, problem: String| at.error(key, problem);
        let raw: RawConfig = warden_config::parse_toml(file, text)?;
        let trust_domain = TrustDomain::new(&raw.trust_domain)
            .map_err(|err| e("trust_domain", format!("{:?}: {err}", raw.trust_domain)))?;
        let workload_id = |key: &str, text: &str| at.workload_id(key, text, Some(&trust_domain));
        let listen = raw.listen.parse().map_err(|_| {
            e(
                "listen",
                format!("{:?} is not an IP address with a port", raw.listen),
            )
        })?;
        if raw.admins.is_empty() {
            return Err(e(
                "admins",
                "at least one admin SPIFFE ID is needed, or nobody can change policy".into(),
            ));
        }
        let admins = raw
            .admins
            .iter()
            .enumerate()
            .map(|(i, a)| workload_id(&format!("admins[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let ca = CaConfig {
            enabled: raw.ca.enabled.unwrap_or(true),
            svid_ttl: match raw.ca.svid_ttl {
                None => Duration::from_secs(3600),
                Some(t) => match parse_duration(&t) {
                    Ok(d) if d >= Duration::from_secs(2) => d,
                    Ok(_) => return Err(e("ca.svid_ttl", "must be at least 2s".into())),
                    Err(p) => return Err(e("ca.svid_ttl", p)),
                },
            },
        };
        let default_id = || {
            SpiffeId::parse(&format!(
                "{}/warden/control-plane",
                trust_domain.id_string()
            ))
        };
        let identity = match raw.identity {
            None => ControlIdentity::BuiltinCa {
                spiffe_id: default_id().map_err(|err| e("trust_domain", err.to_string()))?,
            },
            Some(id) if id.source == "builtin-ca" => {
                for (present, key) in [
                    (id.endpoint.is_some(), "identity.endpoint"),
                    (id.cert.is_some(), "identity.cert"),
                    (id.key.is_some(), "identity.key"),
                    (id.bundle.is_some(), "identity.bundle"),
                ] {
                    if present {
                        return Err(e(key, "is not used with source = \"builtin-ca\"".into()));
                    }
                }
                if !ca.enabled {
                    return Err(e(
                        "identity.source",
                        "\"builtin-ca\" needs [ca] enabled".into(),
                    ));
                }
                let spiffe_id = match id.spiffe_id.as_deref() {
                    Some(t) => workload_id("identity.spiffe_id", t)?,
                    None => default_id().map_err(|err| e("trust_domain", err.to_string()))?,
                };
                ControlIdentity::BuiltinCa { spiffe_id }
            }
            Some(id) => ControlIdentity::Source(at.identity(id, &trust_domain, &["builtin-ca"])?),
        };
        let mut workload_api = Vec::new();
        for (i, r) in raw.workload_api.into_iter().enumerate() {
            if !ca.enabled {
                return Err(e(
                    &format!("workload_api[{i}]"),
                    "serving the Workload API needs [ca] enabled".into(),
                ));
            }
            if !r.socket.is_absolute() {
                return Err(e(
                    &format!("workload_api[{i}].socket"),
                    format!("{}: must be an absolute path", r.socket.display()),
                ));
            }
            workload_api.push(WorkloadRegistration {
                spiffe_id: workload_id(&format!("workload_api[{i}].spiffe_id"), &r.spiffe_id)?,
                socket: r.socket,
                uid: r.uid,
            });
        }
        let defaults = ControlLimits::default();
        let at_least_one = |key: &str, v: Option<usize>, default: usize| match v {
            None => Ok(default),
            Some(0) => Err(e(key, "must be at least 1".into())),
            Some(n) => Ok(n),
        };
        let limits = ControlLimits {
            idle_timeout: match raw.limits.idle_timeout {
                None => defaults.idle_timeout,
                Some(t) => match parse_duration(&t) {
                    Ok(d) if d >= Duration::from_secs(1) => d,
                    Ok(_) => return Err(e("limits.idle_timeout", "must be at least 1s".into())),
                    Err(p) => return Err(e("limits.idle_timeout", p)),
                },
            },
            max_connections_per_peer: at_least_one(
                "limits.max_connections_per_peer",
                raw.limits.max_connections_per_peer,
                defaults.max_connections_per_peer,
            )?,
            max_streams_per_peer: at_least_one(
                "limits.max_streams_per_peer",
                raw.limits.max_streams_per_peer,
                defaults.max_streams_per_peer,
            )?,
            max_message_bytes_per_peer: match raw.limits.max_message_bytes_per_peer {
                None => defaults.max_message_bytes_per_peer,
                Some(n) if n < MAX_REQUEST_MESSAGE => {
                    return Err(e(
                        "limits.max_message_bytes_per_peer",
                        format!(
                            "{n} is less than {MAX_REQUEST_MESSAGE} (4 MiB, the largest request message: an admin's PutPolicy)"
                        ),
                    ));
                }
                Some(n) => n,
            },
        };
        let store = store::store_config(&at, raw.store)?;
        let edges = insight::edges(&at, raw.edges)?;
        let anomaly = insight::anomaly(&at, raw.anomaly)?;
        let admin = insight::admin(&at, raw.admin)?;
        Ok(Self {
            trust_domain,
            listen,
            data_dir: raw.data_dir,
            admins,
            identity,
            ca,
            workload_api,
            limits,
            store,
            edges,
            anomaly,
            admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
trust_domain = "example.org"
listen = "127.0.0.1:7443"
data_dir = "/var/lib/warden"
admins = ["spiffe://example.org/warden/admin"]
[ca]
svid_ttl = "1h"
[[workload_api]]
socket = "/run/warden/agents/retriever.sock"
spiffe_id = "spiffe://example.org/ns/rag/sa/retriever"
"#;

    #[test]
    fn the_message_share_defaults_to_64_mib_and_is_at_least_the_largest_message() {
        let c = ControlPlaneConfig::from_toml("cp.toml", GOOD).expect("valid");
        assert_eq!(c.limits.max_message_bytes_per_peer, 64 * 1024 * 1024);
        let c = ControlPlaneConfig::from_toml(
            "cp.toml",
            &format!("{GOOD}[limits]\nmax_message_bytes_per_peer = 4194304\n"),
        )
        .expect("valid");
        assert_eq!(c.limits.max_message_bytes_per_peer, MAX_REQUEST_MESSAGE);
    }

    #[test]
    fn the_documented_example_parses_with_defaults() {
        let c = ControlPlaneConfig::from_toml("cp.toml", GOOD).expect("valid");
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert!(c.ca.enabled);
        assert_eq!(c.ca.svid_ttl, Duration::from_secs(3600));
        assert_eq!(
            c.identity,
            ControlIdentity::BuiltinCa {
                spiffe_id: SpiffeId::parse("spiffe://example.org/warden/control-plane")
                    .expect("id")
            }
        );
        assert_eq!(c.workload_api.len(), 1);
        assert_eq!(c.limits, ControlLimits::default());
        assert_eq!(c.store, StoreConfig::Embedded);
    }

    #[test]
    fn an_etcd_store_parses_and_its_errors_name_the_key() {
        let etcd = format!(
            "{GOOD}[store]\nbackend = \"etcd\"\nendpoints = [\"https://10.0.0.1:2379\", \"https://etcd-1:2379/\"]\nprefix = \"/warden/prod/\"\nca = \"/etc/etcd/ca.crt\"\ncert = \"/etc/etcd/c.crt\"\nkey = \"/etc/etcd/c.key\"\n"
        );
        let c = ControlPlaneConfig::from_toml("cp.toml", &etcd).expect("valid");
        let StoreConfig::Etcd(e) = c.store else {
            panic!("not etcd: {:?}", c.store);
        };
        assert_eq!(e.endpoints.len(), 2);
        assert_eq!(e.prefix, "/warden/prod");
        assert_eq!(e.ca, PathBuf::from("/etc/etcd/ca.crt"));
        assert!(e.client.is_some());
        for (edit, key) in [
            (
                etcd.replace("https://10.0.0.1:2379", "http://10.0.0.1:2379"),
                "store.endpoints[0]",
            ),
            (
                etcd.replace("https://etcd-1:2379/", "etcd-1:2379"),
                "store.endpoints[1]",
            ),
            (etcd.replace("\"etcd\"\n", "\"consul\"\n"), "store.backend"),
            (
                etcd.replace("prefix = \"/warden/prod/\"", "prefix = \"warden\""),
                "store.prefix",
            ),
            (
                etcd.replace("prefix = \"/warden/prod/\"", "prefix = \"/\""),
                "store.prefix",
            ),
            (etcd.replace("ca = \"/etc/etcd/ca.crt\"\n", ""), "store.ca"),
            (etcd.replace("key = \"/etc/etcd/c.key\"\n", ""), "store.key"),
            (
                etcd.replace("cert = \"/etc/etcd/c.crt\"\n", ""),
                "store.cert",
            ),
            (etcd.replace("backend = \"etcd\"\n", ""), "store.endpoints"),
            (format!("{etcd}bogus = 1\n"), "store.bogus"),
            (
                format!("{GOOD}[store]\nendpoints = []\nbackend = \"etcd\"\nca = \"x\"\n"),
                "store.endpoints",
            ),
        ] {
            let err = ControlPlaneConfig::from_toml("cp.toml", &edit).expect_err(key);
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn anomaly_edges_and_admin_sections_default_and_name_their_errors() {
        let c = ControlPlaneConfig::from_toml("cp.toml", GOOD).expect("valid");
        assert_eq!(c.anomaly, crate::insight::anomaly::AnomalyConfig::default());
        assert_eq!(c.edges, crate::insight::EdgesConfig::default());
        assert_eq!(
            c.admin.listen,
            Some("127.0.0.1:15010".parse().expect("addr"))
        );
        assert!(!c.admin.explicit);
        let set = format!(
            "{GOOD}[anomaly]\nresponse = \"quarantine\"\nlearning = \"0s\"\nwindow = \"100ms\"\nkinds = [\"deny_burst\"]\nspike_factor = 3.5\n[edges]\nmax_edges = 10\nmin_report_interval = \"50ms\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
        );
        let c = ControlPlaneConfig::from_toml("cp.toml", &set).expect("valid");
        assert_eq!(
            c.anomaly.response,
            crate::insight::anomaly::Response::Quarantine
        );
        assert_eq!(c.anomaly.learning, Duration::ZERO);
        assert_eq!(c.anomaly.window, Duration::from_millis(100));
        assert!(c.anomaly.kinds.deny_burst && !c.anomaly.kinds.new_edge);
        assert_eq!(c.anomaly.spike_factor, 3.5);
        assert_eq!(c.edges.max_edges, 10);
        assert!(c.admin.explicit);
        let off = format!("{GOOD}[admin]\nenabled = false\n");
        assert_eq!(
            ControlPlaneConfig::from_toml("cp.toml", &off)
                .expect("valid")
                .admin
                .listen,
            None
        );
        for (extra, key) in [
            ("[anomaly]\nresponse = \"block\"\n", "anomaly.response"),
            ("[anomaly]\nkinds = [\"weird\"]\n", "anomaly.kinds[0]"),
            ("[anomaly]\nwindow = \"0s\"\n", "anomaly.window"),
            ("[anomaly]\nspike_factor = 0.5\n", "anomaly.spike_factor"),
            ("[anomaly]\ndeny_burst = 0\n", "anomaly.deny_burst"),
            (
                "[anomaly]\nbaseline_windows = 0\n",
                "anomaly.baseline_windows",
            ),
            ("[edges]\nmax_edges = 0\n", "edges.max_edges"),
            ("[admin]\nlisten = \"localhost\"\n", "admin.listen"),
            (
                "[admin]\nenabled = false\nlisten = \"127.0.0.1:1\"\n",
                "admin.listen",
            ),
            ("[anomaly]\nbogus = 1\n", "anomaly.bogus"),
        ] {
            let err =
                ControlPlaneConfig::from_toml("cp.toml", &format!("{GOOD}{extra}")).expect_err(key);
            assert_eq!(err.key, key, "{err}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        for (edit, key) in [
            (
                GOOD.replace("listen = \"127.0.0.1:7443\"", "listen = \"x\""),
                "listen",
            ),
            (
                GOOD.replace(
                    "spiffe://example.org/warden/admin",
                    "spiffe://other.org/admin",
                ),
                "admins[0]",
            ),
            (
                GOOD.replace("svid_ttl = \"1h\"", "svid_ttl = \"1s\""),
                "ca.svid_ttl",
            ),
            (
                GOOD.replace("/run/warden/agents/retriever.sock", "relative.sock"),
                "workload_api[0].socket",
            ),
            (GOOD.replace("[ca]", "[ca]\nbogus = 1"), "ca.bogus"),
            (
                format!("{GOOD}[limits]\nidle_timeout = \"0s\"\n"),
                "limits.idle_timeout",
            ),
            (
                format!("{GOOD}[limits]\nmax_streams_per_peer = 0\n"),
                "limits.max_streams_per_peer",
            ),
            (
                format!("{GOOD}[limits]\nmax_message_bytes_per_peer = 4194303\n"),
                "limits.max_message_bytes_per_peer",
            ),
        ] {
            let err = ControlPlaneConfig::from_toml("cp.toml", &edit).expect_err(key);
            assert_eq!(err.key, key, "{err}");
        }
    }
}
