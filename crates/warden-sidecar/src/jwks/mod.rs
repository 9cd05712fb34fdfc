//! The keys of the `[[jwt]]` issuers, kept current in the background, and [`Jwt`], the
//! registry the HTTP listeners ask to validate a token.
//!
//! Each issuer's keys sit behind an `ArcSwap`: a validation reads them without a lock, and
//! a reload swaps a complete new set in. Sources (`file`, `url`, `spiffe`):
//!
//! - `jwks_file`: read at start (unreadable or invalid = start-up error naming the file),
//!   then polled every second and compared by content (Kubernetes swaps mounted files by
//!   symlink rename, which inotify misses).
//! - `jwks_url`: fetched over HTTPS (TLS 1.3 or 1.2, trusting only `jwks_ca`), every
//!   `jwks_refresh`, sooner after a failure, and when a token names an unknown `kid`, at
//!   most once per 30 s ([`MIN_REFETCH`]) so random `kid`s cannot make Warden hammer the
//!   identity provider.
//! - `spiffe = true`: the Workload API's `FetchJWTBundles` stream (same endpoint as the
//!   SVIDs); each message is the complete set of trust domains.
//!
//! Whatever the source, a set that does not parse or holds no usable key is refused and the
//! last good one stays in force; every load is counted in
//! `warden_jwks_reloads_total{issuer,result}` and logged (key ids and skipped keys, never
//! key material or tokens).
//!
//! It must never validate with keys other than the issuer's own, never replace a good set
//! with a bad one, and never block a request on I/O except in [`Jwt::validate_fresh`], which
//! waits for a refetch only when one may start at once, and only for a bounded time.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use warden_identity::IdentityConfig;
use warden_jwt::{Claims, Jwks, JwtBundles, JwtError, Validator};

use crate::config::{JwksSource, JwtConfig};
use crate::metrics::JwksReload;
use crate::telemetry::Telemetry;

mod file;
mod spiffe;
mod url;

pub(crate) use url::check_https_url;

/// The shortest interval between two fetches caused by unknown `kid`s.
pub const MIN_REFETCH: Duration = Duration::from_secs(30);
/// How long [`Jwt::validate_fresh`] waits for a refetch.
pub const FRESH_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum JwksStartError {
    #[error("[[jwt]] {issuer:?}: jwks_file {path}: {reason}")]
    File {
        issuer: String,
        path: PathBuf,
        reason: String,
    },
    #[error("[[jwt]] {issuer:?}: jwks_ca {path}: {reason}")]
    Ca {
        issuer: String,
        path: PathBuf,
        reason: String,
    },
    #[error("[[jwt]] {issuer:?}: {reason}")]
    Source { issuer: String, reason: String },
}

/// How an issuer's key loads went: counts since start, and the last failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Sets loaded and put in force (the first one included).
    pub ok: u64,
    /// Loads that failed (invalid or unavailable); the set in force stayed.
    pub failed: u64,
    pub last_error: Option<String>,
}

/// One issuer's key set, swapped whole on reload.
pub type JwksSet = ArcSwap<Jwks>;

enum Keys {
    Set(Arc<JwksSet>),
    /// JWT-SVIDs: one set per trust domain.
    Bundles(Arc<ArcSwap<JwtBundles>>),
}

struct Entry {
    validator: Validator,
    keys: Keys,
    status: watch::Receiver<ReloadStatus>,
    /// URL issuers: asks the fetch task for a refetch.
    refetch: Option<Arc<url::Refetch>>,
}

