//! ztunnel's configuration: flags or environment, parsed once at start.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

use crate::capture::CaptureMode;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "ztunnel",
    version,
    about = "Weft's node proxy",
    after_help = "`ztunnel uninstall` removes the pinned eBPF capture from a node."
)]
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
    /// The node agent's ZDS socket, to which ztunnel connects to be handed
    /// the node's pods (Istio's path by default, so either node agent
    /// drives either ztunnel).
    #[arg(
        long,
        env = "WEFT_NODE_AGENT_SOCKET",
        default_value = weft_zds::DEFAULT_SOCKET
    )]
    pub node_agent_socket: PathBuf,
    /// Besides root, the uid whose node agent may enroll pods (the owner of
    /// the agent's listening socket, checked with SO_PEERCRED).
    #[arg(long, env = "WEFT_NODE_AGENT_UID")]
    pub node_agent_uid: Option<u32>,
    /// The mesh's SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// How enrolled pods' traffic is captured: `auto` (eBPF where the
    /// kernel has every hook, else iptables), `ebpf` or `iptables`.
    #[arg(long, env = "WEFT_CAPTURE", value_enum, default_value = "auto")]
    pub capture: CaptureMode,
    /// The cgroup v2 directory holding this node's pods (under it, eBPF
    /// capture attaches once for all of them).
    #[arg(long, env = "WEFT_PODS_CGROUP")]
    pub pods_cgroup: Option<PathBuf>,
    /// Where eBPF programs, maps and links are pinned (on bpffs); a
    /// restarted ztunnel adopts what it finds there.
    #[arg(long, env = "WEFT_BPF_PIN_DIR", default_value = "/sys/fs/bpf/weft")]
    pub bpf_pin_dir: PathBuf,
    /// Ports capture leaves alone in both directions (kubelet probes, for
    /// instance), comma-separated.
    #[arg(long, env = "WEFT_CAPTURE_EXCLUDE_PORTS", value_delimiter = ',')]
    pub capture_exclude_ports: Vec<u16>,
    /// Join the two sockets of a same-node connection inside the kernel
    /// (`splice(2)`) once it is authorized; `false` copies through ztunnel.
    #[arg(long, env = "WEFT_SPLICE", default_value_t = true, action = clap::ArgAction::Set)]
    pub splice: bool,
    /// Report the eBPF programs' decisions (captured connects, inbound
    /// redirects and drops) in ztunnel's log, target `weft_ebpf`.
    #[arg(long, env = "WEFT_BPF_LOG", default_value_t = false, action = clap::ArgAction::Set)]
    pub bpf_log: bool,
    /// Connections one pod may hold in ztunnel at once (its outbound ones
    /// and the inbound ones to it); past it, new ones are refused so that no
    /// pod can starve the others. Capped at a quarter of the open-file limit.
    #[arg(long, env = "WEFT_MAX_CONNECTIONS_PER_POD", default_value_t = crate::proxy::DEFAULT_CONNECTIONS_PER_POD)]
    pub max_connections_per_pod: usize,
    /// On SIGTERM, how long open connections may run on after the in-pod
    /// listeners close (within the pod's termination grace period).
    #[arg(long, env = "WEFT_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,
}

/// `ztunnel uninstall`: removes what ztunnel leaves on a node on purpose so
/// that a restart can adopt it — the pinned eBPF programs, maps and links.
/// Run it once ztunnel is stopped for good; from then on the node's pods
/// are no longer captured.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ztunnel uninstall",
    about = "Remove ztunnel's pinned eBPF capture from this node (stop ztunnel first)"
)]
pub struct Uninstall {
    /// The pin directory ztunnel ran with.
    #[arg(long, env = "WEFT_BPF_PIN_DIR", default_value = "/sys/fs/bpf/weft")]
    pub bpf_pin_dir: PathBuf,
    /// Then keep running until SIGTERM or SIGINT (the container of a
    /// cleanup DaemonSet, whose pods must run to count as ready).
    #[arg(long)]
    pub hold: bool,
}
