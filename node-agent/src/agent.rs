//! The node agent: it answers the CNI plugin, decides with the API server
//! whether a pod is in the mesh, and hands enrolled pods to ztunnel over
//! ZDS, answering ADD only once ztunnel has acked.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{Api, Client};
use weft_zds::{
    agent::{Agent, AgentError, AgentPod},
    messages::Workload,
};

use crate::{
    enrollment::{decide, REDIRECTION_ENABLED},
    plugin_api::{PluginAnswer, PluginRequest},
};

/// A pod sandbox the agent handed to ztunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Sandbox {
    uid: String,
    namespace: String,
    name: String,
}

pub struct NodeAgent {
    zds: Agent,
    kube: Client,
    /// Captured sandboxes, by container id.
    sandboxes: Mutex<BTreeMap<String, Sandbox>>,
}

fn failed(message: String, retry: bool) -> PluginAnswer {
    PluginAnswer::Failed { message, retry }
}

impl NodeAgent {
    pub fn new(zds: Agent, kube: Client) -> Arc<Self> {
        Arc::new(Self {
            zds,
            kube,
            sandboxes: Mutex::default(),
        })
    }

    pub fn zds(&self) -> &Agent {
        &self.zds
    }

    /// Starts serving ztunnel on the ZDS socket.
    pub fn listen(&self) -> std::io::Result<()> {
        self.zds.listen()
    }

    /// Answers one plugin request.
    pub async fn handle(&self, request: PluginRequest) -> PluginAnswer {
        match request {
            PluginRequest::Add {
                container_id,
                netns,
                namespace,
                name,
            } => self.add(container_id, &netns, namespace, name).await,
            PluginRequest::Del { container_id } => {
                let removed = self
                    .sandboxes
                    .lock()
                    .expect("sandboxes lock")
                    .remove(&container_id);
                if let Some(sandbox) = removed {
                    self.zds.remove(&sandbox.uid).await;
                    tracing::info!(pod = %format!("{}/{}", sandbox.namespace, sandbox.name), container = %container_id, "pod released (CNI DEL)");
                }
                PluginAnswer::Ok
            }
            PluginRequest::Check {
                container_id,
                namespace,
                name,
            } => {
                let sandbox = self
                    .sandboxes
                    .lock()
                    .expect("sandboxes lock")
                    .get(&container_id)
                    .cloned();
                match sandbox {
                    Some(sandbox) if !self.zds.pods().contains(&sandbox.uid) => failed(
                        format!("pod {namespace}/{name} is no longer held for ztunnel"),
                        true,
                    ),
                    _ => PluginAnswer::Ok,
                }
            }
            PluginRequest::Status => PluginAnswer::Ok,
            PluginRequest::Gc { valid } => {
                let stale: Vec<(String, Sandbox)> = self
                    .sandboxes
                    .lock()
                    .expect("sandboxes lock")
                    .iter()
                    .filter(|(id, _)| !valid.contains(id))
                    .map(|(id, s)| (id.clone(), s.clone()))
                    .collect();
                for (id, sandbox) in stale {
                    self.sandboxes.lock().expect("sandboxes lock").remove(&id);
                    self.zds.remove(&sandbox.uid).await;
                    tracing::info!(pod = %format!("{}/{}", sandbox.namespace, sandbox.name), container = %id, "stale sandbox released (CNI GC)");
                }
                PluginAnswer::Ok
            }
        }
    }

    async fn add(
        &self,
        container_id: String,
        netns: &str,
        namespace: String,
        name: String,
    ) -> PluginAnswer {
        let qualified = format!("{namespace}/{name}");
        let pods: Api<Pod> = Api::namespaced(self.kube.clone(), &namespace);
        let pod = match pods.get_opt(&name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => {
                return failed(format!("pod {qualified} is not in the API server"), true);
            }
            Err(err) => {
                return failed(
                    format!("reading pod {qualified} from the API server: {err}"),
                    true,
                )
            }
        };
        let namespaces: Api<Namespace> = Api::all(self.kube.clone());
        let ns = match namespaces.get_opt(&namespace).await {
            Ok(ns) => ns,
            Err(err) => {
                return failed(
                    format!("reading namespace {namespace} from the API server: {err}"),
                    true,
                )
            }
        };
        let enrolled = match decide(&pod, ns.as_ref()) {
            Ok(Some(enrolled)) => enrolled,
            Ok(None) => return PluginAnswer::Outside,
            Err(err) => return failed(format!("pod {qualified}: {err}"), true),
        };
        let netns_file = match std::fs::File::open(netns) {
            Ok(file) => file,
            Err(err) => {
                return failed(
                    format!("pod {qualified}: opening its network namespace {netns}: {err}"),
                    true,
                )
            }
        };
        let uid = enrolled.uid.clone();
        let handed = self
            .zds
            .add(AgentPod {
                workload: Workload {
                    uid: uid.clone(),
                    name: name.clone(),
                    namespace: namespace.clone(),
                    service_account: enrolled.service_account,
                },
                netns: Arc::new(netns_file.into()),
            })
            .await;
        match handed {
            Ok(()) => {}
            Err(AgentError::NoZtunnel { socket }) => {
                // The runtime retries with a fresh sandbox; this one's
                // namespace must not linger for the next snapshot.
                self.zds.remove(&uid).await;
                return failed(
                    format!(
                        "pod {qualified} is in the mesh but no ztunnel is connected to the node \
                         agent (ZDS socket {socket}); it starts once ztunnel is up"
                    ),
                    true,
                );
            }
            Err(err @ AgentError::Refused { .. }) => {
                return failed(format!("pod {qualified}: {err}"), false)
            }
        }
        self.sandboxes.lock().expect("sandboxes lock").insert(
            container_id.clone(),
            Sandbox {
                uid,
                namespace: namespace.clone(),
                name: name.clone(),
            },
        );
        tracing::info!(pod = %qualified, container = %container_id, "pod captured (CNI ADD)");
        self.annotate(&namespace, &name, Some(REDIRECTION_ENABLED))
            .await;
        PluginAnswer::Captured
    }

    pub(crate) fn kube(&self) -> &Client {
        &self.kube
    }

    /// Drops the sandboxes recorded for pod `uid` (it left the mesh).
    pub(crate) fn forget_sandboxes_of(&self, uid: &str) {
        self.sandboxes
            .lock()
            .expect("sandboxes lock")
            .retain(|_, s| s.uid != uid);
    }
}
