//! The waypoint's configuration: flags or environment, parsed once.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

#[derive(Clone, Debug, Parser)]
#[command(name = "waypoint", version, about = "Weft's L7 waypoint proxy")]
pub struct Config {
    /// The waypoint (its Gateway's name).
    #[arg(long, env = "WEFT_WAYPOINT_NAME")]
    pub name: String,
    /// The waypoint's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Its service account: its identity is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`
    /// (the Gateway's name, unless given).
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// This pod's name (for the workload it is in the mesh's view).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// The node it runs on.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The control service's gRPC address (host:port).
    #[arg(
        long,
        env = "WEFT_CONTROL_ADDRESS",
        default_value = "weft-control.weft-system.svc:15012"
    )]
    pub control_address: String,
    /// The name the control service's certificate must carry.
    #[arg(long, env = "WEFT_CONTROL_SERVER_NAME", default_value = "weft-control")]
    pub control_server_name: String,
    /// The mesh root certificate (PEM).
    #[arg(
        long,
        env = "WEFT_ROOT_CERT",
        default_value = "/var/run/weft/root-cert.pem"
    )]
    pub root_cert: PathBuf,
    /// The credential for the control service.
    #[arg(
        long,
        env = "WEFT_TOKEN_FILE",
        default_value = "/var/run/weft/node.token"
    )]
    pub token_file: PathBuf,
    /// The mesh's SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Where HBONE is served (Istio's 15008).
    #[arg(long, env = "WEFT_HBONE_ADDRESS", default_value = "0.0.0.0:15008")]
    pub hbone_address: SocketAddr,
    /// Admin endpoint (`/config_dump`), on localhost only.
    #[arg(long, env = "WEFT_ADMIN_ADDRESS", default_value = "127.0.0.1:15000")]
    pub admin_address: SocketAddr,
    /// Prometheus metrics (`/stats/prometheus`, `/metrics`; Istio's
    /// 15020).
    #[arg(long, env = "WEFT_METRICS_ADDRESS", default_value = "0.0.0.0:15020")]
    pub metrics_address: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, env = "WEFT_READINESS_ADDRESS", default_value = "0.0.0.0:15021")]
    pub readiness_address: SocketAddr,
    /// How request paths are made canonical before routing, authorization
    /// and forwarding (Istio's mesh option `pathNormalization`).
    #[arg(
        long,
        env = "WEFT_PATH_NORMALIZATION",
        value_enum,
        default_value = "BASE"
    )]
    pub path_normalization: crate::normalize::PathNormalization,
    /// An OpenTelemetry collector (`http://host:4317`) to export a span
    /// per request to, over OTLP/gRPC. Without one, `traceparent` passes
    /// through untouched.
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Percent of requests without a sampled `traceparent` that start a
    /// sampled trace (Istio's default is 1).
    #[arg(long, env = "WEFT_TRACE_SAMPLING", default_value_t = 1.0)]
    pub trace_sampling: f64,
    /// Worker threads serving traffic, each with a runtime of its own
    /// (Istio's proxy `concurrency`; 0: one per core).
    #[arg(long, env = "WEFT_CONCURRENCY", default_value_t = 0)]
    pub concurrency: usize,
    /// Log format: `text` or `json`.
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    pub fn service_account(&self) -> &str {
        self.service_account.as_deref().unwrap_or(&self.name)
    }
}