/// The `[[jwt]]` issuers of a sidecar, by name. Dropping it stops the reload tasks.
pub struct Jwt {
    issuers: HashMap<String, Entry>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for Jwt {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Reports the loads of one issuer: metric, log, status.
#[derive(Clone)]
pub(crate) struct Reporter {
    issuer: Arc<str>,
    status: watch::Sender<ReloadStatus>,
    telemetry: Telemetry,
}

impl Reporter {
    fn loaded(&self, source: &str, kids: &[String], skipped: &[String]) {
        self.telemetry
            .metrics()
            .jwks_reload(&self.issuer, JwksReload::Ok);
        tracing::info!(issuer = %self.issuer, source, kids = ?kids, "JWT keys loaded");
        if !skipped.is_empty() {
            tracing::warn!(issuer = %self.issuer, source, skipped = ?skipped, "JWT keys skipped as unusable");
        }
        self.status.send_modify(|s| s.ok += 1);
    }

    fn invalid(&self, source: &str, reason: &str) {
        self.failed(JwksReload::Invalid, source, reason);
    }

    fn unavailable(&self, source: &str, reason: &str) {
        self.failed(JwksReload::Unavailable, source, reason);
    }

    fn failed(&self, result: JwksReload, source: &str, reason: &str) {
        self.telemetry.metrics().jwks_reload(&self.issuer, result);
        tracing::warn!(issuer = %self.issuer, source, result = result.as_str(), reason, "JWT keys not loaded; the last good set stays in force");
        self.status.send_modify(|s| {
            s.failed += 1;
            s.last_error = Some(reason.to_owned());
        });
    }
}

fn kids(set: &Jwks) -> Vec<String> {
    set.kids()
        .map(|k| k.unwrap_or("(no kid)").to_owned())
        .collect()
}

impl Jwt {
    /// No issuers: every validation is [`JwtError::UnknownIssuer`].
    pub fn empty() -> Self {
        Self {
            issuers: HashMap::new(),
            tasks: Vec::new(),
        }
    }

    /// Loads every issuer's keys and starts keeping them current. A `jwks_file` that
    /// cannot be read or holds no usable key, or an unreadable `jwks_ca`, is an error here;
    /// a URL or Workload API that does not answer yet is not (its tokens get
    /// [`JwtError::NoKeys`] until it does).
    pub async fn start(
        configs: &[JwtConfig],
        identity: &IdentityConfig,
        telemetry: &Telemetry,
    ) -> Result<Self, JwksStartError> {
        let mut jwt = Self::empty();
        let mut spiffe_reporters = Vec::new();
        let bundles = Arc::new(ArcSwap::from_pointee(JwtBundles::new()));
        for cfg in configs {
            let (tx, rx) = watch::channel(ReloadStatus::default());
            let report = Reporter {
                issuer: cfg.name.as_str().into(),
                status: tx,
                telemetry: telemetry.clone(),
            };
            let mut refetch = None;
            let keys = match &cfg.keys {
                JwksSource::File(path) => {
                    let (fingerprint, set) =
                        file::load(path.clone())
                            .await
                            .map_err(|reason| JwksStartError::File {
                                issuer: cfg.name.clone(),
                                path: path.clone(),
                                reason,
                            })?;
                    report.loaded(&path.display().to_string(), &kids(&set), set.skipped());
                    let set = Arc::new(ArcSwap::from_pointee(set));
                    jwt.tasks.push(tokio::spawn(file::poll(
                        path.clone(),
                        set.clone(),
                        fingerprint,
                        report,
                    )));
                    Keys::Set(set)
                }
                JwksSource::Url { url, ca, refresh } => {
                    let source = url::UrlSource::new(url, ca, *refresh).map_err(|e| match e {
                        url::SetupError::Ca(reason) => JwksStartError::Ca {
                            issuer: cfg.name.clone(),
                            path: ca.clone(),
                            reason,
                        },
                        url::SetupError::Url(reason) => JwksStartError::Source {
                            issuer: cfg.name.clone(),
                            reason: format!("jwks_url {url:?}: {reason}"),
                        },
                    })?;
                    let set = Arc::new(ArcSwap::from_pointee(Jwks::empty()));
                    let r = Arc::new(url::Refetch::default());
                    refetch = Some(r.clone());
                    jwt.tasks
                        .push(tokio::spawn(url::run(source, set.clone(), r, report)));
                    Keys::Set(set)
                }
                JwksSource::Spiffe => {
                    spiffe_reporters.push(report);
                    Keys::Bundles(bundles.clone())
                }
            };
            jwt.issuers.insert(
                cfg.name.clone(),
                Entry {
                    validator: Validator::new(cfg.validator.clone()),
                    keys,
                    status: rx,
                    refetch,
                },
            );
        }
        if !spiffe_reporters.is_empty() {
            let endpoint = spiffe::endpoint(identity).map_err(|reason| JwksStartError::Source {
                issuer: spiffe_reporters[0].issuer.to_string(),
                reason,
            })?;
            jwt.tasks.push(tokio::spawn(spiffe::run(
                endpoint,
                bundles,
                spiffe_reporters,
            )));
        }
        Ok(jwt)
    }

    /// Validates `token` as a token of issuer `issuer` (a `[[jwt]]` name), now. On an
    /// unknown `kid` of a URL issuer, a refetch is requested (rate-limited) and this token
    /// is refused; [`Jwt::validate_fresh`] waits for that refetch instead.
    pub fn validate(&self, issuer: &str, token: &str) -> Result<Claims, JwtError> {
        let entry = self.entry(issuer)?;
        let result = Self::check(entry, token);
        if matches!(result, Err(JwtError::UnknownKid))
            && let Some(refetch) = &entry.refetch
        {
            refetch.request();
        }
        result
    }

    /// [`Jwt::validate`], but a token with an unknown `kid` of a URL issuer waits (at most
    /// [`FRESH_WAIT`]) for a refetch when the rate limit allows one now, and is checked
    /// again against the new set. So the first request after the identity provider rotates
    /// its key is not refused.
    pub async fn validate_fresh(&self, issuer: &str, token: &str) -> Result<Claims, JwtError> {
        let entry = self.entry(issuer)?;
        let result = Self::check(entry, token);
        let (Err(JwtError::UnknownKid), Some(refetch)) = (&result, &entry.refetch) else {
            return result;
        };
        let mut done = refetch.done.subscribe();
        let seen = *done.borrow_and_update();
        if !refetch.request() {
            return result;
        }
        let _ = tokio::time::timeout(FRESH_WAIT, done.wait_for(|n| *n > seen)).await;
        Self::check(entry, token)
    }

    fn entry(&self, issuer: &str) -> Result<&Entry, JwtError> {
        self.issuers
            .get(issuer)
            .ok_or_else(|| JwtError::UnknownIssuer(issuer.to_owned()))
    }

    fn check(entry: &Entry, token: &str) -> Result<Claims, JwtError> {
        let now = SystemTime::now();
        match &entry.keys {
            Keys::Set(set) => entry.validator.validate(token, &set.load(), now),
            Keys::Bundles(b) => entry.validator.validate_jwt_svid(token, &b.load(), now),
        }
    }

    /// Whether an issuer of this name is configured.
    pub fn contains(&self, issuer: &str) -> bool {
        self.issuers.contains_key(issuer)
    }

    /// The configured issuer names.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.issuers.keys().map(String::as_str)
    }

    /// Follows the loads of `issuer` (tests and readiness wait on it).
    pub fn reloads(&self, issuer: &str) -> Option<watch::Receiver<ReloadStatus>> {
        self.issuers.get(issuer).map(|e| e.status.clone())
    }

    /// The `kid`s in force for `issuer` (for a JWT-SVID issuer: `trust domain/kid`).
    pub fn kids(&self, issuer: &str) -> Vec<String> {
        match self.issuers.get(issuer).map(|e| &e.keys) {
            None => Vec::new(),
            Some(Keys::Set(set)) => kids(&set.load()),
            Some(Keys::Bundles(b)) => {
                let b = b.load();
                let mut out: Vec<String> = b
                    .trust_domains()
                    .flat_map(|td| {
                        let set = b.get(td.as_str());
                        set.into_iter()
                            .flat_map(kids)
                            .map(move |k| format!("{td}/{k}"))
                    })
                    .collect();
                out.sort();
                out
            }
        }
    }
}
