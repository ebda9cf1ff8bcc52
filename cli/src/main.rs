//! `weft`, the user's command: `weft install`, `weft enroll` and friends
//! against a cluster, and `weft local`, which runs a whole mesh on this
//! machine; the control service and ztunnel are built in
//! (`weft control …`, `weft ztunnel …`) so one binary is all local mode
//! needs.

mod cluster;
mod inspect;
mod local;
mod waypoint;
mod waypoint_config;

use std::{ffi::OsString, path::PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weft", version, about = "Weft: an ambient service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install Weft on a cluster (server-side apply of its manifests, then
    /// wait until the control service and every ztunnel are ready).
    Install {
        /// Print the objects instead of applying them.
        #[arg(long)]
        dry_run: bool,
        /// Override a setting: hub=<registry>, tag=<tag>,
        /// control.replicas=<n>, ztunnel.surge=true|false.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Do not wait for readiness.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for readiness.
        #[arg(long, default_value = "300s", value_parser = parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
    },
    /// Remove what `weft install` made: ztunnel's eBPF capture on every
    /// node, then its objects (CRDs only with --purge).
    Uninstall {
        /// Also delete Weft's CRDs, and with them every policy stored
        /// under them.
        #[arg(long)]
        purge: bool,
        /// How long to wait for ztunnel to stop and the nodes' cleanup.
        #[arg(long, default_value = "300s", value_parser = parse_duration)]
        timeout: std::time::Duration,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
    },
    /// Enroll namespaces in the mesh (label istio.io/dataplane-mode=ambient).
    Enroll {
        #[arg(required = true)]
        namespaces: Vec<String>,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
    },
    /// Take namespaces out of the mesh (remove the label).
    Unenroll {
        #[arg(required = true)]
        namespaces: Vec<String>,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
    },
    /// A mesh on this machine: nodes and pods as network namespaces.
    Local {
        /// Where the local mesh keeps its state.
        #[arg(
            long,
            env = "WEFT_LOCAL_DIR",
            default_value = "/run/weft-local",
            global = true
        )]
        dir: PathBuf,
        #[command(subcommand)]
        command: local::LocalCommand,
    },
    /// What a ztunnel holds: workloads, services, policies, certificates or
    /// open connections (of the local mesh when one runs, else of the
    /// cluster's ztunnels, through port-forwards).
    ZtunnelConfig {
        kind: inspect::Kind,
        /// Only this node's ztunnel (certificates and connections default to
        /// every node's).
        #[arg(long)]
        node: Option<String>,
        #[arg(short = 'o', long, value_enum, default_value_t = inspect::Output::Table)]
        output: inspect::Output,
        #[arg(long, env = "WEFT_LOCAL_DIR", default_value = "/run/weft-local")]
        dir: PathBuf,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
    },
    /// The control service, each ztunnel, the enrolled namespaces and the
    /// waypoints (of the local mesh when one runs, else of the cluster).
    Status {
        #[arg(long, env = "WEFT_LOCAL_DIR", default_value = "/run/weft-local")]
        dir: PathBuf,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
    },
    /// Deploy and inspect waypoints: of the local mesh when one runs
    /// (`weft local up`), else of the cluster.
    Waypoint {
        #[command(subcommand)]
        command: waypoint::WaypointCommand,
        #[command(flatten)]
        cluster: cluster::ClusterArgs,
        #[arg(
            long,
            env = "WEFT_LOCAL_DIR",
            default_value = "/run/weft-local",
            global = true
        )]
        dir: PathBuf,
    },
    /// Run a waypoint (as the `waypoint` binary).
    #[command(hide = true, disable_help_flag = true)]
    WaypointProxy {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the control service (as `weft-control`).
    #[command(hide = true, disable_help_flag = true)]
    Control {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run ztunnel (as the `ztunnel` binary).
    #[command(hide = true, disable_help_flag = true)]
    Ztunnel {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run the Kubernetes node agent (as `weft-node-agent`).
    #[command(hide = true, disable_help_flag = true)]
    NodeAgent {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run a `weft local` node's node agent (started by `weft local up`).
    #[command(hide = true)]
    LocalNodeAgent {
        /// The ZDS socket to listen on.
        #[arg(long)]
        socket: PathBuf,
        /// The node's enrolled pods, written by the `weft local` commands.
        #[arg(long)]
        pods: PathBuf,
        /// Where to report what was handed over.
        #[arg(long)]
        report: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Install {
            dry_run,
            set,
            no_wait,
            timeout,
            cluster,
        } => block_on(cluster::install::install(
            &cluster, &set, dry_run, !no_wait, timeout,
        )),
        Command::Uninstall {
            purge,
            timeout,
            cluster,
        } => block_on(cluster::install::uninstall(&cluster, purge, timeout)),
        Command::Enroll {
            namespaces,
            cluster,
        } => block_on(cluster::enroll::set(&cluster, &namespaces, true)),
        Command::Unenroll {
            namespaces,
            cluster,
        } => block_on(cluster::enroll::set(&cluster, &namespaces, false)),
        Command::Local { dir, command } => {
            let code = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(local::run(dir, command))?;
            std::process::exit(code);
        }
        Command::ZtunnelConfig {
            kind,
            node,
            output,
            dir,
            cluster,
        } => block_on(async {
            let ztunnels = inspect::Ztunnels::open(&local::Paths::new(dir), &cluster).await?;
            inspect::ztunnel_config(&ztunnels, kind, node.as_deref(), output).await
        }),
        Command::Status { dir, cluster } => {
            let paths = local::Paths::new(dir);
            if paths.state().exists() {
                block_on(inspect::status(&paths))
            } else {
                block_on(inspect::cluster_status(&cluster))
            }
        }
        Command::Control { args } => weft_control::app::main_from(
            std::iter::once(OsString::from("weft-control")).chain(args),
        ),
        Command::Waypoint {
            command,
            cluster,
            dir,
        } => {
            let paths = local::Paths::new(dir);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            if paths.state().exists() {
                runtime.block_on(waypoint::run(&paths, command))
            } else {
                runtime.block_on(cluster::waypoints::run(&cluster, &paths.root, command))
            }
        }
        Command::WaypointProxy { args } => waypoint::proxy_main(args),
        Command::LocalNodeAgent {
            socket,
            pods,
            report,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_ansi(false)
                .init();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(local::agent::run(&socket, &pods, &report))
        }
        Command::NodeAgent { args } => weft_node_agent::app::main_from(
            std::iter::once(OsString::from("weft-node-agent")).chain(args),
        ),
        Command::Ztunnel { args } => {
            ztunnel::app::main_from(std::iter::once(OsString::from("ztunnel")).chain(args))
        }
    }
}

/// A Gateway API duration (`90s`, `5m`, `1m30s`).
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    weft_control::source::yaml::parse_duration_ms(text).map(std::time::Duration::from_millis)
}

fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(future: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(future)
}
