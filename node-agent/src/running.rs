//! Pods already running on the node: enrolled and released as their labels
//! (or their namespace's) change, with no restart, and adopted again when
//! the agent itself restarts. Their network namespaces are found through
//! the node's `/proc`: a process whose cgroup path names the pod's uid, as
//! kubelet's cgroupfs driver (`…/pod<uid>/…`) and systemd driver
//! (`…-pod<uid with _>.slice/…`) write it.

use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    api::{Patch, PatchParams},
    runtime::{reflector, watcher, WatchStreamExt},
    Api, Client,
};
use weft_zds::{
    agent::{AgentError, AgentPod},
    messages::Workload,
};

use crate::{
    agent::NodeAgent,
    enrollment::{decide, REDIRECTION_ANNOTATION, REDIRECTION_ENABLED},
};

/// Whether a cgroup path (one line of `/proc/<pid>/cgroup`, or its path
/// part) belongs to the pod with `uid`, under either kubelet driver.
pub fn cgroup_names_pod(path: &str, uid: &str) -> bool {
    let cgroupfs = format!("pod{uid}");
    let systemd = format!("pod{}", uid.replace('-', "_"));
    path.split('/').any(|segment| {
        segment == cgroupfs
            || segment
                .strip_suffix(".slice")
                .is_some_and(|slice| slice.ends_with(&systemd))
    })
}

/// The network namespace of the running pod `uid`, as
/// `<proc>/<pid>/ns/net` of one of its processes; `None` when none runs or
/// it shares the node's namespace (host network: nothing to capture). The
/// node's namespace is the agent's own: it runs with the host's network.
pub fn find_netns(proc_root: &Path, uid: &str) -> std::io::Result<Option<PathBuf>> {
    let node_netns = std::fs::metadata("/proc/self/ns/net")?.ino();
    for entry in std::fs::read_dir(proc_root)?.filter_map(Result::ok) {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Processes come and go while the directory is read.
        let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        let ours = cgroups
            .lines()
            .filter_map(|line| line.splitn(3, ':').nth(2))
            .any(|path| cgroup_names_pod(path, uid));
        if !ours {
            continue;
        }
        let netns = entry.path().join("ns/net");
        match std::fs::metadata(&netns) {
            Ok(meta) if meta.ino() != node_netns => return Ok(Some(netns)),
            Ok(_) => return Ok(None),
            Err(_) => continue,
        }
    }
    Ok(None)
}

/// What the reconciler reads.
struct Stores {
    pods: reflector::Store<Pod>,
    namespaces: reflector::Store<Namespace>,
}

impl NodeAgent {
    /// Brings the pods handed to ztunnel in line with the running pods
    /// that are in the mesh: adopts the missing ones (their namespaces from
    /// `proc_root`), releases those no longer in the mesh. Pods not yet
    /// running are the CNI plugin's.
    async fn reconcile_running(&self, stores: &Stores, proc_root: &Path) {
        let namespaces: BTreeMap<String, Arc<Namespace>> = stores
            .namespaces
            .state()
            .into_iter()
            .filter_map(|ns| Some((ns.metadata.name.clone()?, ns)))
            .collect();
        let held: BTreeSet<String> = self.zds().pods().into_iter().collect();
        for pod in stores.pods.state() {
            let status = pod.status.clone().unwrap_or_default();
            let host_network = pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false);
            if status.phase.as_deref() != Some("Running") || host_network {
                continue;
            }
            let (Some(namespace), Some(name), Some(uid)) = (
                pod.metadata.namespace.clone(),
                pod.metadata.name.clone(),
                pod.metadata.uid.clone(),
            ) else {
                continue;
            };
            let enrolled = match decide(&pod, namespaces.get(&namespace).map(|n| &**n)) {
                Ok(enrolled) => enrolled,
                Err(err) => {
                    tracing::warn!(pod = %format!("{namespace}/{name}"), %err, "cannot tell whether the pod is in the mesh");
                    continue;
                }
            };
            match (enrolled, held.contains(&uid)) {
                (Some(enrolled), false) => {
                    self.adopt(
                        &namespace,
                        &name,
                        &uid,
                        &enrolled.service_account,
                        proc_root,
                    )
                    .await
                }
                (None, true) => self.release(&namespace, &name, &uid).await,
                _ => {}
            }
        }
        // Held pods the store does not have: deleted while the CNI DEL did
        // not reach us, or just added by an ADD that outran the watch. The
        // API server itself tells which: only a pod it no longer has (under
        // that uid) is released, so a pod captured a moment ago never is.
        let known: BTreeSet<String> = stores
            .pods
            .state()
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        for uid in held.difference(&known) {
            let Some(workload) = self.zds().workload(uid) else {
                continue;
            };
            let pods: Api<Pod> = Api::namespaced(self.kube().clone(), &workload.namespace);
            let gone = match pods.get_opt(&workload.name).await {
                Ok(None) => true,
                Ok(Some(pod)) => pod.metadata.uid.as_deref() != Some(uid.as_str()),
                Err(err) => {
                    tracing::warn!(pod = %format!("{}/{}", workload.namespace, workload.name), %err, "cannot tell whether a held pod still exists");
                    false
                }
            };
            if gone {
                self.zds().remove(uid).await;
                self.forget_sandboxes_of(uid);
                tracing::info!(pod = %format!("{}/{}", workload.namespace, workload.name), "released a pod that is gone from the API server");
            }
        }
    }

    async fn adopt(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        service_account: &str,
        proc_root: &Path,
    ) {
        let qualified = format!("{namespace}/{name}");
        let netns = match find_netns(proc_root, uid) {
            Ok(Some(path)) => path,
            Ok(None) => {
                tracing::warn!(pod = %qualified, "in the mesh and running, but no process of it is found in /proc; not captured yet");
                return;
            }
            Err(err) => {
                tracing::warn!(pod = %qualified, %err, "reading /proc");
                return;
            }
        };
        let file = match std::fs::File::open(&netns) {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!(pod = %qualified, netns = %netns.display(), %err, "opening its network namespace");
                return;
            }
        };
        let handed = self
            .zds()
            .add(AgentPod {
                workload: Workload {
                    uid: uid.to_owned(),
                    name: name.to_owned(),
                    namespace: namespace.to_owned(),
                    service_account: service_account.to_owned(),
                },
                netns: Arc::new(file.into()),
            })
            .await;
        match handed {
            // Held for ztunnel's next snapshot when none is connected.
            Ok(()) | Err(AgentError::NoZtunnel { .. }) => {
                tracing::info!(pod = %qualified, "running pod enrolled");
                self.annotate(namespace, name, Some(REDIRECTION_ENABLED))
                    .await;
            }
            Err(err) => tracing::warn!(pod = %qualified, %err, "ztunnel refused a running pod"),
        }
    }

    async fn release(&self, namespace: &str, name: &str, uid: &str) {
        self.zds().remove(uid).await;
        self.forget_sandboxes_of(uid);
        tracing::info!(pod = %format!("{namespace}/{name}"), "pod left the mesh; released");
        self.annotate(namespace, name, None).await;
    }

    /// Sets (or with `None` removes) the pod's redirection annotation,
    /// through `pods/status`.
    pub(crate) async fn annotate(&self, namespace: &str, name: &str, value: Option<&str>) {
        let pods: Api<Pod> = Api::namespaced(self.kube().clone(), namespace);
        let patch = serde_json::json!({
            "metadata": {"annotations": {REDIRECTION_ANNOTATION: value}}
        });
        if let Err(err) = pods
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::warn!(pod = %format!("{namespace}/{name}"), %err, "could not record the redirection annotation");
        }
    }
}

