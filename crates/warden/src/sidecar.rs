//! `warden sidecar --config FILE`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use warden_sidecar::{Sidecar, SidecarConfig, source_for};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The sidecar's TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// On SIGTERM, how long open connections may take to finish before they are closed.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    drain: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    warden_sidecar::config::parse_duration(text)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    // The message already names file, key and problem; no extra context needed.
    let config = SidecarConfig::from_file(&args.config).map_err(anyhow::Error::new)?;
    let sidecar = Sidecar::start(&config, source_for(&config.identity))
        .await
        .context("starting the sidecar")?;
    for l in &config.inbound {
        tracing::info!(listener = %l.name, listen = ?sidecar.inbound_addr(&l.name), port = ?l.port, forward = %l.forward, "inbound listening");
    }
    for l in &config.outbound {
        tracing::info!(listener = %l.name, listen = ?sidecar.outbound_addr(&l.name), connect = ?l.connect, destinations = ?l.destinations, server_id = %l.server_id, "outbound listening");
    }
    if let Some(addr) = sidecar.capture_inbound_addr() {
        tracing::info!(listen = %addr, "capturing inbound (redirected by `warden init`)");
    }
    if let Some(addr) = sidecar.capture_outbound_addr() {
        tracing::info!(listen = %addr, egress = config.egress.len(), "capturing outbound (redirected by `warden init`)");
    }
    crate::shutdown_signal().await;
    tracing::info!(grace = ?args.drain, "shutting down: no new connections, draining open ones");
    sidecar.shutdown(args.drain).await;
    Ok(())
}
