//! The mesh on a Kubernetes cluster, with the harness as every node's
//! kubelet and container runtime.
//!
//! The config's objects live in a real API server (etcd, kube-apiserver and
//! kube-controller-manager from [`ApiServer`]); the control service reads
//! them from there (`--kubernetes`). Each node runs the real node agent as
//! its DaemonSet would (in the node's network namespace, which stands for
//! the host's), which installs `weft-cni` into the node's CNI configuration
//! directory. The harness then does what kubelet and containerd do for
//! each pod: it creates the sandbox (network namespace and cgroup), runs
//! the node's conflist from its file (Debian's `bridge` and `host-local`,
//! then `weft-cni`), retries while ADD fails, starts the pod's command in a
//! cgroup named as kubelet names a pod's, and writes the pod's IP and
//! readiness to its status.
//!
//! The API server listens on this machine's loopback, which the cluster's
//! namespaces cannot reach; a forwarder in the control-plane namespace
//! makes it reachable from every node, at [`API_PORT`] and at the
//! `kubernetes` Service's address ([`KUBERNETES_SERVICE`], which the
//! server's certificate names).
//!
//! The node agents run as their pods would: as service account
//! `weft-system/weft-node-agent` with the RBAC that `deploy/` ships, its
//! token and CA at `/var/run/secrets/kubernetes.io/serviceaccount` (in a
//! mount namespace of the agent's own) and `KUBERNETES_SERVICE_HOST` set,
//! so the agent and the plugin credentials it writes are the in-cluster
//! ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::{
    kube::ApiServer,
    processes::{command_in, eventually, ControlProcess, Process},
    topology::{addressing::CONTROL_PLANE_IP, cni::NodeCniFiles, Pod, Topology},
};

/// The port the API server is reached on from the cluster's namespaces
/// (at [`CONTROL_PLANE_IP`]).
pub const API_PORT: u16 = 6443;

/// The `kubernetes` Service (the first address of the service range), where
/// pods reach the API server on port 443.
pub const KUBERNETES_SERVICE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 19, 0, 1);

/// The node agent's service account and RBAC, as shipped.
const NODE_AGENT_MANIFEST: &str = include_str!("../../../deploy/base/node-agent.yaml");

/// Runs the rest of its arguments as a pod sees its filesystem: a fresh
/// /run (with the node's /run/netns bound back in, as the agent's
/// DaemonSet mounts it) holding the service account's files. Arguments:
/// a directory to keep the machine's /run at, the service account's
/// files, then the command.
const AS_A_POD: &str = r#"set -e
host_run="$1"; account="$2"; shift 2
mount --rbind /run "$host_run"
mount -t tmpfs weft-pod-run /run
mkdir -p /run/netns /run/secrets/kubernetes.io/serviceaccount
mount --rbind "$host_run/netns" /run/netns
cp "$account"/token "$account"/ca.crt "$account"/namespace /run/secrets/kubernetes.io/serviceaccount/
exec "$@"
"#;

/// Where the node agent's binaries are.
#[derive(Clone, Copy, Debug)]
pub struct NodeBinaries<'a> {
    /// `weft-node-agent`.
    pub node_agent: &'a Path,
    /// `weft-cni`, which the agent installs on its node.
    pub cni: &'a Path,
}

/// The namespace and service account ztunnel runs as, whose tokens the
/// control service accepts as a node's.
const ZTUNNEL_NAMESPACE: &str = "istio-system";

/// How kubelet's cgroup driver names a pod's container cgroup.
#[derive(Clone, Copy, Debug)]
pub enum CgroupDriver {
    /// `kubepods/besteffort/pod<uid>/<container>`.
    Cgroupfs,
    /// `kubepods.slice/…/kubepods-besteffort-pod<uid with _>.slice/cri-containerd-<id>.scope`.
    Systemd,
}

