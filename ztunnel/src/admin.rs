//! ztunnel's HTTP endpoints:
//! - admin (localhost:15000): `/config_dump`, `/logging`, `/quitquitquit`;
//! - metrics (:15020): `/metrics` and `/stats/prometheus`;
//! - readiness (:15021): `/healthz/ready`, 200 once xDS has synced, the
//!   node agent's snapshot is applied and the enrolled pods' certificates
//!   are held (and 503 again if one is lost).

use std::{
    collections::BTreeMap,
    sync::{atomic::Ordering, Arc},
    time::SystemTime,
};

use http::{Method, StatusCode};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use weft_proxy::{
    admin::{Reply, Routes},
    identity::{CertificateInfo, CertificateManager},
    state::StateDump,
    xds::XdsStatus,
};

use crate::{
    connections::ConnectionSummary,
    pods::{PodSummary, Pods},
    proxy::Proxy,
    telemetry::Telemetry,
    zds::{AgentLink, LinkStatus},
};

/// Changes the log filter at run time (`/logging?level=…`).
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What `/config_dump` returns.
#[derive(Serialize)]
struct ConfigDump {
    node: String,
    capture: CaptureDump,
    xds: XdsDump,
    #[serde(flatten)]
    state: StateDump,
    pods: Vec<PodSummary>,
    node_agent: AgentLink,
    certificates: Vec<CertificateInfo>,
    connections: Vec<ConnectionSummary>,
    hbone: HboneDump,
    authorization: AuthorizationDump,
    limits: crate::limits::Limits,
    /// Connections refused before proxying, by reason.
    refused: BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct CaptureDump {
    mode: &'static str,
    /// Why `--capture auto` fell back to iptables, if it did.
    fallback_reason: Option<String>,
    /// BPF attachments in place (0 in iptables mode).
    bpf_attachments: usize,
}

#[derive(Serialize)]
struct HboneDump {
    connections: usize,
    handshakes: u64,
    streams: u64,
    reused: u64,
}

#[derive(Serialize)]
struct AuthorizationDump {
    /// Denied connections, by deciding policy.
    denials: BTreeMap<String, u64>,
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

/// Everything the endpoints read.
#[derive(Clone)]
pub struct Sources {
    pub node: String,
    pub proxy: Arc<Proxy>,
    pub pods: Arc<Pods>,
    pub certs: CertificateManager,
    pub xds: watch::Receiver<XdsStatus>,
    pub agent: LinkStatus,
}

pub fn admin_routes(sources: Sources, logging: Option<LogControl>, quit: Arc<Notify>) -> Routes {
    let dump = sources.clone();
    Routes::default()
        .route("/config_dump", move |_, _| {
            let s = &dump;
            let stats = s.proxy.pool.stats();
            let xds = s.xds.borrow().clone();
            Reply::json(&ConfigDump {
                node: s.node.clone(),
                capture: CaptureDump {
                    mode: s.proxy.capture.name(),
                    fallback_reason: s.proxy.capture.fallback().map(str::to_owned),
                    bpf_attachments: s.proxy.capture.attachments(),
                },
                xds: XdsDump {
                    connected: xds.connected,
                    synced: xds.synced,
                    last_update: xds.last_update,
                    last_error: xds.last_error,
                    acks: xds.acks,
                    nacks: xds.nacks,
                },
                state: s.proxy.state.dump(),
                pods: s.pods.list(),
                node_agent: s.agent.get(),
                certificates: s.certs.info(),
                connections: s.proxy.connections.list(),
                hbone: HboneDump {
                    connections: s.proxy.pool.connections(),
                    handshakes: stats.handshakes.load(Ordering::Relaxed),
                    streams: stats.streams.load(Ordering::Relaxed),
                    reused: stats.reused.load(Ordering::Relaxed),
                },
                authorization: AuthorizationDump {
                    denials: s.proxy.connections.denials(),
                },
                limits: s.proxy.limits,
                refused: crate::guard::REASONS
                    .iter()
                    .map(|reason| (*reason, s.proxy.guard.refused(reason)))
                    .collect(),
            })
        })
        .route("/logging", move |method, query| {
            let level = query
                .unwrap_or_default()
                .split('&')
                .find_map(|kv| kv.strip_prefix("level="))
                .map(str::to_owned);
            match (method, level, &logging) {
                (&Method::POST, Some(level), Some(set)) => match set(&level) {
                    Ok(()) => {
                        tracing::info!(%level, "log level changed");
                        Reply::text(StatusCode::OK, format!("log level set to {level}\n"))
                    }
                    Err(err) => Reply::text(StatusCode::BAD_REQUEST, format!("{err}\n")),
                },
                (&Method::POST, _, None) => Reply::text(
                    StatusCode::NOT_IMPLEMENTED,
                    "this ztunnel was started without a reloadable log filter\n",
                ),
                _ => Reply::text(
                    StatusCode::BAD_REQUEST,
                    "use POST /logging?level=LEVEL (e.g. info, debug, access=info,warn)\n",
                ),
            }
        })
        .route("/quitquitquit", move |method, _| {
            if method == Method::POST {
                quit.notify_one();
                Reply::text(StatusCode::OK, "shutting down\n")
            } else {
                Reply::text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n")
            }
        })
}

pub fn metrics_routes(telemetry: Arc<Telemetry>) -> Routes {
    weft_proxy::admin::metrics_routes(move || telemetry.render())
}

pub fn readiness_routes(sources: Sources) -> Routes {
    Routes::default().route("/healthz/ready", move |_, _| {
        if !sources.xds.borrow().synced {
            return Reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: xDS has not synced\n",
            );
        }
        let agent = sources.agent.get();
        if agent.snapshots == 0 {
            return Reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: no snapshot of this node's pods from the node agent at {} yet{}\n",
                    agent.socket.display(),
                    agent
                        .last_error
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                ),
            );
        }
        let missing: Vec<String> = sources
            .pods
            .identities()
            .into_iter()
            .filter(|id| {
                sources
                    .certs
                    .current(id)
                    .is_none_or(|c| !c.is_valid_at(SystemTime::now()))
            })
            .map(|id| id.to_string())
            .collect();
        if missing.is_empty() {
            match sources.proxy.capture.fallback() {
                None => Reply::text(StatusCode::OK, "ready\n"),
                Some(reason) => Reply::text(
                    StatusCode::OK,
                    format!(
                        "ready (degraded: capture is iptables because eBPF capture is \
                         unavailable: {reason})\n"
                    ),
                ),
            }
        } else {
            Reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: no valid certificate for {}\n",
                    missing.join(", ")
                ),
            )
        }
    })
}
