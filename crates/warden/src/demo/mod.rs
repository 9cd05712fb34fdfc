//! `warden demo`: the whole idea on one machine. A control plane with the built-in CA, four
//! RAG services (app -> retriever -> vectordb -> llm) each behind its own sidecar that gets
//! its SVID over the Workload API and its policy from the control plane; then a question
//! travels the chain, attacks are refused, and a live revocation bites.

mod http;
mod metrics;
mod services;
mod steps;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use warden_control::ControlPlaneConfig;
use warden_control::server::ControlPlane;
use warden_identity::{FilesSource, IdentityStore, SpiffeId, WorkloadApiSource};
use warden_proto::control::v1 as pb;
use warden_proto::control::v1::policy_service_client::PolicyServiceClient;
use warden_sidecar::{Sidecar, SidecarConfig};

pub const TRUST_DOMAIN: &str = "rag.example";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run the scripted tour once and exit: 0 only if every step behaved as expected.
    #[arg(long)]
    once: bool,
}

pub fn id(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/rag/sa/{name}")
}

/// Everything the demo started; dropped (and the temporary directory removed) at the end.
pub struct Demo {
    pub dir: tempfile::TempDir,
    /// The demo's identity provider: mints the end users' tokens.
    pub idp: warden_jwt::mint::Es256Signer,
    pub cp: ControlPlane,
    pub admin: PolicyServiceClient<tonic::transport::Channel>,
    pub app: Service,
    pub retriever: Service,
    pub vectordb: Service,
    pub llm: Service,
}

/// One workload: its local service and its sidecar.
pub struct Service {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub sidecar: Sidecar,
    _task: tokio::task::JoinHandle<()>,
}

impl Service {
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.sidecar.admin_addr())
    }
}

/// Each sidecar's audit log (one JSON record per decision), kept out of the terminal.
pub fn audit_log(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-audit.jsonl"))
}

fn socket(dir: &Path, name: &str) -> PathBuf {
    dir.join("agents").join(format!("{name}.sock"))
}

fn control_plane_config(dir: &Path) -> anyhow::Result<ControlPlaneConfig> {
    let mut text = format!(
        "trust_domain = \"{TRUST_DOMAIN}\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nadmins = [\"spiffe://{TRUST_DOMAIN}/warden/admin\"]\n[ca]\nsvid_ttl = \"1h\"\n",
        dir.join("control-plane").display()
    );
    for name in ["app", "retriever", "vectordb", "llm"] {
        text.push_str(&format!(
            "[[workload_api]]\nsocket = \"{}\"\nspiffe_id = \"{}\"\n",
            socket(dir, name).display(),
            id(name)
        ));
    }
    ControlPlaneConfig::from_toml("demo control plane", &text).map_err(|e| anyhow!("{e}"))
}

/// One outbound listener of a sidecar: its name, the upstream workload and address, and
/// where the listener binds (port 0 unless the local service must know it in advance).
struct Upstream<'a> {
    listener: &'a str,
    workload: &'a str,
    connect: SocketAddr,
    listen: SocketAddr,
}

fn upstream<'a>(listener: &'a str, workload: &'a str, connect: SocketAddr) -> Upstream<'a> {
    Upstream {
        listener,
        workload,
        connect,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
    }
}