/// Starts the pod's command (`sleep`, holding the sandbox) in `pod`'s
/// network namespace, inside a child cgroup of the pod's named as kubelet
/// names a container's, so the node agent finds the pod through `/proc`.
pub fn start_container(
    pod: &Pod,
    uid: &str,
    driver: CgroupDriver,
) -> anyhow::Result<tokio::process::Child> {
    let leaf = match driver {
        CgroupDriver::Systemd => pod
            .cgroup()
            .join("kubepods.slice/kubepods-besteffort.slice")
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ))
            .join("cri-containerd-c0.scope"),
        CgroupDriver::Cgroupfs => pod
            .cgroup()
            .join("kubepods/besteffort")
            .join(format!("pod{uid}"))
            .join("c0"),
    };
    std::fs::create_dir_all(&leaf).with_context(|| format!("creating {}", leaf.display()))?;
    let child = tokio::process::Command::from(pod.command("sleep")?)
        .arg("3600")
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().context("the container exited at once")?;
    std::fs::write(leaf.join("cgroup.procs"), pid.to_string())?;
    Ok(child)
}

/// One node's part of the cluster.
struct ClusterNode {
    zds_socket: PathBuf,
    plugin_socket: PathBuf,
    files: NodeCniFiles,
    /// The node agent's pod's service-account files, and its home.
    account: PathBuf,
    home: PathBuf,
    agent: Option<Process>,
}

/// An object of the config, by kind, namespace and name.
type ObjectKey = (String, String, String);

