//! `weft local`: a whole mesh on one Linux machine.
//!
//! Each node and each pod is a network namespace (pods also get a cgroup),
//! wired by the topology harness with Debian's CNI plugins; the control
//! service serves a directory of the user's YAML; one ztunnel runs per node.
//! `weft local` itself plays the parts Kubernetes would: it assigns pod IPs
//! and writes them back into the served YAML (as the API server records
//! `status.podIP`), enrolls pods with their node's ztunnel (as the CNI plugin
//! does), runs each container's command as a process of its pod, and gives
//! every pod a hosts file naming the services. Everything keeps running
//! between commands; `weft local down` removes it all.

pub mod agent;
mod commands;
mod config;
mod mesh;
mod paths;
mod runtime;
mod state;
pub mod waypoints;

use std::path::PathBuf;

use clap::Subcommand;

pub use commands::{apply_files, resync};
pub use config::{edit_served, from_text, identify, served};
pub use mesh::LocalMesh;
pub use paths::{Paths, CONTROL_ADDRESS};
pub use state::Lock;

#[derive(Subcommand)]
pub enum LocalCommand {
    /// Start a mesh from a directory (or file) of Kubernetes YAML; returns
    /// once the control service, every ztunnel and every pod are ready.
    Up {
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
    },
    /// Run a command inside a pod (its network, cgroup and hosts file).
    Exec {
        /// The pod, as namespace/name.
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Add or update the objects of a YAML file.
    Apply {
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
    },
    /// Remove the objects of a YAML file.
    Delete {
        #[arg(short = 'f', long = "filename")]
        path: PathBuf,
    },
    /// Show nodes, pods, services, the control service and the ztunnels.
    Status {
        /// `json` describes where everything is, for tools.
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Print a pod's output (or `control`, or `ztunnel/NODE`).
    Logs { pod: String },
    /// Stop everything and remove every namespace, cgroup and file.
    Down,
}

/// Runs a `weft local` command; returns the process exit code.
pub async fn run(dir: PathBuf, command: LocalCommand) -> anyhow::Result<i32> {
    let paths = Paths::new(dir);
    match command {
        LocalCommand::Up { path } => commands::up(&paths, &path).await.map(|()| 0),
        LocalCommand::Exec { pod, command } => commands::exec(&paths, &pod, &command),
        LocalCommand::Apply { path } => commands::apply(&paths, &path).await.map(|()| 0),
        LocalCommand::Delete { path } => commands::delete(&paths, &path).await.map(|()| 0),
        LocalCommand::Status { output } if output == "json" => {
            println!(
                "{}",
                serde_json::to_string_pretty(&LocalMesh::open(&paths)?.describe())?
            );
            Ok(0)
        }
        LocalCommand::Status { .. } => commands::status(&paths).await.map(|()| 0),
        LocalCommand::Logs { pod } => commands::logs(&paths, &pod).map(|()| 0),
        LocalCommand::Down => commands::down(&paths).map(|()| 0),
    }
}
