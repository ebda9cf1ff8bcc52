//! ztunnel's configuration: flags or environment, parsed once at start.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

#[derive(Clone, Debug, Parser)]
#[command(name = "ztunnel", version, about = "Weft's node proxy")]
pub struct Config {
    /// The node this ztunnel serves.
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
    /// This node's credential for the control service.
    #[arg(
        long,
        env = "WEFT_NODE_TOKEN_FILE",
        default_value = "/var/run/weft/node.token"
    )]
    pub token_file: PathBuf,
    /// Admin endpoint (config dump, logging), on localhost only.
    #[arg(long, env = "WEFT_ADMIN_ADDRESS", default_value = "127.0.0.1:15000")]
    pub admin_address: SocketAddr,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, env = "WEFT_READINESS_ADDRESS", default_value = "0.0.0.0:15021")]
    pub readiness_address: SocketAddr,
    /// Prometheus metrics endpoint (`/metrics`, `/stats/prometheus`).
    #[arg(long, env = "WEFT_METRICS_ADDRESS", default_value = "0.0.0.0:15020")]
    pub metrics_address: SocketAddr,
    /// Log format: `text` or `json` (one object per line, access logs included).
    #[arg(long, env = "WEFT_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// The node-agent socket through which pods are enrolled.
    #[arg(
        long,
        env = "WEFT_NODE_AGENT_SOCKET",
        default_value = "/var/run/weft/ztunnel.sock"
    )]
    pub node_agent_socket: PathBuf,
    /// The mesh's SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
}