/// The API server and what runs around it for the mesh.
pub struct Cluster {
    pub api: ApiServer,
    /// The administrator's kubeconfig through the forwarder, for the
    /// cluster's processes.
    kubeconfig: PathBuf,
    forward: tokio::task::JoinHandle<()>,
    nodes: BTreeMap<String, ClusterNode>,
    binaries: (PathBuf, PathBuf),
    /// Each running pod's command.
    containers: BTreeMap<String, tokio::process::Child>,
    /// The config's objects other than pods, as last applied.
    applied: BTreeSet<ObjectKey>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

impl Cluster {
    /// Starts the API server, its forwarder, and gives each node's ztunnel
    /// a token the control service accepts (in `state_dir/nodes`); each
    /// node's pods are set up from CNI files under `dir` from now on.
    pub async fn start(
        topology: &mut Topology,
        dir: &Path,
        state_dir: &Path,
        binaries: NodeBinaries<'_>,
    ) -> anyhow::Result<Self> {
        let api = ApiServer::start_with_crds().await?;
        let forward = forward_api(topology, api.address()?)?;
        let kubeconfig = dir.join("cluster.kubeconfig");
        api.write_kubeconfig_via(
            &format!("https://{CONTROL_PLANE_IP}:{API_PORT}"),
            &kubeconfig,
        )?;
        std::fs::create_dir_all(state_dir.join("nodes"))?;
        // The node agent's service account and RBAC, as deploy/ has them.
        let mut rbac = vec![json!({"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": "weft-system"}})];
        rbac.extend(
            documents(NODE_AGENT_MANIFEST)?
                .into_iter()
                .filter(|d| d["kind"] != "DaemonSet"),
        );
        api.kubectl_ok(
            &["apply", "-f", "-"],
            Some(&json!({"apiVersion": "v1", "kind": "List", "items": rbac}).to_string()),
        )
        .await?;
        let mut nodes = BTreeMap::new();
        for node in topology.nodes() {
            let (name, ip) = (node.name().to_owned(), node.ip());
            let node_dir = dir.join(&name);
            let account = node_agent_account(&api, &name, &ip.to_string(), &node_dir).await?;
            let pod = format!("ztunnel-{name}");
            api.kubectl_ok(
                &["apply", "--server-side", "-f", "-"],
                Some(&format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ZTUNNEL_NAMESPACE}}}\n---\n\
                     apiVersion: v1\nkind: ServiceAccount\n\
                     metadata: {{name: ztunnel, namespace: {ZTUNNEL_NAMESPACE}}}\n---\n\
                     apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {ZTUNNEL_NAMESPACE}}}\n\
                     spec: {{nodeName: {name}, serviceAccountName: ztunnel, hostNetwork: true, \
                     automountServiceAccountToken: false, containers: [{{name: ztunnel, image: ztunnel}}]}}\n"
                )),
            )
            .await?;
            api.set_pod_running(ZTUNNEL_NAMESPACE, &pod, &ip.to_string())
                .await?;
            let token = api
                .token(ZTUNNEL_NAMESPACE, "ztunnel", "istio-ca", Some(&pod))
                .await?;
            std::fs::write(
                state_dir.join("nodes").join(format!("{name}.token")),
                token.trim(),
            )?;
            let files = NodeCniFiles {
                conf_dir: node_dir.join("net.d"),
                bin_dir: node_dir.join("bin"),
            };
            nodes.insert(
                name,
                ClusterNode {
                    zds_socket: node_dir.join("ztunnel.sock"),
                    plugin_socket: node_dir.join("cni.sock"),
                    files,
                    account,
                    home: node_dir.join("home"),
                    agent: None,
                },
            );
        }
        for (name, node) in &nodes {
            topology.use_cni_files(name, node.files.clone())?;
        }
        Ok(Self {
            api,
            kubeconfig,
            forward,
            nodes,
            binaries: (binaries.node_agent.to_owned(), binaries.cni.to_owned()),
            containers: BTreeMap::new(),
            applied: BTreeSet::new(),
        })
    }

    /// Starts the control service in the control-plane namespace, reading
    /// the cluster.
    pub async fn start_control(
        &self,
        bin: &Path,
        topology: &Topology,
        state_dir: &Path,
        flags: &[String],
    ) -> anyhow::Result<ControlProcess> {
        let netns = topology
            .control_plane()
            .context("the topology needs a control plane")?
            .name();
        ControlProcess::start_kubernetes_with(
            bin,
            Some(netns),
            &self.kubeconfig,
            state_dir,
            SocketAddr::from((CONTROL_PLANE_IP, 15012)),
            "default",
            flags,
        )
        .await
    }

    /// `node`'s CNI configuration files (what the runtime reads).
    pub fn cni_files(&self, node: &str) -> &NodeCniFiles {
        &self.node(node).files
    }

    /// The socket `node`'s node agent serves ZDS on.
    pub fn zds_socket(&self, node: &str) -> PathBuf {
        self.node(node).zds_socket.clone()
    }

    fn node(&self, node: &str) -> &ClusterNode {
        self.nodes
            .get(node)
            .unwrap_or_else(|| panic!("the cluster has no node {node}"))
    }

    /// Starts `node`'s node agent (again) as its DaemonSet runs it (in the
    /// node's network namespace, as its pod with its service account), and
    /// waits until `weft-cni` is chained in the node's conflist.
    pub async fn start_agent(&mut self, topology: &Topology, node: &str) -> anyhow::Result<()> {
        let (agent_bin, plugin_bin) = self.binaries.clone();
        let n = self
            .nodes
            .get_mut(node)
            .with_context(|| format!("the cluster has no node {node}"))?;
        let host_run = n.home.with_file_name("host-run");
        std::fs::create_dir_all(&host_run)?;
        std::fs::create_dir_all(&n.home)?;
        let mut cmd = command_in(
            Some(topology.node(node).netns().name()),
            Path::new("unshare"),
        )?;
        // Slave propagation: the namespaces the runtime creates later reach
        // the agent's /run/netns (mountPropagation: HostToContainer), and
        // nothing it mounts reaches the machine.
        cmd.args([
            "--mount",
            "--propagation",
            "slave",
            "sh",
            "-c",
            AS_A_POD,
            "sh",
        ])
        .arg(&host_run)
        .arg(&n.account)
        .arg(&agent_bin)
        .args(["--node-name", node, "--zds-socket"])
        .arg(&n.zds_socket)
        .arg("--plugin-socket")
        .arg(&n.plugin_socket)
        .arg("--cni-conf-dir")
        .arg(&n.files.conf_dir)
        .arg("--cni-bin-dir")
        .arg(&n.files.bin_dir)
        .arg("--cni-conf-host-dir")
        .arg(&n.files.conf_dir)
        .arg("--plugin-binary")
        .arg(&plugin_bin)
        .args(["--proc-root", "/proc"])
        .env_remove("KUBECONFIG")
        .env("HOME", &n.home)
        .env("KUBERNETES_SERVICE_HOST", KUBERNETES_SERVICE.to_string())
        .env("KUBERNETES_SERVICE_PORT", "443");
        let (agent, _) = Process::start(&format!("node agent {node}"), cmd, "zds=").await?;
        n.agent = Some(agent);
        self.wait_chained(node).await
    }

    /// Waits until `weft-cni` is chained in `node`'s conflist.
    pub async fn wait_chained(&self, node: &str) -> anyhow::Result<()> {
        let files = &self.node(node).files;
        eventually(
            &format!("weft-cni chained on {node}"),
            Duration::from_secs(20),
            || async {
                let list = files.read().ok()?;
                list["plugins"]
                    .as_array()?
                    .iter()
                    .any(|p| p["type"] == "weft-cni")
                    .then_some(())
            },
        )
        .await
    }

    /// SIGKILLs `node`'s node agent, as a crash would.
    pub async fn kill_agent(&mut self, node: &str) -> anyhow::Result<()> {
        if let Some(mut agent) = self.nodes.get_mut(node).and_then(|n| n.agent.take()) {
            agent.kill().await?;
        }
        Ok(())
    }

    /// `node`'s node agent process, while it runs.
    pub fn agent_process(&self, node: &str) -> Option<&Process> {
        self.node(node).agent.as_ref()
    }

    /// Applies the config's namespaces, the service accounts its pods name
    /// and its pods (without status, which the kubelet writes).
    pub async fn apply_pods(&self, template: &str) -> anyhow::Result<()> {
        let docs = documents(template)?;
        let mut objects: Vec<Value> = docs
            .iter()
            .filter(|d| d["kind"] == "Namespace")
            .cloned()
            .collect();
        let mut accounts = BTreeSet::new();
        let mut pods = Vec::new();
        for pod in docs.iter().filter(|d| d["kind"] == "Pod") {
            let pod = as_submitted(pod);
            let namespace = pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            let account = pod["spec"]["serviceAccountName"]
                .as_str()
                .unwrap_or("default")
                .to_owned();
            accounts.insert((namespace, account));
            pods.push(pod);
        }
        objects.extend(accounts.into_iter().map(|(namespace, name)| {
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": name, "namespace": namespace}})
        }));
        objects.extend(pods);
        self.apply(&objects).await
    }

    /// Applies every object of `config` (rendered) but pods, and deletes
    /// those of the previous config it no longer has, as replacing the
    /// directory's file does; pods declared by the config but run by no
    /// node get the status the config gives them.
    pub async fn apply_config(
        &mut self,
        config: &str,
        run: &BTreeSet<String>,
    ) -> anyhow::Result<()> {
        let docs = documents(config)?;
        let (pods, others): (Vec<&Value>, Vec<&Value>) =
            docs.iter().partition(|d| d["kind"] == "Pod");
        let objects: Vec<Value> = others.iter().map(|d| (*d).clone()).collect();
        self.apply(&objects).await?;
        let keys: BTreeSet<ObjectKey> = objects.iter().map(key).collect();
        for (kind, namespace, name) in self.applied.difference(&keys) {
            let mut args = vec!["delete", kind.as_str(), name.as_str(), "--ignore-not-found"];
            if !namespace.is_empty() {
                args.extend(["-n", namespace.as_str()]);
            }
            self.api.kubectl_ok(&args, None).await?;
        }
        self.applied = keys;
        // Pods run by the harness have their status from it; others (mere
        // entries in the config) from the config.
        for pod in pods {
            let (_, namespace, name) = key(pod);
            if run.contains(&format!("{namespace}/{name}")) || pod["status"].is_null() {
                continue;
            }
            self.api
                .patch_status(
                    "pod",
                    Some(&namespace),
                    &name,
                    &json!({"status": pod["status"]}),
                )
                .await?;
        }
        Ok(())
    }

    async fn apply(&self, objects: &[Value]) -> anyhow::Result<()> {
        if objects.is_empty() {
            return Ok(());
        }
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        // Client-side apply: 1.20's server-side apply refuses a Service port
        // without `protocol`, which users (and the YAML source) leave out.
        self.api
            .kubectl_ok(&["apply", "-f", "-"], Some(&list.to_string()))
            .await
            .map(drop)
    }

    /// Runs pod `qualified` on `node` as kubelet and containerd do: the
    /// sandbox through the node's conflist (ADD retried while it fails, as
    /// kubelet retries, for up to 30 s), then the pod's command, then its
    /// status (phase, IPs, readiness).
    pub async fn run_pod(
        &mut self,
        topology: &mut Topology,
        qualified: &str,
        node: &str,
    ) -> anyhow::Result<()> {
        let (namespace, name) = qualified
            .split_once('/')
            .with_context(|| format!("pod {qualified:?} must be namespace/name"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match topology.add_pod(qualified, node) {
                Ok(_) => break,
                Err(err) => {
                    // The failed sandbox is torn down (CNI DEL) before the
                    // next try, as kubelet does.
                    let _ = topology.remove_pod(qualified);
                    if tokio::time::Instant::now() > deadline {
                        return Err(anyhow::Error::from(err)
                            .context(format!("the sandbox of {qualified} never came up")));
                    }
                    tracing::info!(pod = qualified, %err, "sandbox failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let uid = self.uid(namespace, name).await?;
        let pod = topology.pod(qualified);
        let container = start_container(pod, &uid, CgroupDriver::Cgroupfs)?;
        self.containers.insert(qualified.to_owned(), container);
        let (ip, host) = (pod.ip().to_string(), topology.node(node).ip().to_string());
        let ready = |kind: &str| json!({"type": kind, "status": "True"});
        self.api
            .patch_status(
                "pod",
                Some(namespace),
                name,
                &json!({"status": {
                    "phase": "Running",
                    "podIP": ip,
                    "podIPs": [{"ip": ip}],
                    "hostIP": host,
                    "conditions": [
                        ready("PodScheduled"), ready("Initialized"),
                        ready("ContainersReady"), ready("Ready"),
                    ],
                }}),
            )
            .await
    }

    /// Stops pod `qualified`'s sandbox as a node going down does: its
    /// command killed, its network released (CNI DEL) and its namespace
    /// gone; the Pod object stays.
    pub fn stop_pod(&mut self, topology: &mut Topology, qualified: &str) -> anyhow::Result<()> {
        self.containers.remove(qualified);
        topology.remove_pod(qualified)?;
        Ok(())
    }

    /// The UID of pod `namespace/name`.
    pub async fn uid(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        let uid = self
            .api
            .kubectl_ok(
                &[
                    "get",
                    "pod",
                    "-n",
                    namespace,
                    name,
                    "-o",
                    "jsonpath={.metadata.uid}",
                ],
                None,
            )
            .await?;
        let uid = uid.trim();
        if uid.is_empty() {
            bail!("pod {namespace}/{name} has no UID");
        }
        Ok(uid.to_owned())
    }
}

/// Pod `weft-system/weft-node-agent-<node>` (running on `node`, whose
/// address is `ip`) and its service-account files in `node_dir`: a token
/// bound to the pod, the API server's CA, the namespace.
async fn node_agent_account(
    api: &ApiServer,
    node: &str,
    ip: &str,
    node_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let pod = format!("weft-node-agent-{node}");
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(
            &json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "weft-system"},
                "spec": {"nodeName": node, "serviceAccountName": "weft-node-agent",
                         "hostNetwork": true,
                         "containers": [{"name": "node-agent", "image": "weft/node-agent"}]}})
            .to_string(),
        ),
    )
    .await?;
    api.set_pod_running("weft-system", &pod, ip).await?;
    let token = api
        .token(
            "weft-system",
            "weft-node-agent",
            crate::kube::ISSUER,
            Some(&pod),
        )
        .await?;
    let account = node_dir.join("serviceaccount");
    std::fs::create_dir_all(&account)?;
    std::fs::write(account.join("token"), token.trim())?;
    std::fs::copy(&api.ca, account.join("ca.crt"))?;
    std::fs::write(account.join("namespace"), "weft-system")?;
    Ok(account)
}

