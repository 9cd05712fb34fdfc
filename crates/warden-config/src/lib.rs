//! The front-end every Warden config file goes through (sidecar, control plane): TOML parsed
//! strictly into the caller's raw serde types (unknown keys are errors), then validated by
//! the caller with the helpers here. Every error names the file, the key path
//! (`inbound[0].allow[1]`) and the problem, with the line where the parser knows it; the
//! `[identity]` table is one type with one validation for both files.
//!
//! It must never accept a value silently changed (a bad duration, an ID without a path, an
//! unknown key) and never produce an error that does not say where the problem is.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use warden_identity::{IdentityConfig, SpiffeId, TrustDomain, WorkloadId, WorkloadIdError};

/// A config error: where (file, key path) and what. The problem ends with ` (line N)` when
/// the TOML parser knows the line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{file}: {key}: {problem}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

/// Reads a config file: its name for error messages, and its text.
pub fn read_config_file(path: &Path) -> Result<(String, String), ConfigError> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((file, text)),
        Err(e) => Err(ConfigError {
            file,
            key: "(file)".into(),
            problem: format!("cannot read: {e}"),
        }),
    }
}

/// Parses `text` (from `file`) into `T`, strictly: syntax errors and unknown or mistyped
/// keys come back with the key path and the line.
pub fn parse_toml<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, ConfigError> {
    let at = Errors { file };
    let de = toml::Deserializer::parse(text).map_err(|e| {
        at.error(
            "(syntax)",
            e.message().to_owned() + &line_of(text, e.span()),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // An unknown key spelled `""` yields an empty path: still say where it is (found by
        // fuzzing the sidecar's config).
        let key = if path == "." || path.is_empty() {
            "(top level)".to_owned()
        } else {
            path
        };
        at.error(
            key,
            inner.message().to_owned() + &line_of(text, inner.span()),
        )
    })
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

/// Parses `10s`, `1h`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration like \"10s\" or \"1h\": {e}"))
}

/// Builds the errors of one file and validates the values every config file shares.
#[derive(Debug, Clone, Copy)]
pub struct Errors<'a> {
    pub file: &'a str,
}

impl Errors<'_> {
    pub fn error(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// A workload SPIFFE ID (one with a path), in `trust_domain` when one is given.
    pub fn workload_id(
        &self,
        key: &str,
        text: &str,
        trust_domain: Option<&TrustDomain>,
    ) -> Result<SpiffeId, ConfigError> {
        let id = match WorkloadId::parse(text) {
            Ok(id) => id.into_spiffe_id(),
            Err(WorkloadIdError::Invalid(e)) => {
                return Err(self.error(key, format!("{text:?}: {e}")));
            }
            Err(WorkloadIdError::NoPath(_)) => {
                return Err(self.error(
                    key,
                    format!("{text:?} has no path; a workload SPIFFE ID is needed"),
                ));
            }
        };
        if let Some(td) = trust_domain
            && id.trust_domain_name() != td.as_str()
        {
            return Err(self.error(key, format!("{id} is not in trust domain {td}")));
        }
        Ok(id)
    }

    /// An optional duration: absent gives `default`; zero or less than `min` is an error.
    pub fn duration(
        &self,
        key: &str,
        text: Option<&str>,
        default: Duration,
        min: Duration,
    ) -> Result<Duration, ConfigError> {
        match text {
            None => Ok(default),
            Some(t) => match parse_duration(t) {
                Ok(d) if d.is_zero() => Err(self.error(key, "must be greater than zero")),
                Ok(d) if d < min => Err(self.error(
                    key,
                    format!("must be at least {}", humantime::format_duration(min)),
                )),
                Ok(d) => Ok(d),
                Err(p) => Err(self.error(key, p)),
            },
        }
    }

    /// The `[identity]` table of a source every Warden process can use (`workload-api`,
    /// `files`). `others` names further sources the caller handles itself, for the message
    /// when `source` is none of them.
    pub fn identity(
        &self,
        raw: RawIdentity,
        trust_domain: &TrustDomain,
        others: &[&str],
    ) -> Result<IdentityConfig, ConfigError> {
        let only_for = |present: bool, key: &str, source: &str| {
            if present {
                Err(self.error(
                    format!("identity.{key}"),
                    format!("is not used with source = {source:?}"),
                ))
            } else {
                Ok(())
            }
        };
        match raw.source.as_str() {
            "workload-api" => {
                only_for(raw.cert.is_some(), "cert", "workload-api")?;
                only_for(raw.key.is_some(), "key", "workload-api")?;
                only_for(raw.bundle.is_some(), "bundle", "workload-api")?;
                let spiffe_id = raw
                    .spiffe_id
                    .as_deref()
                    .map(|t| self.workload_id("identity.spiffe_id", t, Some(trust_domain)))
                    .transpose()?;
                if let Some(ep) = &raw.endpoint
                    && !(ep.starts_with("unix:///") || ep.starts_with("tcp://"))
                {
                    return Err(self.error(
                        "identity.endpoint",
                        format!("{ep:?}: expected unix:///absolute/path or tcp://ip:port"),
                    ));
                }
                Ok(IdentityConfig::WorkloadApi {
                    endpoint: raw.endpoint,
                    spiffe_id,
                })
            }
            "files" => {
                only_for(raw.endpoint.is_some(), "endpoint", "files")?;
                only_for(raw.spiffe_id.is_some(), "spiffe_id", "files")?;
                let need = |v: Option<PathBuf>, key: &str| match v {
                    Some(p) if !p.as_os_str().is_empty() => Ok(p),
                    Some(_) => Err(self.error(format!("identity.{key}"), "must not be empty")),
                    None => Err(self.error(
                        format!("identity.{key}"),
                        "is required with source = \"files\"",
                    )),
                };
                Ok(IdentityConfig::Files {
                    cert: need(raw.cert, "cert")?,
                    key: need(raw.key, "key")?,
                    bundle: need(raw.bundle, "bundle")?,
                })
            }
            other => {
                let mut expected: Vec<String> = others.iter().map(|s| format!("{s:?}")).collect();
                expected.extend(["\"workload-api\"".to_owned(), "\"files\"".to_owned()]);
                let last = expected.pop().unwrap_or_default();
                Err(self.error(
                    "identity.source",
                    format!("{other:?}: expected {} or {last}", expected.join(", ")),
                ))
            }
        }
    }
}

