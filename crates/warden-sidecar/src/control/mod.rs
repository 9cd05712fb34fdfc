//! The sidecar's link to the control plane: watch our own workload's policy, apply each
//! snapshot atomically (re-checking open connections), remember it in the last-known-good
//! cache, acknowledge the applied version, and reconnect with backoff and jitter. With
//! several control-plane replicas, a failed watch moves to the next replica at once and
//! backs off only when all of them have failed in a row.
//!
//! While the control plane is unreachable the last applied policy stays in force; nothing
//! here ever widens access on an error.

pub mod client;
pub mod report;
pub(crate) mod urls;

use warden_policy::wire as convert;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use warden_identity::SpiffeId;
use warden_policy::{PolicySnapshot, PolicySource, WorkloadPolicy};
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;
use warden_proto::control::v1::{self as pb, WatchRequest, watch_request};

use crate::shared::Shared;
use crate::telemetry::PolicyOutcome;

/// Where and whom to watch.
#[derive(Debug, Clone)]
pub struct WatchTarget {
    /// The control plane's replicas, tried in turn (at least one).
    pub urls: Vec<String>,
    pub control_plane_id: SpiffeId,
    pub cache: Option<PathBuf>,
    /// Edge reports ride on the watch stream while it is up.
    pub reporting: Option<Arc<report::Reporting>>,
}

/// The last-known-good cache file: the last snapshot the control plane sent.
#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    version: u64,
    policy: Option<WorkloadPolicy>,
    /// The quarantine list that came with it: a restart while the control plane is away
    /// must not let a quarantined identity back in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    quarantined: Vec<String>,
}

/// What the last-known-good cache holds for one workload.
#[derive(Debug)]
pub enum CacheLoad {
    /// No cache file yet.
    Missing,
    /// A cache written for this workload.
    Usable(Box<PolicySnapshot>),
    /// A cache written for another workload (a reused cache path): never enforced, since
    /// its allowlist is someone else's.
    Foreign { written_for: SpiffeId },
    /// Unreadable or not a cache file.
    Damaged(String),
}

/// Reads the cache written for `me`. Only a cache whose policy names `me` (or that holds
/// "no policy", which denies everything) is usable; a damaged or foreign cache is reported,
/// never trusted.
pub fn load_cache(path: &Path, me: &SpiffeId) -> CacheLoad {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CacheLoad::Missing,
        Err(e) => return CacheLoad::Damaged(format!("unreadable: {e}")),
    };
    let cache: CacheFile = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        Err(e) => return CacheLoad::Damaged(format!("not a policy cache: {e}")),
    };
    if let Some(p) = &cache.policy
        && &p.spiffe_id != me
    {
        return CacheLoad::Foreign {
            written_for: p.spiffe_id.clone(),
        };
    }
    CacheLoad::Usable(Box::new(
        PolicySnapshot::compile(cache.policy.as_ref(), PolicySource::Cache)
            .with_quarantine(cache.quarantined.iter().map(String::as_str))
            .with_version(cache.version),
    ))
}

/// Puts the cache written for `me` in force, unless the control plane has already spoken.
/// Called when the sidecar learns its own SPIFFE ID (its first SVID), which is the first
/// moment a cache can be checked against it: before that nothing from a cache is enforced.
pub(crate) fn enforce_cache(shared: &Shared, path: &Path, me: &SpiffeId) {
    if shared.policy.load().source() == PolicySource::ControlPlane {
        return;
    }
    match load_cache(path, me) {
        CacheLoad::Missing => {}
        CacheLoad::Usable(cached) => {
            let version = cached.version();
            if shared.apply_cached_policy(*cached) {
                tracing::info!(path = %path.display(), version, "enforcing the cached policy until the control plane answers");
            }
        }
        CacheLoad::Foreign { written_for } => {
            let why = format!(
                "policy cache {} was written for {written_for}, not for this sidecar ({me}); ignored",
                path.display()
            );
            tracing::warn!("{why}");
            shared.telemetry.policy_rejected(&why);
        }
        CacheLoad::Damaged(e) => {
            let why = format!("policy cache {} ignored: {e}", path.display());
            tracing::warn!("{why}");
            shared.telemetry.policy_rejected(&why);
        }
    }
}