/// Accepts in the control-plane namespace, at [`API_PORT`] and at the
/// `kubernetes` Service's address (routed there from every node), and
/// relays each connection to the API server on this machine's loopback.
fn forward_api(
    topology: &Topology,
    api: SocketAddr,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let netns = topology
        .control_plane()
        .context("the topology needs a control plane")?;
    netns.ip(&[
        "addr",
        "add",
        &format!("{KUBERNETES_SERVICE}/32"),
        "dev",
        "eth0",
    ])?;
    for node in topology.nodes() {
        node.netns().ip(&[
            "route",
            "add",
            &format!("{KUBERNETES_SERVICE}/32"),
            "via",
            &CONTROL_PLANE_IP.to_string(),
        ])?;
    }
    let mut listeners = Vec::new();
    for addr in [
        SocketAddr::from((CONTROL_PLANE_IP, API_PORT)),
        SocketAddr::from((KUBERNETES_SERVICE, 443)),
    ] {
        let listener = netns.enter(|| std::net::TcpListener::bind(addr))??;
        listener.set_nonblocking(true)?;
        listeners.push(tokio::net::TcpListener::from_std(listener)?);
    }
    Ok(tokio::spawn(async move {
        let relay = |listener: tokio::net::TcpListener| async move {
            while let Ok((mut inside, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outside) = tokio::net::TcpStream::connect(api).await {
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                    }
                });
            }
        };
        futures::future::join_all(listeners.into_iter().map(relay)).await;
    }))
}

