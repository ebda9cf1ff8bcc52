//! Running ztunnel: connect to the control service, keep config and
//! certificates, enroll pods from the node agent, serve the admin endpoints.

use std::{sync::atomic::Ordering, sync::Arc, time::SystemTime};

use http::StatusCode;
use serde::Serialize;
use weft_proxy::{
    admin::{self, Reply, Routes},
    control::ControlPlane,
    hbone::tls::TrustBundle,
    identity::{ca_client::CaClient, CertificateInfo, CertificateManager},
    state::{ProxyState, StateDump},
    xds::{client::proxy_node, AddressHandler, AuthorizationHandler, XdsClient, XdsStatus},
};

use crate::{
    config::Config,
    netns::own_netns,
    nodeagent,
    pods::{PodSummary, Pods},
    proxy::Proxy,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    ControlPlane(#[from] weft_proxy::control::ControlPlaneError),
    #[error("the mesh root certificate: {0}")]
    Trust(#[from] weft_proxy::hbone::tls::TlsError),
    #[error("binding the {what} endpoint on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("opening ztunnel's own network namespace: {0}")]
    Netns(std::io::Error),
    #[error("the node-agent socket {path}: {source}")]
    NodeAgent {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `/config_dump` returns.
#[derive(Serialize)]
struct ConfigDump {
    node: String,
    xds: XdsDump,
    #[serde(flatten)]
    state: StateDump,
    pods: Vec<PodSummary>,
    certificates: Vec<CertificateInfo>,
    hbone: HboneDump,
    authorization: AuthorizationDump,
}

#[derive(Serialize)]
struct AuthorizationDump {
    /// Inbound connections open now (re-evaluated on every policy change).
    open_connections: usize,
    /// Denied connections, by deciding policy.
    denials: std::collections::BTreeMap<String, u64>,
}

#[derive(Serialize)]
struct HboneDump {
    connections: usize,
    handshakes: u64,
    streams: u64,
    reused: u64,
}

#[derive(Serialize)]
struct XdsDump {
    connected: bool,
    synced: bool,
    last_update: Option<SystemTime>,
    last_error: Option<String>,
    acks: u64,
    nacks: u64,
}

impl From<&XdsStatus> for XdsDump {
    fn from(s: &XdsStatus) -> Self {
        Self {
            connected: s.connected,
            synced: s.synced,
            last_update: s.last_update,
            last_error: s.last_error.clone(),
            acks: s.acks,
            nacks: s.nacks,
        }
    }
}

/// A started ztunnel.
pub struct Ztunnel {
    pub admin_address: std::net::SocketAddr,
    pub readiness_address: std::net::SocketAddr,
    pub pods: Arc<Pods>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub async fn start(config: Config) -> Result<Ztunnel, StartError> {
    let mut control = ControlPlane::from_files(
        &config.control_address,
        &config.root_cert,
        &config.token_file,
    )?;
    control.server_name = config.control_server_name.clone();
    let trust = TrustBundle::from_pem(&control.root_pem, &config.trust_domain)?;
    let state = Arc::new(ProxyState::default());
    let xds = XdsClient::new(
        control.clone(),
        proxy_node(
            "ztunnel",
            &config.node_name,
            &format!("ztunnel~{}", config.node_name),
        ),
        vec![
            Arc::new(AddressHandler::new(state.clone())),
            Arc::new(AuthorizationHandler::new(state.clone())),
        ],
    );
    let xds_status = xds.status();
    let certificates = CertificateManager::new(CaClient::new(control));
    let mut tasks = vec![tokio::spawn(xds.run())];
    let proxy = Arc::new(Proxy::new(
        config.node_name.clone(),
        state.clone(),
        certificates.clone(),
        trust,
    ));
    let pods = Arc::new(Pods::new(
        proxy.clone(),
        own_netns().map_err(StartError::Netns)?,
    ));

    // Bind everything before reporting the addresses.
    let bind = |what, addr| async move {
        admin::bind(addr)
            .await
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let (admin_listener, admin_address) = bind("admin", config.admin_address).await?;
    let (ready_listener, readiness_address) = bind("readiness", config.readiness_address).await?;
    let agent_listener =
        nodeagent::wire::PacketListener::bind(&config.node_agent_socket).map_err(|source| {
            StartError::NodeAgent {
                path: config.node_agent_socket.clone(),
                source,
            }
        })?;
    tasks.push(tokio::spawn(nodeagent::server::serve(
        agent_listener,
        pods.clone(),
    )));
    tasks.push(tokio::spawn(proxy.connections.clone().watch(proxy.clone())));

    let (dump_state, dump_status, dump_certs, dump_node, dump_pods, dump_proxy) = (
        state.clone(),
        xds_status.clone(),
        certificates.clone(),
        config.node_name.clone(),
        pods.clone(),
        proxy.clone(),
    );
    let admin_routes = Routes::default().route("/config_dump", move |_, _| {
        let stats = dump_proxy.pool.stats();
        Reply::json(&ConfigDump {
            node: dump_node.clone(),
            xds: XdsDump::from(&*dump_status.borrow()),
            state: dump_state.dump(),
            pods: dump_pods.list(),
            certificates: dump_certs.info(),
            hbone: HboneDump {
                connections: dump_proxy.pool.connections(),
                handshakes: stats.handshakes.load(Ordering::Relaxed),
                streams: stats.streams.load(Ordering::Relaxed),
                reused: stats.reused.load(Ordering::Relaxed),
            },
            authorization: AuthorizationDump {
                open_connections: dump_proxy.connections.open_connections(),
                denials: dump_proxy.connections.denials(),
            },
        })
    });
    tasks.push(tokio::spawn(admin::serve(admin_listener, admin_routes)));

    let ready_pods = pods.clone();
    let ready_routes = Routes::default().route("/healthz/ready", move |_, _| {
        if !xds_status.borrow().synced {
            return Reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: xDS has not synced\n",
            );
        }
        let missing: Vec<String> = ready_pods
            .identities()
            .into_iter()
            .filter(|id| {
                certificates
                    .current(id)
                    .is_none_or(|c| !c.is_valid_at(SystemTime::now()))
            })
            .map(|id| id.to_string())
            .collect();
        if missing.is_empty() {
            Reply::text(StatusCode::OK, "ready\n")
        } else {
            Reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: no certificate yet for {}\n", missing.join(", ")),
            )
        }
    });
    tasks.push(tokio::spawn(admin::serve(ready_listener, ready_routes)));
    tracing::info!(node = %config.node_name, control = %config.control_address, %admin_address, %readiness_address, socket = %config.node_agent_socket.display(), "ztunnel started");
    Ok(Ztunnel {
        admin_address,
        readiness_address,
        pods,
        tasks,
    })
}

/// The binary's entry point: parse the configuration, start, run until
/// SIGTERM or Ctrl-C.
pub fn main() -> anyhow::Result<()> {
    main_from(std::env::args_os())
}

/// Runs ztunnel with `args` (the first is the program name).
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Colour only on a terminal: log files stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = <Config as clap::Parser>::parse_from(args);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let ztunnel = start(config).await?;
            // Machine-readable, for tools that start ztunnel on port 0.
            println!(
                "admin={} readiness={}",
                ztunnel.admin_address, ztunnel.readiness_address
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            drop(ztunnel);
            Ok(())
        })
}