fn write_cache(
    path: &Path,
    version: u64,
    policy: Option<WorkloadPolicy>,
    quarantined: Vec<String>,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = serde_json::to_vec_pretty(&CacheFile {
        version,
        policy,
        quarantined,
    })
    .map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Turns a wire snapshot into what the data plane enforces. A policy that fails to parse,
/// or that names another workload, becomes "deny everything" (default deny).
fn compile(
    snapshot: &pb::PolicySnapshot,
    me: Option<&SpiffeId>,
) -> (PolicySnapshot, Option<WorkloadPolicy>, PolicyOutcome) {
    let deny =
        || PolicySnapshot::compile(None, PolicySource::ControlPlane).with_version(snapshot.version);
    if !snapshot.present {
        return (deny(), None, PolicyOutcome::Applied);
    }
    let Some(wire) = &snapshot.policy else {
        return (deny(), None, PolicyOutcome::Invalid);
    };
    match convert::from_proto(wire) {
        Ok(policy) if me.is_none_or(|me| &policy.spiffe_id == me) => {
            let compiled = PolicySnapshot::compile(Some(&policy), PolicySource::ControlPlane)
                .with_quarantine(snapshot.quarantined.iter().map(String::as_str))
                .with_version(snapshot.version);
            (compiled, Some(policy), PolicyOutcome::Applied)
        }
        Ok(policy) => {
            tracing::error!(policy_for = %policy.spiffe_id, "control plane sent another workload's policy; denying everything");
            (deny(), None, PolicyOutcome::Invalid)
        }
        Err(e) => {
            tracing::error!(error = %e, "control plane sent a policy that does not parse; denying everything");
            (deny(), None, PolicyOutcome::Invalid)
        }
    }
}

/// How long a snapshot older than the version already applied is held back, waiting for a
/// newer one on the same stream. A replica that has just been reached may lag the one that
/// served the newer version by a few milliseconds; only a store that really went back (a
/// restore) leaves the older version in place after this.
const HOLD_OLDER: Duration = Duration::from_secs(3);

/// Runs forever: connect, watch, apply, ack; on any failure move to the next replica, and
/// back off once every replica has failed in a row.
pub(crate) async fn watch_loop(shared: Arc<Shared>, target: WatchTarget) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut rotation = urls::Rotation::new(target.urls.len(), backoff.seed);
    let mut generation = shared.identity.subscribe();
    let mut applied: Option<u64> = None;
    loop {
        // Without an SVID we cannot authenticate; wait for one rather than spin.
        while shared.identity.usable().is_none() {
            let _ = tokio::time::timeout(Duration::from_secs(1), generation.changed()).await;
        }
        let url = target.urls[rotation.current()].as_str();
        let mut served = false;
        match watch_once(&shared, &target, url, &mut served, &mut applied).await {
            Ok(()) => tracing::warn!(url, "control plane closed the policy stream"),
            Err(e) => {
                tracing::warn!(url, error = %e, "policy watch failed; keeping the last policy")
            }
        }
        shared.telemetry.control_plane_connected(false);
        if served {
            rotation.succeeded();
            backoff.reset();
        }
        if rotation.failed() {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

async fn watch_once(
    shared: &Arc<Shared>,
    target: &WatchTarget,
    url: &str,
    served: &mut bool,
    applied: &mut Option<u64>,
) -> Result<(), String> {
    let channel = client::connect(
        url,
        &shared.identity,
        &target.control_plane_id,
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut api = PolicyServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(16);
    let hello = WatchRequest {
        msg: Some(watch_request::Msg::Hello(pb::Hello {
            sidecar_version: env!("CARGO_PKG_VERSION").to_owned(),
        })),
    };
    tx.send(hello)
        .await
        .map_err(|_| "request stream closed".to_owned())?;
    let mut stream = api
        .watch_policy(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    shared.telemetry.control_plane_connected(true);
    let _reports = target.reporting.as_ref().map(|r| r.connect(tx.clone()));
    tracing::info!(url, "watching policy");
    let mut held: Option<pb::PolicySnapshot> = None;
    loop {
        let snapshot = match held.take() {
            Some(s) => s,
            None => match stream.message().await {
                Ok(Some(s)) => s,
                Ok(None) => return Ok(()),
                Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
            },
        };
        *served = true;
        let version = snapshot.version;
        if let Some(current) = *applied
            && version < current
        {
            match tokio::time::timeout(HOLD_OLDER, stream.message()).await {
                Ok(Ok(Some(newer))) => {
                    held = Some(newer);
                    continue;
                }
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(s)) => return Err(format!("{}: {}", s.code(), s.message())),
                Err(_) => {
                    tracing::warn!(
                        url,
                        version,
                        applied = current,
                        "the control plane's version is older than the one applied and stayed so; applying it (was the store restored?)"
                    );
                }
            }
        }
        // A replica reached after another sends the version already in force: nothing to
        // apply again, only to acknowledge.
        if *applied != Some(version) {
            let me = shared.identity.load().map(|i| i.spiffe_id().clone());
            let (compiled, policy, result) = compile(&snapshot, me.as_ref());
            shared.apply_policy(compiled, result);
            *applied = Some(version);
            if let Some(path) = target.cache.clone() {
                let quarantined = snapshot.quarantined.clone();
                let written = tokio::task::spawn_blocking(move || {
                    write_cache(&path, version, policy, quarantined)
                })
                .await;
                if let Ok(Err(e)) | Err(e) = written.map_err(std::io::Error::other) {
                    tracing::warn!(error = %e, "cannot write the policy cache; enforcement is unaffected");
                }
            }
        }
        let ack = WatchRequest {
            msg: Some(watch_request::Msg::Ack(pb::Ack {
                applied_version: version,
            })),
        };
        if tx.send(ack).await.is_err() {
            return Err("request stream closed".into());
        }
    }
}

/// Exponential backoff with full jitter, so a fleet of sidecars does not reconnect in step
/// after a control-plane restart.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15)
            | 1;
        Self {
            min,
            max,
            current: min,
            seed,
        }
    }

    fn reset(&mut self) {
        self.current = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        // xorshift: jitter needs no cryptographic quality.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let cap = self.current.as_millis() as u64;
        let delay = Duration::from_millis(cap / 2 + self.seed % (cap / 2 + 1));
        self.current = (self.current * 2).min(self.max);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(10)));
        assert!(delays[9] >= Duration::from_secs(5));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(200));
    }

    /// Security invariant 2 (`docs/security.md`): a pushed policy that does not parse, or
    /// that names another workload, puts deny-all in force (counted as `invalid`).
    #[test]
    fn an_invalid_or_foreign_snapshot_becomes_deny_all() {
        let me = SpiffeId::parse("spiffe://example.org/me").expect("id");
        let peer = SpiffeId::parse("spiffe://example.org/a").expect("id");
        let text = "[[workload]]\nspiffe_id = \"spiffe://example.org/other\"\ninbound.http = [\"spiffe://example.org/a\"]\n";
        let foreign = warden_policy::parse_policy_file(text)
            .expect("policy")
            .remove(0);
        let mut snapshot = pb::PolicySnapshot {
            present: true,
            policy: Some(convert::to_proto(&foreign)),
            version: 7,
            quarantined: Vec::new(),
        };
        let allowed = |s: &PolicySnapshot| {
            s.decide(warden_policy::Direction::Inbound, "http", &peer)
                .allowed
        };
        let (compiled, kept, outcome) = compile(&snapshot, Some(&me));
        assert_eq!(outcome, PolicyOutcome::Invalid);
        assert!(kept.is_none());
        assert!(
            !allowed(&compiled),
            "another workload's allowlist was enforced"
        );
        assert_eq!(compiled.version(), 7);
        if let Some(p) = snapshot.policy.as_mut() {
            p.spiffe_id = "spiffe://example.org/me".into();
            p.inbound.insert(
                "http".into(),
                pb::PatternList {
                    patterns: vec!["spiffe://example.org/a*".into()],
                },
            );
        }
        let (compiled, kept, outcome) = compile(&snapshot, Some(&me));
        assert_eq!(outcome, PolicyOutcome::Invalid);
        assert!(kept.is_none());
        assert!(
            !allowed(&compiled),
            "a policy that does not parse allowed someone"
        );
    }

    #[test]
    fn cache_round_trips_and_foreign_or_damaged_caches_are_ignored() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("policy.json");
        let text = "[[workload]]\nspiffe_id = \"spiffe://example.org/me\"\ninbound.http = [\"spiffe://example.org/a\"]\n";
        let mut policy = warden_policy::parse_policy_file(text)
            .expect("policy")
            .remove(0);
        policy.version = 9;
        write_cache(&path, 9, Some(policy.clone()), Vec::new()).expect("write");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let me = SpiffeId::parse("spiffe://example.org/me").expect("id");
        let CacheLoad::Usable(snap) = load_cache(&path, &me) else {
            panic!("own cache not usable");
        };
        assert_eq!(snap.version(), 9);
        assert_eq!(snap.source(), PolicySource::Cache);
        let peer = SpiffeId::parse("spiffe://example.org/a").expect("id");
        assert!(
            snap.decide(warden_policy::Direction::Inbound, "http", &peer)
                .allowed
        );
        let other = SpiffeId::parse("spiffe://example.org/other").expect("id");
        assert!(
            matches!(load_cache(&path, &other), CacheLoad::Foreign { written_for } if written_for == me)
        );
        // The quarantine list is cached with the policy and enforced from the cache.
        write_cache(&path, 9, Some(policy.clone()), vec![peer.to_string()]).expect("write");
        let CacheLoad::Usable(snap) = load_cache(&path, &me) else {
            panic!("own cache not usable");
        };
        let d = snap.decide(warden_policy::Direction::Inbound, "http", &peer);
        assert_eq!(d.reason, warden_policy::Reason::Quarantined);
        std::fs::write(&path, b"{not json").expect("w");
        assert!(matches!(load_cache(&path, &me), CacheLoad::Damaged(_)));
        std::fs::remove_file(&path).expect("rm");
        assert!(matches!(load_cache(&path, &me), CacheLoad::Missing));
    }
}