/// Watches the node's pods and every namespace, and reconciles after each
/// change (and every `resync`); the first reconcile is done before this
/// returns its task, so a restarted agent holds its running pods before
/// ztunnel asks for a snapshot.
pub async fn start(
    agent: Arc<NodeAgent>,
    client: Client,
    node: &str,
    proc_root: PathBuf,
    resync: Duration,
) -> tokio::task::JoinHandle<()> {
    let (pods, pods_writer) = reflector::store();
    let (namespaces, namespaces_writer) = reflector::store();
    let pod_events = reflector(
        pods_writer,
        watcher(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        ),
    )
    .default_backoff()
    .touched_objects()
    .map(|_| ());
    let namespace_events = reflector(
        namespaces_writer,
        watcher(Api::<Namespace>::all(client), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .map(|_| ());
    // The watchers run on their own, each change a nudge to reconcile.
    let changed = Arc::new(tokio::sync::Notify::new());
    let watchers: Vec<tokio::task::JoinHandle<()>> = [pod_events.boxed(), namespace_events.boxed()]
        .into_iter()
        .map(|events| {
            let changed = changed.clone();
            tokio::spawn(events.for_each(move |()| {
                changed.notify_one();
                futures::future::ready(())
            }))
        })
        .collect();
    let stores = Stores { pods, namespaces };
    // Both lists, before the first decision.
    let listed = tokio::time::timeout(Duration::from_secs(30), async {
        let (pods, namespaces) = tokio::join!(
            stores.pods.wait_until_ready(),
            stores.namespaces.wait_until_ready()
        );
        pods.is_ok() && namespaces.is_ok()
    })
    .await;
    if listed != Ok(true) {
        tracing::warn!(
            "the node's pods could not be listed in 30 s; running pods are adopted once they are"
        );
    }
    agent.reconcile_running(&stores, &proc_root).await;
    tokio::spawn(async move {
        let _watchers = AbortOnDrop(watchers);
        loop {
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(resync) => {}
            }
            // Let a burst of changes settle into one pass.
            tokio::time::sleep(Duration::from_millis(100)).await;
            agent.reconcile_running(&stores, &proc_root).await;
        }
    })
}

/// Stops the watchers with the loop that reads their stores.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_of_both_drivers() {
        let uid = "3f1a2b3c-0d4e-4f50-8a6b-7c8d9e0f1a2b";
        let cases = [
            // cgroupfs driver, v2 and v1 style
            (
                "/kubepods/besteffort/pod3f1a2b3c-0d4e-4f50-8a6b-7c8d9e0f1a2b/0123abcd",
                true,
            ),
            (
                "/kubepods/pod3f1a2b3c-0d4e-4f50-8a6b-7c8d9e0f1a2b/0123abcd",
                true,
            ),
            // systemd driver
            (
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3f1a2b3c_0d4e_4f50_8a6b_7c8d9e0f1a2b.slice/cri-containerd-0123.scope",
                true,
            ),
            (
                "/kubepods.slice/kubepods-pod3f1a2b3c_0d4e_4f50_8a6b_7c8d9e0f1a2b.slice",
                true,
            ),
            // another pod, a prefix of the uid, the uid elsewhere
            (
                "/kubepods/besteffort/pod3f1a2b3c-0d4e-4f50-8a6b-7c8d9e0f1a2c/x",
                false,
            ),
            ("/kubepods/besteffort/pod3f1a2b3c/x", false),
            ("/user.slice/3f1a2b3c-0d4e-4f50-8a6b-7c8d9e0f1a2b", false),
            ("/", false),
        ];
        for (path, expected) in cases {
            assert_eq!(cgroup_names_pod(path, uid), expected, "{path}");
        }
    }
}