/// A sidecar for `name`: inbound `http` forwarding to `forward` (if any), and the outbound
/// listeners of `outbound`; SVID from its Workload API socket, policy from the control plane.
async fn start_sidecar(
    dir: &Path,
    cp: SocketAddr,
    name: &str,
    forward: Option<SocketAddr>,
    outbound: &[Upstream<'_>],
) -> anyhow::Result<Sidecar> {
    // The retriever holds the department documents: its listener decides per request and
    // per end user (routes in `chain_policies`), with the demo IdP's keys.
    let http = if name == "retriever" {
        format!(
            "protocol = \"http\"\nforward_client_cert = \"sanitize_set\"\n\
             [[jwt]]\nname = \"corp-idp\"\nissuer = \"{IDP_ISSUER}\"\naudiences = [\"{IDP_AUDIENCE}\"]\njwks_file = \"{}\"\n",
            dir.join("idp-jwks.json").display()
        )
    } else {
        String::new()
    };
    let endpoint = format!("unix://{}", socket(dir, name).display());
    let mut text = format!(
        "trust_domain = \"{TRUST_DOMAIN}\"\n[identity]\nsource = \"workload-api\"\nendpoint = \"{endpoint}\"\n\
         [policy]\ncontrol_plane = \"https://{cp}\"\ncache = \"{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [audit]\npath = \"{}\"\n",
        dir.join(format!("{name}-policy.json")).display(),
        audit_log(dir, name).display()
    );
    if let Some(forward) = forward {
        text.push_str(&format!(
            "[[inbound]]\nname = \"http\"\nlisten = \"127.0.0.1:0\"\nforward = \"{forward}\"\n{http}"
        ));
    }
    for u in outbound {
        text.push_str(&format!(
            "[[outbound]]\nname = \"{}\"\nlisten = \"{}\"\nconnect = \"{}\"\nserver_id = \"{}\"\n",
            u.listener,
            u.listen,
            u.connect,
            id(u.workload)
        ));
    }
    let config =
        SidecarConfig::from_toml(&format!("{name} sidecar"), &text).map_err(|e| anyhow!("{e}"))?;
    let source = Box::new(WorkloadApiSource {
        endpoint: Some(endpoint),
        spiffe_id: None,
    });
    Sidecar::start(&config, source)
        .await
        .with_context(|| format!("starting the {name} sidecar"))
}

fn policy(name: &str, inbound: &[&str], outbound: &[(&str, &str)]) -> pb::WorkloadPolicy {
    let mut p = pb::WorkloadPolicy {
        spiffe_id: id(name),
        ..Default::default()
    };
    if !inbound.is_empty() {
        p.inbound.insert(
            "http".into(),
            pb::PatternList {
                patterns: inbound.iter().map(|n| id(n)).collect(),
            },
        );
    }
    for (listener, upstream) in outbound {
        p.outbound.insert(
            (*listener).into(),
            pb::PatternList {
                patterns: vec![id(upstream)],
            },
        );
    }
    p
}

/// The chain policy of one workload.
pub fn policy_for(all: &[pb::WorkloadPolicy], name: &str) -> pb::WorkloadPolicy {
    all.iter()
        .find(|p| p.spiffe_id == id(name))
        .cloned()
        .unwrap_or_default()
}

/// The demo IdP's issuer and the retriever's audience.
pub const IDP_ISSUER: &str = "https://idp.demo.warden";
pub const IDP_AUDIENCE: &str = "rag-retriever";

/// The retriever's L7 routes: questions from the app; finance documents for the finance
/// group only; marketing documents for marketing and finance.
fn retriever_routes() -> Vec<pb::Route> {
    let users = |groups: &[&str]| {
        Some(pb::UserRequirement {
            jwt: "corp-idp".into(),
            claims: [(
                "groups".to_owned(),
                pb::StringList {
                    values: groups.iter().map(|g| (*g).to_owned()).collect(),
                },
            )]
            .into(),
        })
    };
    let route = |prefix: &str, users| pb::Route {
        listener: "http".into(),
        path_prefix: prefix.into(),
        methods: vec!["GET".into()],
        peers: vec![id("app")],
        users,
    };
    vec![
        route("/retrieve", None),
        route("/docs/finance/", users(&["finance"])),
        route("/docs/marketing/", users(&["marketing", "finance"])),
    ]
}

/// The intended call graph: each hop allowed only from its predecessor.
pub fn chain_policies() -> Vec<pb::WorkloadPolicy> {
    let mut retriever = policy("retriever", &["app"], &[("vectordb", "vectordb")]);
    retriever.routes = retriever_routes();
    vec![
        policy("app", &[], &[("retriever", "retriever")]),
        retriever,
        policy("vectordb", &["retriever"], &[("llm", "llm")]),
        policy("llm", &["vectordb"], &[]),
    ]
}

pub async fn put_policy(
    admin: &mut PolicyServiceClient<tonic::transport::Channel>,
    p: pb::WorkloadPolicy,
) -> anyhow::Result<u64> {
    let resp = admin
        .put_policy(pb::PutPolicyRequest {
            policy: Some(p),
            expected_version: None,
        })
        .await
        .map_err(|s| anyhow!("put policy: {}", s.message()))?;
    Ok(resp.into_inner().policy.map(|p| p.version).unwrap_or(0))
}

/// Waits until `cond` holds, up to `within`.
pub async fn wait_for(
    what: &str,
    within: Duration,
    mut cond: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            return Err(anyhow!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

impl Demo {
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("warden-demo-")
            .tempdir()
            .context("temporary directory")?;
        let config = control_plane_config(dir.path())?;
        let idp_key = warden_jwt::mint::Es256Signer::generate_pkcs8()
            .map_err(|e| anyhow!("demo IdP key: {e}"))?;
        let idp = warden_jwt::mint::Es256Signer::from_pkcs8(&idp_key)
            .map_err(|e| anyhow!("demo IdP key: {e}"))?;
        std::fs::write(dir.path().join("idp-jwks.json"), idp.jwks().to_string())
            .context("writing the demo IdP's JWKS")?;
        let cp = ControlPlane::start(&config)
            .await
            .context("starting the control plane")?;
        let cp_addr = cp.addr();

        // Start from the end of the chain, so each sidecar knows its upstream's address.
        let (llm_addr, llm_task) = services::llm().await?;
        let llm_sc = start_sidecar(dir.path(), cp_addr, "llm", Some(llm_addr), &[]).await?;
        let llm_in = llm_sc.inbound_addr("http").context("llm inbound")?;

        let (vdb_addr, vdb_task, vdb_sc) = service_with_sidecar(
            dir.path(),
            cp_addr,
            "vectordb",
            vec![upstream("llm", "llm", llm_in)],
            |out| services::vectordb(out[0]),
        )
        .await?;
        let vdb_in = vdb_sc.inbound_addr("http").context("vectordb inbound")?;
        let (ret_addr, ret_task, ret_sc) = service_with_sidecar(
            dir.path(),
            cp_addr,
            "retriever",
            vec![upstream("vectordb", "vectordb", vdb_in)],
            |out| services::retriever(out[0]),
        )
        .await?;
        let ret_in = ret_sc.inbound_addr("http").context("retriever inbound")?;
        // app calls out only; its sidecar also has listeners towards vectordb and llm, which
        // policy does not allow: that is where lateral movement is tried and refused.
        let app_sc = start_sidecar(
            dir.path(),
            cp_addr,
            "app",
            None,
            &[
                upstream("retriever", "retriever", ret_in),
                upstream("vectordb", "vectordb", vdb_in),
                upstream("llm", "llm", llm_in),
            ],
        )
        .await?;
        let (app_addr, app_task) =
            services::app(app_sc.outbound_addr("retriever").context("app outbound")?).await?;

        let admin_dir = config.data_dir.join("admin");
        let admin = admin_client(&admin_dir, cp_addr).await?;
        let mut demo = Demo {
            dir,
            idp,
            cp,
            admin,
            app: Service {
                name: "app",
                addr: app_addr,
                sidecar: app_sc,
                _task: app_task,
            },
            retriever: Service {
                name: "retriever",
                addr: ret_addr,
                sidecar: ret_sc,
                _task: ret_task,
            },
            vectordb: Service {
                name: "vectordb",
                addr: vdb_addr,
                sidecar: vdb_sc,
                _task: vdb_task,
            },
            llm: Service {
                name: "llm",
                addr: llm_addr,
                sidecar: llm_sc,
                _task: llm_task,
            },
        };
        for p in chain_policies() {
            put_policy(&mut demo.admin, p).await?;
        }
        for s in demo.services() {
            wait_for(
                &format!("{} sidecar ready", s.name),
                Duration::from_secs(20),
                || s.sidecar.is_ready() && s.sidecar.policy().has_policy(),
            )
            .await?;
        }
        Ok(demo)
    }

    pub fn services(&self) -> [&Service; 4] {
        [&self.app, &self.retriever, &self.vectordb, &self.llm]
    }

    pub fn admin_dir(&self) -> PathBuf {
        self.dir.path().join("control-plane").join("admin")
    }

    pub async fn shutdown(self) {
        for s in [self.app, self.retriever, self.vectordb, self.llm] {
            s.sidecar.shutdown(Duration::from_secs(1)).await;
        }
        self.cp.shutdown().await;
    }
}

/// Starts a service and its sidecar. The service must know its sidecar's outbound ports and
/// the sidecar the service's port, so the outbound ports are reserved first (bind and
/// release on loopback), then the service starts, then the sidecar binds exactly those ports.
async fn service_with_sidecar<F, Fut>(
    dir: &Path,
    cp: SocketAddr,
    name: &str,
    mut outbound: Vec<Upstream<'_>>,
    make: F,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>, Sidecar)>
where
    F: FnOnce(Vec<SocketAddr>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>>,
{
    for u in &mut outbound {
        let l = std::net::TcpListener::bind("127.0.0.1:0").context("reserve a port")?;
        u.listen = l.local_addr().context("port")?;
    }
    let (addr, task) = make(outbound.iter().map(|u| u.listen).collect()).await?;
    let sidecar = start_sidecar(dir, cp, name, Some(addr), &outbound).await?;
    Ok((addr, task, sidecar))
}

async fn admin_client(
    dir: &Path,
    cp: SocketAddr,
) -> anyhow::Result<PolicyServiceClient<tonic::transport::Channel>> {
    let files = FilesSource::new(dir.join("tls.crt"), dir.join("tls.key"), dir.join("ca.crt"));
    let store = IdentityStore::new();
    store.set(Arc::new(
        files.load().map_err(|e| anyhow!("admin credential: {e}"))?,
    ));
    let cp_id = SpiffeId::parse(&format!("spiffe://{TRUST_DOMAIN}/warden/control-plane"))
        .map_err(|e| anyhow!("{e}"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match warden_sidecar::control::client::connect(
            &format!("https://{cp}"),
            &store,
            &cp_id,
            Duration::from_secs(2),
        )
        .await
        {
            Ok(channel) => return Ok(PolicyServiceClient::new(channel)),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(anyhow!("{e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("Starting the Warden demo: a control plane with its built-in CA and four services,");
    println!("each behind its own sidecar, all on 127.0.0.1 ...\n");
    let mut demo = Demo::start().await?;
    println!("Temporary files: {}\n", demo.dir.path().display());
    let report = steps::tour(&mut demo).await;
    if args.once {
        demo.shutdown().await;
        return report.verdict();
    }
    steps::where_next(&demo);
    println!("\nThe demo keeps running; press Ctrl-C to stop.");
    crate::shutdown_signal().await;
    println!("\nStopping: sidecars drain, the control plane stops, temporary files are removed.");
    demo.shutdown().await;
    report.verdict()
}
