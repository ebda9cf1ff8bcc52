//! Running the control service as a program: flags, logging, signals.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{config::ControlConfig, server::Control};
use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "weft-control",
    version,
    about = "Weft's control service: xDS and certificates for the mesh"
)]
struct Args {
    /// Directory of Kubernetes-style YAML to serve (watched for changes).
    #[arg(
        long,
        env = "WEFT_CONFIG_DIR",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    config_dir: Option<PathBuf>,
    /// Read the mesh from a Kubernetes API server (kubeconfig as kubectl
    /// finds it, or the pod's service account).
    #[arg(long, env = "WEFT_KUBERNETES")]
    kubernetes: bool,
    /// With --kubernetes: the kubeconfig file.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// With --kubernetes: the kubeconfig context.
    #[arg(long, requires = "kubernetes")]
    context: Option<String>,
    /// With --kubernetes: the audience of the service-account tokens
    /// proxies present.
    #[arg(
        long,
        env = "WEFT_CA_AUDIENCE",
        default_value = "istio-ca",
        requires = "kubernetes"
    )]
    ca_audience: String,
    /// With --kubernetes: a service account (`namespace/name`) ztunnel runs
    /// as; repeat for more (default: weft-system/ztunnel and
    /// istio-system/ztunnel).
    #[arg(long = "ztunnel-service-account", requires = "kubernetes")]
    ztunnel_service_accounts: Vec<String>,
    /// With --kubernetes: the namespace of the leader Lease (default: the
    /// pod's own, else weft-system).
    #[arg(long, requires = "kubernetes")]
    lease_namespace: Option<String>,
    /// With --kubernetes: the image of waypoint Deployments.
    #[arg(long, env = "WEFT_WAYPOINT_IMAGE")]
    waypoint_image: Option<String>,
    /// With --kubernetes: the control service's address as waypoint pods
    /// reach it.
    #[arg(long, env = "WEFT_WAYPOINT_CONTROL_ADDRESS")]
    waypoint_control_address: Option<String>,
    /// With --kubernetes: how long the leader's Lease lasts unrenewed.
    #[arg(long, default_value_t = 15, requires = "kubernetes")]
    lease_duration_secs: u64,
    /// Directory for the CA root and node credentials.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    state_dir: PathBuf,
    /// gRPC (TLS) listen address for xDS and the CA.
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:15012")]
    listen: SocketAddr,
    /// SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of workload certificates, in seconds.
    #[arg(long, env = "WEFT_CERT_LIFETIME_SECS", default_value_t = 24 * 3600)]
    cert_lifetime_secs: u64,
    /// Extra DNS names for the serving certificate.
    #[arg(long = "server-name")]
    server_names: Vec<String>,
}

/// The binary's entry point.
pub fn main() -> anyhow::Result<()> {
    main_from(std::env::args_os())
}

/// Runs the control service with `args` (the first is the program name).
#[tokio::main]
pub async fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // Colour only on a terminal: log files stay greppable.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse_from(args);
    let mut config = match args.config_dir {
        Some(dir) => ControlConfig::new(dir, &args.state_dir),
        None => ControlConfig::kubernetes(
            crate::source::KubeConnection {
                kubeconfig: args.kubeconfig,
                context: args.context,
            },
            &args.state_dir,
        ),
    };
    config.listen = args.listen;
    config.token_review.audience = args.ca_audience;
    if let Some(image) = args.waypoint_image {
        config.waypoint.image = image;
    }
    if let Some(address) = args.waypoint_control_address {
        config.waypoint.control_address = address;
    }
    if let Some(namespace) = args.lease_namespace {
        config.lease.namespace = namespace;
    }
    anyhow::ensure!(
        args.lease_duration_secs >= 2,
        "--lease-duration-secs must be at least 2"
    );
    config.lease.duration = Duration::from_secs(args.lease_duration_secs);
    config.lease.retry = config.lease.retry.min(config.lease.duration / 3);
    if !args.ztunnel_service_accounts.is_empty() {
        for account in &args.ztunnel_service_accounts {
            anyhow::ensure!(
                account
                    .split_once('/')
                    .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty()),
                "--ztunnel-service-account {account:?} is not namespace/name"
            );
        }
        config.token_review.ztunnel_accounts = args.ztunnel_service_accounts;
    }
    config.mesh.trust_domain = args.trust_domain;
    config.cert_lifetime = Duration::from_secs(args.cert_lifetime_secs);
    anyhow::ensure!(
        config.cert_lifetime >= crate::ca::authority::MIN_LIFETIME,
        "--cert-lifetime-secs {} is below the minimum of {}s: proxies renew at half-life and \
         would renew without pause",
        args.cert_lifetime_secs,
        crate::ca::authority::MIN_LIFETIME.as_secs()
    );
    if config.cert_lifetime < Duration::from_secs(600) {
        tracing::warn!(
            lifetime_secs = args.cert_lifetime_secs,
            "workload certificates live under ten minutes; meant for tests, not production"
        );
    }
    config.server_names = args.server_names;
    let control = Control::start(config)
        .await
        .context("starting the control service")?;
    println!("weft-control listening on {}", control.addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    control.shutdown();
    Ok(())
}
