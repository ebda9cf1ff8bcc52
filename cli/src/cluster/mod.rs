//! `weft` against a Kubernetes cluster: kubeconfig and contexts as kubectl
//! finds them (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`, then a pod's
//! service account).

pub mod enroll;
pub mod install;
pub mod manifests;
pub mod node_cleanup;
pub mod waypoints;
pub mod ztunnels;

use std::path::PathBuf;

use clap::Args;
use weft_control::source::KubeConnection;

/// Which cluster.
#[derive(Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// The kubeconfig file (default: as kubectl finds it).
    #[arg(long, env = "KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
}

impl ClusterArgs {
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(KubeConnection {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
        .client()
        .await?)
    }
}
