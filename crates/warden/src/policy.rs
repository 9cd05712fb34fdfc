//! `warden policy ...`: the operator's view of the control plane's policy API.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use tonic::Code;
use warden_identity::{
    FilesSource, IdentityStore, SourceEvent, SpiffeId, SvidSource, WorkloadApiSource, WorkloadId,
};
use warden_policy::wire as convert;
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;
use warden_sidecar::control::client;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The control plane, as https://host:port.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        default_value = "https://127.0.0.1:7443"
    )]
    control_plane: String,
    /// Directory with the caller's SVID: tls.crt, tls.key, ca.crt (e.g. the control plane's
    /// data_dir/admin).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        conflicts_with = "identity_socket"
    )]
    identity_dir: Option<PathBuf>,
    /// Workload API endpoint to obtain the caller's SVID from (unix:///path); defaults to
    /// $SPIFFE_ENDPOINT_SOCKET when no --identity-dir is given.
    #[arg(long, global = true, value_name = "ENDPOINT")]
    identity_socket: Option<String>,
    /// The SPIFFE ID the control plane must present (default:
    /// spiffe://<your trust domain>/warden/control-plane).
    #[arg(long, global = true, value_name = "SPIFFE_ID")]
    control_plane_id: Option<String>,
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum PolicyCommand {
    /// Create or replace the policies of every workload in a policy file (TOML or JSON).
    Put {
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Compare-and-set: write only if the workload's current version is this (0 = new).
        #[arg(long, value_name = "VERSION")]
        expected_version: Option<u64>,
    },
    /// Print one workload's policy in the policy-file format.
    Get { spiffe_id: String },
    /// List every workload that has a policy.
    List,
    /// Delete one workload's policy (its sidecars then deny everything).
    Delete {
        spiffe_id: String,
        #[arg(long, value_name = "VERSION")]
        expected_version: Option<u64>,
    },
    /// Every change to one workload's policy: version, time, admin, action.
    History { spiffe_id: String },
    /// Connected sidecars and the policy version each has applied.
    Status,
    /// Print a policy file (TOML) of the edges the sidecars reported: what was allowed, or
    /// would have been denied in audit mode, becomes an allow. Review it, then `put` it.
    Suggest {
        /// Only this workload's policy (default: every workload that reported).
        #[arg(long, value_name = "SPIFFE_ID")]
        workload: Option<String>,
        /// Only edges seen within this long (e.g. 1h, 30m; default: all kept).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
    },
    /// What the anomaly rules flagged, and who is in quarantine.
    Anomalies {
        /// Only anomalies of the last DURATION (default: all kept).
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
    },
    /// Deny an identity everywhere (every sidecar refuses it inbound, its own sidecar its
    /// outbound), revoking its open connections, until `release`.
    Quarantine {
        spiffe_id: String,
        /// Why (kept in the history and the audit log).
        #[arg(long, value_name = "TEXT")]
        reason: String,
    },
    /// Lift a quarantine.
    Release {
        spiffe_id: String,
        #[arg(long, value_name = "TEXT", default_value = "released by an admin")]
        reason: String,
    },
}

async fn load_identity(args: &Args) -> anyhow::Result<Arc<IdentityStore>> {
    let store = IdentityStore::new();
    if let Some(dir) = &args.identity_dir {
        let files = FilesSource::new(dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
        let identity = files
            .load()
            .map_err(|e| anyhow!("cannot use the identity in {}: {e}", dir.display()))?;
        store.set(Arc::new(identity));
        return Ok(store);
    }
    let endpoint = args.identity_socket.clone();
    if endpoint.is_none() && std::env::var_os("SPIFFE_ENDPOINT_SOCKET").is_none() {
        bail!(
            "no identity: pass --identity-dir DIR (tls.crt, tls.key, ca.crt) or --identity-socket unix:///path"
        );
    }
    let source = Box::new(WorkloadApiSource {
        endpoint,
        spiffe_id: None,
    });
    let mut handle = source.start();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, handle.events.recv()).await {
            Ok(Some(SourceEvent::Updated(identity))) => {
                store.set(identity);
                return Ok(store);
            }
            Ok(Some(SourceEvent::Rejected { reason } | SourceEvent::Unavailable { reason })) => {
                tracing::debug!(%reason, "waiting for an SVID");
            }
            Ok(None) | Err(_) => bail!("no SVID from the Workload API within 10s"),
        }
    }
}