/// The `[identity]` table as written, for every config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub source: String,
    pub endpoint: Option<String>,
    pub spiffe_id: Option<String>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub bundle: Option<PathBuf>,
}

/// An error with its whole `source()` chain, so that "transport error" comes with its
/// cause: each cause not already said is appended after `: `. Used wherever a client's
/// error is reported as one line (the control plane's etcd client, the sidecar's control
/// and Workload API clients).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let s = inner.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = inner.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_appends_causes_not_already_said() {
        #[derive(Debug, Error)]
        #[error("transport error")]
        struct Outer(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(error_chain(&Outer(io)), "transport error: refused");
        #[derive(Debug, Error)]
        #[error("connect: {0}")]
        struct Said(#[source] std::io::Error);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(error_chain(&Said(io)), "connect: refused");
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        name: String,
        #[serde(default)]
        inner: Inner,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: Option<u32>,
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let e = parse_toml::<Doc>("f.toml", "name = \"a\"\n[inner]\nn = \"x\"\n").expect_err("bad");
        assert_eq!(e.key, "inner.n");
        assert!(e.problem.ends_with("(line 3)"), "{e}");
        let e =
            parse_toml::<Doc>("f.toml", "name = \"a\"\n\n[inner]\nbogus = 1\n").expect_err("bad");
        assert_eq!(e.key, "inner.bogus", "{e}");
        assert!(e.problem.contains("(line 4)"), "{e}");
        let e = parse_toml::<Doc>("f.toml", "name = ").expect_err("bad");
        assert_eq!(e.key, "(syntax)");
        let e = parse_toml::<Doc>("f.toml", "\"\"=\"\"\"\"\"\"").expect_err("bad");
        assert_eq!(e.key, "(top level)", "{e}");
    }

    #[test]
    fn durations_have_a_floor() {
        let at = Errors { file: "f" };
        let one = Duration::from_secs(1);
        assert_eq!(at.duration("k", None, one, one), Ok(one));
        assert_eq!(
            at.duration("k", Some("2s"), one, one),
            Ok(Duration::from_secs(2))
        );
        for bad in ["0s", "500ms", "soon"] {
            let e = at.duration("k", Some(bad), one, one).expect_err(bad);
            assert_eq!(e.key, "k");
        }
    }
}