/// The YAML documents of `text`, as JSON values (empty ones skipped).
fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).context("the mesh config is not YAML")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// A pod of the config as a user submits it: no status (the kubelet's), and
/// a container if the config names none (the YAML source needs none, the
/// API server does).
fn as_submitted(pod: &Value) -> Value {
    let mut pod = pod.clone();
    if let Some(object) = pod.as_object_mut() {
        object.remove("status");
    }
    if pod["spec"]["containers"].is_null() {
        pod["spec"]["containers"] = json!([{"name": "app", "image": "app"}]);
    }
    pod
}

fn key(object: &Value) -> ObjectKey {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        text(&object["kind"]),
        text(&object["metadata"]["namespace"]),
        text(&object["metadata"]["name"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_pod_is_submitted_without_status_and_with_a_container() {
        let docs = documents(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\n\
             spec: {nodeName: n1}\nstatus: {podIP: 198.18.1.2}\n---\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: n}\n\
             spec: {containers: [{name: c, image: i}]}\n",
        )
        .expect("YAML");
        assert_eq!(docs.len(), 2, "the empty document is skipped");
        let a = as_submitted(&docs[0]);
        assert!(a.get("status").is_none());
        assert_eq!(a["spec"]["nodeName"], "n1");
        assert_eq!(a["spec"]["containers"][0]["name"], "app");
        let b = as_submitted(&docs[1]);
        assert_eq!(b["spec"]["containers"][0]["name"], "c");
        assert_eq!(key(&b), ("Pod".into(), "n".into(), "b".into()));
    }
}
