//! The `warden` command line: wires the subcommands (sidecar, and as they land: control
//! plane, policy, top, inject, demo) to the library crates. Owns process concerns only:
//! flags, logging set-up, signals and exit codes. No protocol or policy logic lives here.
#![forbid(unsafe_code)]

mod control_plane;
mod demo;
mod init;
mod inject;
mod policy;
mod policy_insight;
mod sidecar;
mod top;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Workload identity and mutual TLS for every service-to-service hop.
#[derive(Debug, Parser)]
#[command(name = "warden", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the per-pod proxy: mTLS in and out, default-deny peer allowlist.
    Sidecar(sidecar::Args),
    /// Run the control plane: policy API, built-in CA, SPIFFE Workload API server.
    ControlPlane(control_plane::Args),
    /// The whole app -> retriever -> vectordb -> llm chain on this machine, attacks included.
    Demo(demo::Args),
    /// Read and change allowlists on the control plane.
    Policy(policy::Args),
    /// Live table of peer-auth metrics of one or more sidecars (from their admin endpoints).
    Top(top::Args),
    /// Add the Warden sidecar to Kubernetes manifests (writes them to stdout).
    #[command(long_about = inject::LONG_ABOUT)]
    Inject(inject::Args),
    /// Redirect the pod's TCP traffic to the sidecar (iptables; an init container's job).
    #[command(long_about = init::LONG_ABOUT)]
    Init(init::Args),
}

/// Entry point of the `warden` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Long-running processes log at info; one-shot commands only when something is wrong.
    let long_running = match &cli.command {
        Command::Sidecar(_) | Command::ControlPlane(_) => true,
        Command::Inject(args) => args.serves(),
        _ => false,
    };
    let quiet = !long_running;
    init_logging(if quiet { "warn" } else { "info" });
    // The sidecar moves bytes on its own worker threads (one runtime per core, see
    // `warden_sidecar`); its main runtime only runs the admin API, policy pushes and SVID
    // rotation, which one thread serves without idle pool threads.
    let mut builder = if matches!(cli.command, Command::Sidecar(_)) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Sidecar(args) => sidecar::run(args).await,
            Command::ControlPlane(args) => control_plane::run(args).await,
            Command::Policy(args) => policy::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Top(args) => top::run(args).await,
            Command::Inject(args) => inject::run(&args).await,
            Command::Init(args) => init::run(&args),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGTERM or Ctrl-C.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
