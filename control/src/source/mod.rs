//! Where the control service's view of the mesh comes from.
//!
//! A source produces a [`ConfigSnapshot`]: every object it currently holds,
//! plus the documents it had to reject and why. [`local`] reads a directory
//! of Kubernetes-style YAML and watches it; [`kubernetes`] reads the same
//! objects from an API server. Both hand each document to the same parser
//! ([`yaml`]), so nothing after the source can tell them apart.

pub mod kubernetes;
pub mod local;
pub mod yaml;

use std::{collections::BTreeMap, fmt, path::PathBuf, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};

use crate::objects::{Object, ObjectKey};
pub use kubernetes::KubeConnection;
pub use yaml::DocumentError;

/// Where the control service reads the mesh from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceConfig {
    /// A directory of YAML, watched.
    Directory(PathBuf),
    /// A Kubernetes API server.
    Kubernetes(KubeConnection),
}

impl fmt::Display for SourceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceConfig::Directory(dir) => write!(f, "directory {}", dir.display()),
            SourceConfig::Kubernetes(KubeConnection {
                kubeconfig,
                context,
            }) => {
                f.write_str("Kubernetes API server")?;
                if let Some(path) = kubeconfig {
                    write!(f, " (kubeconfig {})", path.display())?;
                }
                if let Some(context) = context {
                    write!(f, " (context {context})")?;
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Local(#[from] local::LocalSourceError),
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::KubeSourceError),
}

/// A source that is running: its snapshots, and what keeps them coming
/// (stopped when this is dropped).
pub struct RunningSource {
    pub snapshots: watch::Receiver<Arc<ConfigSnapshot>>,
    running: Running,
}

impl RunningSource {
    /// The Kubernetes client, when the source is an API server.
    pub fn kube_client(&self) -> Option<&kube::Client> {
        match &self.running {
            Running::Kubernetes(source) => Some(&source.client),
            Running::Local(_) => None,
        }
    }
}

enum Running {
    Local(JoinHandle<()>),
    /// Held for its watchers, which stop when it is dropped.
    Kubernetes(kubernetes::KubeSource),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Local(task) = self {
            task.abort();
        }
    }
}

/// Starts reading `config`; returns once the first complete snapshot is in.
/// Changes are published after `debounce` of quiet.
pub async fn start(
    config: &SourceConfig,
    debounce: Duration,
) -> Result<RunningSource, SourceError> {
    match config {
        SourceConfig::Directory(dir) => {
            let mut source = local::LocalSource::new(dir);
            let (tx, snapshots) = watch::channel(Arc::new(source.load()?));
            let task = tokio::spawn(async move {
                if let Err(err) = source.watch(tx, debounce).await {
                    tracing::error!(%err, "config source stopped; serving the last snapshot");
                }
            });
            Ok(RunningSource {
                snapshots,
                running: Running::Local(task),
            })
        }
        SourceConfig::Kubernetes(connection) => {
            let client = connection.client().await?;
            let source = kubernetes::KubeSource::start(client, debounce).await;
            Ok(RunningSource {
                snapshots: source.snapshots.clone(),
                running: Running::Kubernetes(source),
            })
        }
    }
}

/// Everything a source holds at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigSnapshot {
    pub objects: BTreeMap<ObjectKey, Object>,
    /// Rejected documents (their last good version, if any, is in `objects`).
    pub errors: Vec<DocumentError>,
}

impl ConfigSnapshot {
    /// The objects of one kind, in key order.
    pub fn of_kind(&self, kind: crate::objects::Kind) -> impl Iterator<Item = &Object> {
        self.objects
            .iter()
            .filter(move |(key, _)| key.kind == kind)
            .map(|(_, object)| object)
    }
}
