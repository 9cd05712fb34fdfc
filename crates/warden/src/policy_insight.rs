//! `warden policy suggest` and `warden policy anomalies`: what the control plane learned
//! from the sidecars' edge reports.

use std::time::Duration;

use anyhow::{anyhow, bail};
use tonic::transport::Channel;
use warden_policy::wire as convert;
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;

use crate::policy::{explain, when};

/// `--since DURATION` in milliseconds (0: no limit).
pub(crate) fn since_ms(text: Option<&str>) -> anyhow::Result<u64> {
    let Some(text) = text else {
        return Ok(0);
    };
    let d = humantime::parse_duration(text)
        .map_err(|e| anyhow!("--since {text:?}: {e} (write e.g. 30m, 1h, 2d)"))?;
    if d < Duration::from_millis(1) {
        bail!("--since {text:?}: must be at least 1ms");
    }
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Prints the suggested policy file on stdout.
pub(crate) async fn suggest(
    api: &mut PolicyServiceClient<Channel>,
    url: &str,
    workload: Option<String>,
    since_ms: u64,
) -> anyhow::Result<()> {
    let observed = api
        .observed(pb::ObservedRequest {
            spiffe_id: workload.clone().unwrap_or_default(),
            since_ms,
        })
        .await
        .map_err(|s| explain(s, url))?
        .into_inner();
    let current = api
        .list_policies(pb::ListPoliciesRequest {})
        .await
        .map_err(|s| explain(s, url))?
        .into_inner()
        .policies
        .iter()
        .filter_map(|p| convert::from_proto(p).ok())
        .collect::<Vec<_>>();
    let mut suggestion = warden_policy::suggest::suggest(&observed.edges, &current);
    if observed.dropped > 0 {
        suggestion.notes.push(format!(
            "the control plane dropped {} decision(s) past its [edges] max_edges",
            observed.dropped
        ));
    }
    suggestion.notes.push(format!(
        "observed over {} (edges are kept in the control plane's memory since its start)",
        humantime::format_duration(Duration::from_secs(observed.observing_ms / 1000))
    ));
    print!("{}", suggestion.to_toml());
    Ok(())
}

/// Prints the anomalies and the quarantine list.
pub(crate) async fn anomalies(
    api: &mut PolicyServiceClient<Channel>,
    url: &str,
    since_ms: u64,
) -> anyhow::Result<()> {
    let resp = api
        .anomalies(pb::AnomaliesRequest { since_ms })
        .await
        .map_err(|s| explain(s, url))?
        .into_inner();
    println!(
        "{:<20}  {:<10}  {:<10}  {:<50}  {:<50}  DETAIL",
        "TIME", "KIND", "RESPONSE", "WORKLOAD", "PEER"
    );
    for a in &resp.anomalies {
        println!(
            "{:<20}  {:<10}  {:<10}  {:<50}  {:<50}  {}",
            when(a.at_unix_ms),
            a.kind,
            a.response,
            a.workload,
            a.peer_id,
            a.detail
        );
    }
    println!();
    println!("{} identit(ies) in quarantine", resp.quarantined.len());
    for q in &resp.quarantined {
        println!(
            "{:<50}  since {}  version {}  by {}: {}",
            q.spiffe_id,
            when(q.at_unix_ms),
            q.version,
            q.by,
            q.reason
        );
    }
    Ok(())
}
