//! `warden control-plane --config FILE`.

use std::path::PathBuf;

use anyhow::Context;
use warden_control::ControlPlaneConfig;
use warden_control::server::ControlPlane;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The control plane's TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = ControlPlaneConfig::from_file(&args.config).map_err(anyhow::Error::new)?;
    let cp = ControlPlane::start(&config)
        .await
        .context("starting the control plane")?;
    tracing::info!(addr = %cp.addr(), data_dir = %config.data_dir.display(), "control plane running");
    crate::shutdown_signal().await;
    tracing::info!("shutting down");
    cp.shutdown().await;
    Ok(())
}
