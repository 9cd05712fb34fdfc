//! The sidecar's TOML configuration, parsed strictly: unknown keys are errors, and every
//! error names the file, the key path (`inbound[0].allow[1]`) and the problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use warden_config::{Errors, RawIdentity};
pub use warden_identity::IdentityConfig;
use warden_identity::{SpiffeId, TrustDomain};
use warden_policy::Pattern;

pub use warden_config::{ConfigError, parse_duration, read_config_file};

mod jwt;
mod listeners;

pub use jwt::{JwksSource, JwtConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: String,
    identity: RawIdentity,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    inbound: Vec<RawInbound>,
    #[serde(default)]
    outbound: Vec<RawOutbound>,
    capture: Option<RawCapture>,
    #[serde(default)]
    egress: Vec<RawEgress>,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    app_probe: Vec<crate::app_probe::RawAppProbe>,
    #[serde(default)]
    jwt: Vec<jwt::RawJwt>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    control_plane: Option<crate::control::urls::RawControlPlane>,
    control_plane_id: Option<String>,
    cache: Option<PathBuf>,
    edge_reports: Option<bool>,
    report_interval: Option<String>,
    report_max_edges: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInbound {
    name: String,
    listen: Option<String>,
    port: Option<u16>,
    forward: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    protocol: Option<String>,
    forward_client_cert: Option<String>,
    app_protocol: Option<String>,
    proxy_protocol: Option<String>,
    proxy_protocol_tlv: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutbound {
    name: String,
    listen: Option<String>,
    connect: Option<String>,
    destinations: Option<Vec<String>>,
    server_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapture {
    inbound: Option<String>,
    outbound: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    name: String,
    hosts: Vec<String>,
    ports: Vec<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    metrics_listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    peer_id_limit: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    handshake_timeout: Option<String>,
    connect_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_peer: Option<usize>,
    max_pending_handshakes: Option<usize>,
    workers: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The control plane's replicas (empty: none); the watch fails over between them.
    pub control_plane: Vec<String>,
    pub control_plane_id: Option<SpiffeId>,
    pub cache: Option<PathBuf>,
    /// Report edge counts to the control plane (under a control plane only).
    pub edge_reports: bool,
    /// At most one edge report per interval.
    pub report_interval: Duration,
    /// Distinct edges counted between two reports; past it, peers count as `other`.
    pub report_max_edges: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            control_plane: Vec::new(),
            control_plane_id: None,
            cache: None,
            edge_reports: true,
            report_interval: Duration::from_secs(10),
            report_max_edges: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundConfig {
    pub name: String,
    /// An explicit listener (peers dial it directly); `None` in capture-only mode.
    pub listen: Option<SocketAddr>,
    /// Capture mode: the app's own port. A captured inbound connection whose original
    /// destination port is this one is served by this listener.
    pub port: Option<u16>,
    /// Where the app listens (default `127.0.0.1:<port>` in capture mode).
    pub forward: String,
    /// The static allowlist; a control-plane policy replaces it. Empty means deny all.
    pub allow: Vec<Pattern>,
    /// What runs inside the mTLS: bytes (`tcp`) or HTTP requests (`http`).
    pub protocol: InboundProtocol,
}

/// `[[inbound]] protocol` and the keys that belong to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundProtocol {
    /// Bytes, relayed as they come; optionally preceded by a PROXY v2 header to the app
    /// carrying the peer's SPIFFE ID in a TLV of this type.
    Tcp { proxy_protocol_tlv: Option<u8> },
    /// HTTP/1.1 or HTTP/2 inside the mTLS, decided per request by the L7 routes.
    Http {
        forward_client_cert: ForwardClientCert,
        app_protocol: AppProtocol,
    },
}

/// `forward_client_cert`: what the app learns of the caller in `x-forwarded-client-cert`.
/// A client's own copy of the header is dropped either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardClientCert {
    /// Drop the client's header, send none.
    Sanitize,
    /// Drop the client's header, send `By=<our ID>;URI=<peer ID>`.
    SanitizeSet,
}

/// `app_protocol`: how the sidecar speaks to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    Http1,
    /// HTTP/2 without TLS, prior knowledge.
    H2c,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundConfig {
    pub name: String,
    /// An explicit listener on loopback (the app dials it); `None` in capture-only mode.
    pub listen: Option<SocketAddr>,
    /// Where the explicit listener connects. Captured connections go to their original
    /// destination instead.
    pub connect: Option<String>,
    /// Capture mode: the `host:port`s this listener claims. A captured outbound connection
    /// whose original destination is one of their addresses (names resolved, and
    /// re-resolved while the sidecar runs) is served by this listener.
    pub destinations: Vec<String>,
    pub server_id: SpiffeId,
}

/// `[capture]`: the listeners that iptables rules (`warden init`) redirect to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Redirected inbound connections; the original destination port picks the
    /// `[[inbound]]` by its `port`.
    pub inbound: Option<SocketAddr>,
    /// Redirected outbound connections (loopback only); the original destination picks
    /// the `[[outbound]]` by its `destinations`, or an `[[egress]]`.
    pub outbound: Option<SocketAddr>,
}

/// `[[egress]]`: TLS to a destination outside the mesh, passed through untouched when the
/// ClientHello's SNI is one of `hosts` and the original destination port one of `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressConfig {
    pub name: String,
    /// Lower-case DNS names; `*.example.com` matches exactly one more label.
    pub hosts: Vec<String>,
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Inbound connections one peer SPIFFE ID may hold (checked once its handshake has
    /// named it), so one allowed but misbehaving peer cannot take every slot. Default: a
    /// quarter of `max_connections` ([`Limits::default_per_peer`]).
    pub max_connections_per_peer: usize,
    /// Inbound connections allowed to be in their TLS handshake at once. A permit is held
    /// only until the handshake ends, so a flood of idle or slow clients (slowloris) is
    /// refused at accept (`warden_connections_closed_total{reason="limit"}`) instead of
    /// holding sockets and handshake state up to `max_connections`.
    pub max_pending_handshakes: usize,
    /// Data-plane threads (`limits.workers`): `None` (unset) means one per CPU the process
    /// may use, at most [`DEFAULT_MAX_WORKERS`]; `Some(0)` one per CPU with no such cap.
    /// Each worker runs its own event loop and accept sockets, and a connection stays on
    /// the thread that accepted it. See [`Limits::worker_threads`].
    pub workers: Option<usize>,
}

/// Upper bound on `limits.workers`: more threads than this never helps a sidecar, and a
/// typo such as `workers = 10000` should not start ten thousand threads.
pub const MAX_WORKERS: usize = 64;

/// Workers when `limits.workers` is unset. A sidecar shares its pod with the app it serves,
/// and a pod without a CPU limit sees every core of the node: one thread per core of a
/// 64-core node would cost memory on every pod of the fleet for capacity a sidecar rarely
/// needs (Istio's sidecars default to 2 workers for the same reason). Set `workers` to
/// raise it.
pub const DEFAULT_MAX_WORKERS: usize = 2;

impl Limits {
    /// The default share of one peer: a quarter of `max_connections` (at least 1), so a
    /// single peer leaves three quarters to the others while a busy caller with a large
    /// connection pool still fits (2,500 of the default 10,000).
    pub fn default_per_peer(max_connections: usize) -> usize {
        (max_connections / 4).max(1)
    }

    /// How many data-plane threads to run (at least 1). CPUs available to the process
    /// include its cgroup CPU quota, so a pod limited to one CPU gets one worker.
    pub fn worker_threads(&self) -> usize {
        let cpus = || {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        };
        match self.workers {
            None => cpus().min(DEFAULT_MAX_WORKERS),
            Some(0) => cpus().min(MAX_WORKERS),
            Some(n) => n,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(3600),
            max_connections: 10_000,
            max_connections_per_peer: Self::default_per_peer(10_000),
            max_pending_handshakes: 1024,
            workers: None,
        }
    }
}

/// A validated sidecar configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarConfig {
    pub trust_domain: TrustDomain,
    pub identity: IdentityConfig,
    pub policy: PolicyConfig,
    pub inbound: Vec<InboundConfig>,
    pub outbound: Vec<OutboundConfig>,
    pub capture: CaptureConfig,
    pub egress: Vec<EgressConfig>,
    pub admin_listen: SocketAddr,
    /// `[admin] metrics_listen`: an extra listener serving only `/metrics`, `/healthz` and
    /// `/readyz`, which may bind publicly (the full admin API stays on `admin_listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// `[audit] path`: append audit records here instead of stderr.
    pub audit_path: Option<PathBuf>,
    /// `[metrics] peer_id_limit`: distinct `peer_id` label values before `other`.
    pub peer_id_limit: usize,
    pub limits: Limits,
    /// `[[app_probe]]`: the kubelet's probes of the app, answered on the metrics listener.
    pub app_probes: Vec<crate::app_probe::AppProbeConfig>,
    /// `[[jwt]]`: the issuers of end-user tokens (or JWT-SVIDs) the HTTP listeners accept.
    pub jwt: Vec<JwtConfig>,
}

pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:15000";

impl SidecarConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let (file, text) = read_config_file(path)?;
        Self::from_toml(&file, &text)
    }

    /// Parses `text`; `file` only names the source in errors.
    pub fn from_toml(file: &str, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = warden_config::parse_toml(file, text)?;
        Validator {
            at: Errors { file },
        }
        .validate(raw)
    }
}

struct Validator<'a> {
    at: Errors<'a>,
}

impl Validator<'_> {
    fn e(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        self.at.error(key, problem)
    }

    fn spiffe_id(&self, key: String, text: &str) -> Result<SpiffeId, ConfigError> {
        self.at.workload_id(&key, text, None)
    }

    fn addr(&self, key: String, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            self.e(
                key,
                format!("{text:?} is not an IP address with a port, like \"127.0.0.1:8443\""),
            )
        })
    }

    fn host_port(&self, key: String, text: &str) -> Result<String, ConfigError> {
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(text.to_owned())
            }
            _ => Err(self.e(key, format!("{text:?} is not host:port"))),
        }
    }

    fn duration(
        &self,
        key: &str,
        text: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        self.at
            .duration(key, text.as_deref(), default, Duration::from_nanos(1))
    }

    fn name(&self, key: String, name: &str, seen: &mut Vec<String>) -> Result<(), ConfigError> {
        if let Err(e) = warden_policy::ListenerName::parse(name) {
            return Err(self.e(key, format!("{name:?}: {e}")));
        }
        if seen.iter().any(|s| s == name) {
            return Err(self.e(
                key,
                format!("{name:?} is used by another listener of the same direction"),
            ));
        }
        seen.push(name.to_owned());
        Ok(())
    }

    fn validate(&self, raw: RawConfig) -> Result<SidecarConfig, ConfigError> {
        let trust_domain = TrustDomain::new(&raw.trust_domain)
            .map_err(|e| self.e("trust_domain", format!("{:?}: {e}", raw.trust_domain)))?;
        let identity = self.at.identity(raw.identity, &trust_domain, &[])?;
        let policy = PolicyConfig {
            control_plane_id: raw
                .policy
                .control_plane_id
                .as_deref()
                .map(|t| self.spiffe_id("policy.control_plane_id".into(), t))
                .transpose()?,
            control_plane: crate::control::urls::control_plane_urls(
                &self.at,
                raw.policy.control_plane,
            )?,
            cache: raw.policy.cache,
            edge_reports: raw.policy.edge_reports.unwrap_or(true),
            report_interval: match raw.policy.report_interval.as_deref() {
                None => PolicyConfig::default().report_interval,
                Some(t) => match parse_duration(t) {
                    Ok(d) if d >= Duration::from_millis(50) => d,
                    Ok(_) => {
                        return Err(self.e("policy.report_interval", "must be at least 50ms"));
                    }
                    Err(p) => return Err(self.e("policy.report_interval", p)),
                },
            },
            report_max_edges: match raw.policy.report_max_edges {
                None => PolicyConfig::default().report_max_edges,
                Some(n @ 1..=10_000) => n,
                Some(n) => {
                    return Err(self.e(
                        "policy.report_max_edges",
                        format!("{n} is not between 1 and 10000"),
                    ));
                }
            },
        };
        let capture = self.capture(raw.capture)?;
        let inbound = self.inbound(raw.inbound, &capture)?;
        let outbound = self.outbound(raw.outbound, &capture)?;
        let egress = self.egress(raw.egress, &capture)?;
        // Under capture a pod with nothing to serve and nothing to call is still
        // meaningful: every redirected connection is refused (or passes as egress).
        if inbound.is_empty() && outbound.is_empty() && capture == CaptureConfig::default() {
            return Err(self.e(
                "inbound",
                "no [[inbound]] or [[outbound]] listener is configured",
            ));
        }
        let admin_listen = self.addr(
            "admin.listen".into(),
            raw.admin.listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
        )?;
        let metrics_listen = raw
            .admin
            .metrics_listen
            .as_deref()
            .map(|t| self.addr("admin.metrics_listen".into(), t))
            .transpose()?;
        if let Some(path) = &raw.audit.path
            && path.as_os_str().is_empty()
        {
            return Err(self.e("audit.path", "must not be empty (omit it to log to stderr)"));
        }
        let peer_id_limit = match raw.metrics.peer_id_limit {
            Some(n) if n > 100_000 => {
                return Err(self.e(
                    "metrics.peer_id_limit",
                    format!("{n} is above 100000: each value is a time series per listener"),
                ));
            }
            Some(n) => n,
            None => crate::metrics::DEFAULT_PEER_ID_LIMIT,
        };
        let d = Limits::default();
        let max_connections = match raw.limits.max_connections {
            Some(0) => return Err(self.e("limits.max_connections", "must be at least 1")),
            Some(n) => n,
            None => d.max_connections,
        };
        let limits = Limits {
            handshake_timeout: self.duration(
                "limits.handshake_timeout",
                raw.limits.handshake_timeout,
                d.handshake_timeout,
            )?,
            connect_timeout: self.duration(
                "limits.connect_timeout",
                raw.limits.connect_timeout,
                d.connect_timeout,
            )?,
            idle_timeout: self.duration(
                "limits.idle_timeout",
                raw.limits.idle_timeout,
                d.idle_timeout,
            )?,
            max_connections,
            max_connections_per_peer: match raw.limits.max_connections_per_peer {
                Some(0) => {
                    return Err(self.e("limits.max_connections_per_peer", "must be at least 1"));
                }
                Some(n) if n > max_connections => {
                    return Err(self.e(
                        "limits.max_connections_per_peer",
                        format!("{n} is more than limits.max_connections ({max_connections})"),
                    ));
                }
                Some(n) => n,
                None => Limits::default_per_peer(max_connections),
            },
            max_pending_handshakes: match raw.limits.max_pending_handshakes {
                Some(0) => {
                    return Err(self.e(
                        "limits.max_pending_handshakes",
                        "must be at least 1 (connections over it are refused at accept)",
                    ));
                }
                Some(n) => n,
                None => d.max_pending_handshakes,
            },
            workers: match raw.limits.workers {
                Some(n) if n > MAX_WORKERS => {
                    return Err(self.e(
                        "limits.workers",
                        format!("must be at most {MAX_WORKERS} (0 = one per CPU)"),
                    ));
                }
                n => n,
            },
        };
        let app_probes =
            crate::app_probe::validate(&self.at, raw.app_probe, metrics_listen.is_some())?;
        let jwt = self.jwt(raw.jwt, &identity)?;
        Ok(SidecarConfig {
            trust_domain,
            identity,
            policy,
            inbound,
            outbound,
            capture,
            egress,
            admin_listen,
            metrics_listen,
            audit_path: raw.audit.path,
            peer_id_limit,
            limits,
            app_probes,
            jwt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Security invariant 6 (`docs/security.md`): without `[admin] listen`, the admin API
    /// binds loopback only.
    #[test]
    fn the_admin_api_binds_loopback_by_default() {
        let text = "trust_domain = \"example.org\"\n[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\n[[inbound]]\nname = \"h\"\nlisten = \"0.0.0.0:8443\"\nforward = \"127.0.0.1:1\"\n";
        let config = SidecarConfig::from_toml("f.toml", text).expect("valid");
        assert!(
            config.admin_listen.ip().is_loopback(),
            "{}",
            config.admin_listen
        );
        assert_eq!(config.admin_listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert_eq!(
            config.metrics_listen, None,
            "no public listener unless asked for"
        );
    }

    #[test]
    fn a_control_plane_url_the_watch_cannot_use_is_a_config_error() {
        let base = "trust_domain = \"example.org\"\n[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\n[[inbound]]\nname = \"h\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\n[policy]\n";
        for bad in [
            "http://cp:7443",
            "https://cp",
            "https://cp:port",
            "https://cp:7443/x",
        ] {
            let e =
                SidecarConfig::from_toml("f.toml", &format!("{base}control_plane = \"{bad}\"\n"))
                    .expect_err(bad);
            assert_eq!(e.key, "policy.control_plane", "{bad}: {e}");
        }
        SidecarConfig::from_toml(
            "f.toml",
            &format!("{base}control_plane = \"https://cp:7443\"\n"),
        )
        .expect("valid");
    }

    #[test]
    fn edge_report_settings_default_and_name_their_errors() {
        let base = "trust_domain = \"example.org\"\n[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\n[[inbound]]\nname = \"h\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\n[policy]\ncontrol_plane = \"https://cp:7443\"\n";
        let parsed = |extra: &str| SidecarConfig::from_toml("f.toml", &format!("{base}{extra}"));
        let c = parsed("").expect("valid");
        assert!(c.policy.edge_reports);
        assert_eq!(c.policy.report_interval, Duration::from_secs(10));
        assert_eq!(c.policy.report_max_edges, 256);
        let c = parsed("edge_reports = false\nreport_interval = \"100ms\"\nreport_max_edges = 8\n")
            .expect("valid");
        assert!(!c.policy.edge_reports);
        assert_eq!(c.policy.report_interval, Duration::from_millis(100));
        assert_eq!(c.policy.report_max_edges, 8);
        for (extra, key) in [
            ("report_interval = \"1ms\"\n", "policy.report_interval"),
            ("report_interval = \"soon\"\n", "policy.report_interval"),
            ("report_max_edges = 0\n", "policy.report_max_edges"),
            ("report_max_edges = 10001\n", "policy.report_max_edges"),
        ] {
            assert_eq!(parsed(extra).expect_err(extra).key, key);
        }
    }

    /// Fuzz regression: `""=""""""` (an unknown, empty key) produced an error with an
    /// empty key path; every error must say where the problem is.
    #[test]
    fn an_empty_unknown_key_is_named_as_top_level() {
        let e = SidecarConfig::from_toml("f.toml", "\"\"=\"\"\"\"\"\"").expect_err("invalid");
        assert_eq!(e.key, "(top level)", "{e}");
        let e = SidecarConfig::from_toml("f.toml", "[limits]\n\"\" = 1\n").expect_err("invalid");
        assert!(!e.key.is_empty(), "{e}");
    }

    /// One peer's share of inbound connections: a quarter of `max_connections` unless set,
    /// at least 1, and never 0 or more than `max_connections`.
    #[test]
    fn the_per_peer_share_defaults_to_a_quarter_and_is_checked() {
        let base = "trust_domain = \"example.org\"\n[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\n[[inbound]]\nname = \"h\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\n";
        let parsed = |extra: &str| SidecarConfig::from_toml("f.toml", &format!("{base}{extra}"));
        let share = |extra: &str| {
            parsed(extra)
                .expect("valid")
                .limits
                .max_connections_per_peer
        };
        assert_eq!(share(""), 2_500, "a quarter of the default 10,000");
        assert_eq!(Limits::default().max_connections_per_peer, 2_500);
        assert_eq!(share("[limits]\nmax_connections = 8\n"), 2);
        assert_eq!(share("[limits]\nmax_connections = 3\n"), 1, "at least 1");
        assert_eq!(
            share("[limits]\nmax_connections = 8\nmax_connections_per_peer = 8\n"),
            8
        );
        assert_eq!(
            share("[limits]\nmax_connections = 8\nmax_connections_per_peer = 1\n"),
            1
        );
        for (extra, problem) in [
            (
                "[limits]\nmax_connections_per_peer = 0\n",
                "must be at least 1",
            ),
            (
                "[limits]\nmax_connections = 8\nmax_connections_per_peer = 9\n",
                "9 is more than limits.max_connections (8)",
            ),
            (
                "[limits]\nmax_connections_per_peer = 10001\n",
                "10001 is more than limits.max_connections (10000)",
            ),
        ] {
            let e = parsed(extra).expect_err(extra);
            assert_eq!(e.key, "limits.max_connections_per_peer", "{e}");
            assert!(e.to_string().contains(problem), "{e}");
        }
    }

    #[test]
    fn workers_default_to_the_cpus_up_to_two_and_zero_means_every_cpu() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let with = |workers| Limits {
            workers,
            ..Limits::default()
        };
        assert_eq!(Limits::default().workers, None);
        assert_eq!(with(None).worker_threads(), cpus.min(DEFAULT_MAX_WORKERS));
        assert_eq!(with(Some(0)).worker_threads(), cpus.min(MAX_WORKERS));
        assert_eq!(with(Some(3)).worker_threads(), 3);
        let base = "trust_domain = \"example.org\"\n[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\n[[inbound]]\nname = \"h\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\n";
        let parsed = |extra: &str| SidecarConfig::from_toml("f.toml", &format!("{base}{extra}"));
        assert_eq!(parsed("").expect("valid").limits.workers, None);
        assert_eq!(
            parsed("[limits]\nworkers = 0\n")
                .expect("valid")
                .limits
                .workers,
            Some(0)
        );
        let e = parsed("[limits]\nworkers = 65\n").expect_err("too many");
        assert_eq!(e.key, "limits.workers", "{e}");
    }
}
