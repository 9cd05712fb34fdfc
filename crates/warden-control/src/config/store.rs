//! `[store]`: where policies, history and (with the built-in CA) the CA root live. The
//! embedded redb file in `data_dir` is the default; `backend = "etcd"` shares one etcd v3
//! cluster between several control-plane replicas.

use std::path::PathBuf;

use serde::Deserialize;
use warden_config::{ConfigError, Errors};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    backend: Option<String>,
    endpoints: Option<Vec<String>>,
    prefix: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// The policy store a control plane uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// redb in `data_dir/policy.redb`; the CA in `data_dir/ca/`. One replica only.
    #[default]
    Embedded,
    /// etcd v3, shared by every replica.
    Etcd(EtcdConfig),
}

/// `[store] backend = "etcd"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `https://host:port`, as written (at least one).
    pub endpoints: Vec<String>,
    /// Every key Warden writes starts with this (`/warden` by default); no trailing `/`.
    pub prefix: String,
    /// PEM bundle that signs the etcd members' server certificates.
    pub ca: PathBuf,
    /// Client certificate and key (PEM) presented to etcd, when etcd asks for one (it should:
    /// the CA key is in the store).
    pub client: Option<(PathBuf, PathBuf)>,
}

impl EtcdConfig {
    /// The endpoints as one string, for error messages: `https://a:2379, https://b:2379`.
    pub fn endpoints_text(&self) -> String {
        self.endpoints.join(", ")
    }
}

/// `host:port` of an `https://host:port` URL, or why not.
pub fn endpoint_authority(url: &str) -> Result<&str, String> {
    let rest = url.strip_prefix("https://").ok_or_else(|| {
        if url.starts_with("http://") {
            "plain http is refused: etcd holds the built-in CA's key and every policy, so \
             the control plane talks to it over TLS only (https://host:port)"
                .to_owned()
        } else {
            "expected https://host:port".to_owned()
        }
    })?;
    let authority = rest.trim_end_matches('/');
    let valid = authority
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !valid || authority.contains('/') || authority.contains('@') {
        return Err("expected https://host:port".to_owned());
    }
    Ok(authority)
}

pub(super) fn store_config(at: &Errors<'_>, raw: RawStore) -> Result<StoreConfig, ConfigError> {
    let e = |key: &str, problem: String| at.error(key, problem);
    let backend = raw.backend.as_deref().unwrap_or("embedded");
    match backend {
        "embedded" => {
            for (present, key) in [
                (raw.endpoints.is_some(), "store.endpoints"),
                (raw.prefix.is_some(), "store.prefix"),
                (raw.ca.is_some(), "store.ca"),
                (raw.cert.is_some(), "store.cert"),
                (raw.key.is_some(), "store.key"),
            ] {
                if present {
                    return Err(e(key, "is only used with backend = \"etcd\"".into()));
                }
            }
            Ok(StoreConfig::Embedded)
        }
        "etcd" => {
            let endpoints = raw.endpoints.unwrap_or_default();
            if endpoints.is_empty() {
                return Err(e(
                    "store.endpoints",
                    "at least one etcd endpoint (https://host:port) is needed".into(),
                ));
            }
            for (i, url) in endpoints.iter().enumerate() {
                endpoint_authority(url).map_err(|problem| {
                    e(
                        &format!("store.endpoints[{i}]"),
                        format!("{url:?}: {problem}"),
                    )
                })?;
            }
            let prefix = raw.prefix.unwrap_or_else(|| "/warden".into());
            let trimmed = prefix.trim_end_matches('/');
            if !prefix.starts_with('/') || trimmed.is_empty() {
                return Err(e(
                    "store.prefix",
                    format!(
                        "{prefix:?}: must start with / and name a key prefix, e.g. \"/warden\""
                    ),
                ));
            }
            if prefix.chars().any(|c| c.is_control()) {
                return Err(e("store.prefix", format!("{prefix:?}: control characters")));
            }
            let ca = raw.ca.ok_or_else(|| {
                e(
                    "store.ca",
                    "is needed with backend = \"etcd\": the PEM bundle that signs the etcd \
                     members' certificates"
                        .into(),
                )
            })?;
            let client = match (raw.cert, raw.key) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                (Some(_), None) => {
                    return Err(e("store.key", "is needed with store.cert".into()));
                }
                (None, Some(_)) => {
                    return Err(e("store.cert", "is needed with store.key".into()));
                }
            };
            Ok(StoreConfig::Etcd(EtcdConfig {
                endpoints,
                prefix: trimmed.to_owned(),
                ca,
                client,
            }))
        }
        other => Err(e(
            "store.backend",
            format!("{other:?}: expected \"embedded\" or \"etcd\""),
        )),
    }
}
