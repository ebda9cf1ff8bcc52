//! Running ztunnel: connect to the control service, keep config and
//! certificates, serve the admin endpoints.

use std::{collections::BTreeSet, sync::Arc, time::SystemTime};

use http::StatusCode;
use serde::Serialize;
use weft_proto::spiffe::Identity;
use weft_proxy::{
    admin::{self, Reply, Routes},
    control::ControlPlane,
    identity::{ca_client::CaClient, CertificateInfo, CertificateManager},
    state::{ProxyState, StateDump, TunnelProtocol},
    xds::{client::proxy_node, AddressHandler, AuthorizationHandler, XdsClient, XdsStatus},
};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    ControlPlane(#[from] weft_proxy::control::ControlPlaneError),
    #[error("binding the {what} endpoint on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
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
    certificates: Vec<CertificateInfo>,
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
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The identities of HBONE workloads on this node: the certificates it needs.
fn local_identities(state: &ProxyState, node: &str) -> BTreeSet<Identity> {
    state
        .workloads_on(node)
        .iter()
        .filter(|w| w.protocol == TunnelProtocol::Hbone)
        .map(|w| w.identity.clone())
        .collect()
}

pub async fn start(config: Config) -> Result<Ztunnel, StartError> {
    let mut control = ControlPlane::from_files(
        &config.control_address,
        &config.root_cert,
        &config.token_file,
    )?;
    control.server_name = config.control_server_name.clone();
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

    // Keep a certificate for every identity running on this node.
    let (tracked_state, tracked_certs, node) = (
        state.clone(),
        certificates.clone(),
        config.node_name.clone(),
    );
    tasks.push(tokio::spawn(async move {
        let mut changes = tracked_state.subscribe();
        let mut held: BTreeSet<Identity> = BTreeSet::new();
        loop {
            let wanted = local_identities(&tracked_state, &node);
            for gone in held.difference(&wanted) {
                tracked_certs.forget(gone);
            }
            for new in wanted.difference(&held) {
                let (certs, identity) = (tracked_certs.clone(), new.clone());
                tokio::spawn(async move {
                    if let Err(err) = certs.fetch(&identity).await {
                        tracing::warn!(%err, "first certificate request failed; retrying in the background");
                    }
                });
            }
            held = wanted;
            if changes.changed().await.is_err() {
                return;
            }
        }
    }));

    let bind = |what, addr| async move {
        admin::bind(addr)
            .await
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let (admin_listener, admin_address) = bind("admin", config.admin_address).await?;
    let (ready_listener, readiness_address) = bind("readiness", config.readiness_address).await?;

    let (dump_state, dump_status, dump_certs, dump_node) = (
        state.clone(),
        xds_status.clone(),
        certificates.clone(),
        config.node_name.clone(),
    );
    let admin_routes = Routes::default().route("/config_dump", move |_, _| {
        Reply::json(&ConfigDump {
            node: dump_node.clone(),
            xds: XdsDump::from(&*dump_status.borrow()),
            state: dump_state.dump(),
            certificates: dump_certs.info(),
        })
    });
    tasks.push(tokio::spawn(admin::serve(admin_listener, admin_routes)));

    let node = config.node_name.clone();
    let ready_routes = Routes::default().route("/healthz/ready", move |_, _| {
        let status = xds_status.borrow().clone();
        if !status.synced {
            return Reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: xDS has not synced\n",
            );
        }
        let missing: Vec<String> = local_identities(&state, &node)
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
    tracing::info!(node = %config.node_name, control = %config.control_address, %admin_address, %readiness_address, "ztunnel started");
    Ok(Ztunnel {
        admin_address,
        readiness_address,
        tasks,
    })
}

/// The binary's entry point: parse the configuration, start, run until
/// SIGTERM or Ctrl-C.
pub fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = <Config as clap::Parser>::parse();
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
