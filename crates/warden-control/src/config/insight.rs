//! `[edges]`, `[anomaly]` and `[admin]`: what the control plane keeps of the sidecars' edge
//! reports, the anomaly rules it runs on them, and its HTTP admin listener.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use warden_config::{ConfigError, Errors};

use crate::insight::EdgesConfig;
use crate::insight::anomaly::{AnomalyConfig, Response};

/// The admin listener's address unless `[admin] listen` says otherwise: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:15010";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEdges {
    max_edges: Option<usize>,
    min_report_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAnomaly {
    response: Option<String>,
    learning: Option<String>,
    window: Option<String>,
    kinds: Option<Vec<String>>,
    spike_factor: Option<f64>,
    spike_floor: Option<u64>,
    baseline_windows: Option<u32>,
    deny_burst: Option<u64>,
    deny_factor: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    enabled: Option<bool>,
    listen: Option<String>,
}

/// `[admin]`: `/metrics`, `/healthz`, `/readyz`, `/graph`, `/graph.json` over plain HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminConfig {
    /// `None`: no admin listener (`enabled = false`).
    pub listen: Option<SocketAddr>,
    /// `listen` was written in the file. The default address may be taken (several control
    /// planes on one host): then the control plane logs it and runs without the listener;
    /// an address the operator asked for must be bound, or start-up fails.
    pub explicit: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN_LISTEN.parse().ok(),
            explicit: false,
        }
    }
}

pub(super) fn edges(at: &Errors<'_>, raw: RawEdges) -> Result<EdgesConfig, ConfigError> {
    let defaults = EdgesConfig::default();
    let max_edges = match raw.max_edges {
        None => defaults.max_edges,
        Some(n @ 1..=10_000_000) => n,
        Some(n) => {
            return Err(at.error(
                "edges.max_edges",
                format!("{n} is not between 1 and 10000000"),
            ));
        }
    };
    Ok(EdgesConfig {
        max_edges,
        min_report_interval: at.duration(
            "edges.min_report_interval",
            raw.min_report_interval.as_deref(),
            defaults.min_report_interval,
            Duration::from_millis(10),
        )?,
    })
}

fn factor(at: &Errors<'_>, key: &str, v: Option<f64>, default: f64) -> Result<f64, ConfigError> {
    match v {
        None => Ok(default),
        Some(f) if f.is_finite() && f > 1.0 && f <= 1000.0 => Ok(f),
        Some(f) => Err(at.error(key, format!("{f} is not a factor above 1 and at most 1000"))),
    }
}

pub(super) fn anomaly(at: &Errors<'_>, raw: RawAnomaly) -> Result<AnomalyConfig, ConfigError> {
    let d = AnomalyConfig::default();
    let response = match raw.response.as_deref() {
        None => d.response,
        Some("alert") => Response::Alert,
        Some("quarantine") => Response::Quarantine,
        Some(other) => {
            return Err(at.error(
                "anomaly.response",
                format!("{other:?}: expected \"alert\" or \"quarantine\""),
            ));
        }
    };
    let mut kinds = d.kinds;
    if let Some(list) = raw.kinds {
        kinds = Default::default();
        for (i, k) in list.iter().enumerate() {
            match k.as_str() {
                "new_edge" => kinds.new_edge = true,
                "rate_spike" => kinds.rate_spike = true,
                "deny_burst" => kinds.deny_burst = true,
                other => {
                    return Err(at.error(
                        format!("anomaly.kinds[{i}]"),
                        format!(
                            "{other:?}: expected \"new_edge\", \"rate_spike\" or \"deny_burst\""
                        ),
                    ));
                }
            }
        }
    }
    let window = at.duration(
        "anomaly.window",
        raw.window.as_deref(),
        d.window,
        Duration::from_millis(10),
    )?;
    let learning = match raw.learning.as_deref() {
        // "0s": every edge after start-up is new.
        Some(t) if warden_config::parse_duration(t).is_ok_and(|d| d.is_zero()) => Duration::ZERO,
        other => at.duration(
            "anomaly.learning",
            other,
            d.learning,
            Duration::from_millis(10),
        )?,
    };
    let baseline_windows = match raw.baseline_windows {
        None => d.baseline_windows,
        Some(n @ 1..=10_000) => n,
        Some(n) => {
            return Err(at.error(
                "anomaly.baseline_windows",
                format!("{n} is not between 1 and 10000"),
            ));
        }
    };
    let deny_burst = match raw.deny_burst {
        None => d.deny_burst,
        Some(0) => return Err(at.error("anomaly.deny_burst", "must be at least 1")),
        Some(n) => n,
    };
    Ok(AnomalyConfig {
        response,
        learning,
        window,
        kinds,
        spike_factor: factor(at, "anomaly.spike_factor", raw.spike_factor, d.spike_factor)?,
        spike_floor: raw.spike_floor.unwrap_or(d.spike_floor),
        baseline_windows,
        deny_burst,
        deny_factor: factor(at, "anomaly.deny_factor", raw.deny_factor, d.deny_factor)?,
        ..d
    })
}

pub(super) fn admin(at: &Errors<'_>, raw: RawAdmin) -> Result<AdminConfig, ConfigError> {
    if raw.enabled == Some(false) {
        if raw.listen.is_some() {
            return Err(at.error("admin.listen", "is not used with enabled = false"));
        }
        return Ok(AdminConfig {
            listen: None,
            explicit: false,
        });
    }
    match raw.listen {
        None => Ok(AdminConfig::default()),
        Some(text) => {
            let addr: SocketAddr = text.parse().map_err(|_| {
                at.error(
                    "admin.listen",
                    format!("{text:?} is not an IP address with a port"),
                )
            })?;
            Ok(AdminConfig {
                listen: Some(addr),
                explicit: true,
            })
        }
    }
}
