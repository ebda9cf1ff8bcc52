//! The control service's configuration, parsed once.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    auth::token_review::TokenReviewConfig,
    cluster::{leader::LeaseConfig, waypoints::WaypointTemplate},
    source::{KubeConnection, SourceConfig},
    translate::MeshConfig,
};

/// Default gRPC port (TLS) for xDS and the CA: istiod's.
pub const DEFAULT_PORT: u16 = 15012;

#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// Address of the gRPC (TLS) listener serving xDS and the CA.
    pub listen: SocketAddr,
    /// Where the mesh's objects come from.
    pub source: SourceConfig,
    /// Where the root CA lives (created on first start).
    pub ca_dir: PathBuf,
    /// Where node tokens (`<node>.token`) are read from (not on
    /// Kubernetes, where service-account tokens are reviewed instead).
    pub node_credentials_dir: PathBuf,
    /// On Kubernetes: the token audience and ztunnel's service accounts.
    pub token_review: TokenReviewConfig,
    /// On Kubernetes: the leader Lease (only the leader writes status).
    pub lease: LeaseConfig,
    /// On Kubernetes: how waypoint Deployments are made (the trust domain
    /// and token audience are taken from the rest of this config).
    pub waypoint: WaypointTemplate,
    pub mesh: MeshConfig,
    /// Default and maximum lifetime of workload certificates.
    pub cert_lifetime: Duration,
    /// Quiet time after a config file change before it is applied.
    pub debounce: Duration,
    /// Extra DNS names for the serving certificate (besides
    /// `weft-control`, `weft-control.weft-system.svc` and `localhost`).
    pub server_names: Vec<String>,
}

impl ControlConfig {
    /// Defaults for serving `config_dir`, keeping state under `state_dir`.
    pub fn new(config_dir: impl Into<PathBuf>, state_dir: impl Into<PathBuf>) -> Self {
        Self::with_source(SourceConfig::Directory(config_dir.into()), state_dir)
    }

    /// Defaults for serving what a Kubernetes API server holds.
    pub fn kubernetes(connection: KubeConnection, state_dir: impl Into<PathBuf>) -> Self {
        Self::with_source(SourceConfig::Kubernetes(connection), state_dir)
    }

    fn with_source(source: SourceConfig, state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            source,
            ca_dir: state_dir.join("ca"),
            node_credentials_dir: state_dir.join("nodes"),
            token_review: TokenReviewConfig::default(),
            lease: LeaseConfig::new(
                std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "weft-system".into()),
                replica_identity(),
            ),
            waypoint: WaypointTemplate::default(),
            mesh: MeshConfig::default(),
            cert_lifetime: Duration::from_secs(24 * 3600),
            debounce: Duration::from_millis(20),
            server_names: Vec::new(),
        }
    }
}

/// This replica's name in the leader Lease: its pod's name, else host name
/// and process id.
fn replica_identity() -> String {
    std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    })
}