/// Words a person understands for each failure, and a non-zero exit.
pub(crate) fn explain(status: tonic::Status, url: &str) -> anyhow::Error {
    let msg = status.message();
    match status.code() {
        Code::Unavailable => anyhow!("control plane unreachable at {url}: {msg}"),
        Code::PermissionDenied => anyhow!("permission denied: {msg}"),
        Code::FailedPrecondition => anyhow!("{msg}"),
        Code::NotFound => anyhow!("not found: {msg}"),
        Code::InvalidArgument => anyhow!("invalid request: {msg}"),
        Code::Unauthenticated => anyhow!("not authenticated: {msg}"),
        other => anyhow!("control plane error ({other:?}): {msg}"),
    }
}

pub(crate) fn when(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn read_policy_file(path: &Path) -> anyhow::Result<Vec<warden_policy::WorkloadPolicy>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    warden_policy::parse_policy_file(&text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // Validate input before touching the network: a typo should not need a control plane.
    let since_ms = match &args.command {
        PolicyCommand::Suggest { since, .. } | PolicyCommand::Anomalies { since } => {
            crate::policy_insight::since_ms(since.as_deref())?
        }
        _ => 0,
    };
    let file_policies = match &args.command {
        PolicyCommand::Put {
            file,
            expected_version,
        } => {
            let policies = read_policy_file(file)?;
            if expected_version.is_some() && policies.len() != 1 {
                bail!("--expected-version needs a policy file with exactly one workload");
            }
            policies
        }
        _ => Vec::new(),
    };
    let identity = load_identity(&args).await?;
    let me = identity
        .load()
        .map(|i| i.spiffe_id().clone())
        .context("no identity loaded")?;
    let cp_id = control_plane_id(args.control_plane_id.as_deref(), &me)?;
    let channel = client::connect(
        &args.control_plane,
        &identity,
        &cp_id,
        Duration::from_secs(5),
    )
    .await?;
    let mut api = PolicyServiceClient::new(channel);
    let url = args.control_plane.as_str();
    match args.command {
        PolicyCommand::Put {
            expected_version, ..
        } => {
            for policy in file_policies {
                let req = pb::PutPolicyRequest {
                    policy: Some(convert::to_proto(&policy)),
                    expected_version,
                };
                let stored = api
                    .put_policy(req)
                    .await
                    .map_err(|s| explain(s, url))?
                    .into_inner();
                let version = stored.policy.map(|p| p.version).unwrap_or(0);
                println!("{}: version {version}", policy.spiffe_id);
            }
        }
        PolicyCommand::Get { spiffe_id } => {
            let resp = api
                .get_policy(pb::GetPolicyRequest { spiffe_id })
                .await
                .map_err(|s| explain(s, url))?
                .into_inner();
            let wire = resp
                .policy
                .context("the control plane answered without a policy")?;
            let policy = convert::from_proto(&wire)
                .map_err(|e| anyhow!("the control plane sent an invalid policy: {e}"))?;
            print!("{}", policy.to_toml());
        }
        PolicyCommand::List => {
            let resp = api
                .list_policies(pb::ListPoliciesRequest {})
                .await
                .map_err(|s| explain(s, url))?
                .into_inner();
            println!(
                "{:<56} {:>8}  {:<20}  {:>7} {:>8}  UPDATED BY",
                "SPIFFE ID", "VERSION", "UPDATED", "INBOUND", "OUTBOUND"
            );
            for p in resp.policies {
                let count = |m: &std::collections::HashMap<String, pb::PatternList>| {
                    m.values().map(|l| l.patterns.len()).sum::<usize>()
                };
                println!(
                    "{:<56} {:>8}  {:<20}  {:>7} {:>8}  {}",
                    p.spiffe_id,
                    p.version,
                    when(p.updated_at_unix_ms),
                    count(&p.inbound),
                    count(&p.outbound),
                    p.updated_by
                );
            }
        }
        PolicyCommand::Delete {
            spiffe_id,
            expected_version,
        } => {
            let resp = api
                .delete_policy(pb::DeletePolicyRequest {
                    spiffe_id: spiffe_id.clone(),
                    expected_version,
                })
                .await
                .map_err(|s| explain(s, url))?
                .into_inner();
            println!("{spiffe_id}: deleted at version {}", resp.version);
        }
        PolicyCommand::History { spiffe_id } => {
            let resp = api
                .history(pb::HistoryRequest { spiffe_id })
                .await
                .map_err(|s| explain(s, url))?
                .into_inner();
            println!(
                "{:>8}  {:<20}  {:<10}  {:<50}  RULES",
                "VERSION", "TIME", "ACTION", "ADMIN"
            );
            for e in resp.entries {
                let rules = e
                    .policy
                    .map(|p| {
                        let mut parts: Vec<String> = Vec::new();
                        for (dir, map) in [("inbound", &p.inbound), ("outbound", &p.outbound)] {
                            let mut keys: Vec<_> = map.iter().collect();
                            keys.sort_by(|a, b| a.0.cmp(b.0));
                            for (listener, list) in keys {
                                parts.push(format!(
                                    "{dir}.{listener}=[{}]",
                                    list.patterns.join(", ")
                                ));
                            }
                        }
                        parts.join(" ")
                    })
                    .unwrap_or_default();
                // Quarantine and release carry no policy: their reason is what to show.
                let rules = if e.reason.is_empty() {
                    rules
                } else {
                    format!("reason: {}", e.reason)
                };
                println!(
                    "{:>8}  {:<20}  {:<10}  {:<50}  {rules}",
                    e.version,
                    when(e.at_unix_ms),
                    e.action,
                    e.admin
                );
            }
        }
        PolicyCommand::Suggest { workload, .. } => {
            crate::policy_insight::suggest(&mut api, url, workload, since_ms).await?;
        }
        PolicyCommand::Anomalies { .. } => {
            crate::policy_insight::anomalies(&mut api, url, since_ms).await?;
        }
        PolicyCommand::Quarantine { spiffe_id, reason } => {
            let resp = api
                .quarantine(pb::QuarantineRequest {
                    spiffe_id: spiffe_id.clone(),
                    reason,
                })
                .await
                .map_err(|s| explain(s, url))?
                .into_inner();
            println!("{spiffe_id}: quarantined at version {}", resp.version);
        }
        PolicyCommand::Release { spiffe_id, reason } => {
            let resp = api
                .release(pb::ReleaseRequest {
                    spiffe_id: spiffe_id.clone(),
                    reason,
                })
                .await
                .map_err(|s| explain(s, url))?
                .into_inner();
            println!("{spiffe_id}: released at version {}", resp.version);
        }
        PolicyCommand::Status => {
            let resp = api
                .status(pb::StatusRequest {})
                .await
                .map_err(|s| explain(s, url))?
                .into_inner();
            println!(
                "store version {}; {} sidecar(s) connected",
                resp.store_version,
                resp.sidecars.len()
            );
            println!(
                "{:<56} {:<22} {:>8} {:>8}  {:<20}  SYNCED",
                "SIDECAR", "ADDRESS", "SENT", "APPLIED", "CONNECTED SINCE"
            );
            for s in resp.sidecars {
                let synced = if s.applied_version == s.sent_version {
                    "yes"
                } else {
                    "pending"
                };
                println!(
                    "{:<56} {:<22} {:>8} {:>8}  {:<20}  {synced}",
                    s.spiffe_id,
                    s.peer_addr,
                    s.sent_version,
                    s.applied_version,
                    when(s.connected_since_unix_ms)
                );
            }
        }
    }
    Ok(())
}

/// The SPIFFE ID the control plane must present: `--control-plane-id`, checked as the
/// config key `[policy] control_plane_id` is (a workload ID, with a path), or the default
/// in the caller's trust domain.
fn control_plane_id(flag: Option<&str>, me: &SpiffeId) -> anyhow::Result<SpiffeId> {
    match flag {
        Some(text) => WorkloadId::parse(text)
            .map(WorkloadId::into_spiffe_id)
            .map_err(|e| anyhow!("--control-plane-id {text:?}: {e}")),
        None => Ok(warden_sidecar::default_control_plane_id(&me.trust_domain())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_plane_id_flag_takes_a_workload_id_like_the_config_key() {
        let me = SpiffeId::parse("spiffe://example.org/ns/ops/sa/admin").expect("id");
        let id = control_plane_id(Some("spiffe://example.org/cp"), &me).expect("workload id");
        assert_eq!(id.as_str(), "spiffe://example.org/cp");
        let err = control_plane_id(Some("spiffe://example.org"), &me)
            .expect_err("a trust domain is not a workload")
            .to_string();
        assert!(
            err.starts_with("--control-plane-id \"spiffe://example.org\": "),
            "{err}"
        );
        assert!(err.contains("needs a path"), "{err}");
        assert!(control_plane_id(Some("not an id"), &me).is_err());
        assert_eq!(
            control_plane_id(None, &me).expect("default"),
            warden_sidecar::default_control_plane_id(&me.trust_domain())
        );
    }
}
