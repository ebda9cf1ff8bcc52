//! A whole mesh on a [`Topology`] for end-to-end tests: the control service
//! in the control-plane namespace, a ztunnel in every node namespace, and
//! for each node a node agent (in this process) that hands pods to its
//! ztunnel over ZDS, as the cluster's node agent would.
//!
//! The config is Kubernetes YAML in which `${ns/pod}` stands for that pod's
//! IP (assigned by the CNI plugin when the topology was built).
//!
//! The same mesh also runs on a Kubernetes cluster ([`Source::Kubernetes`],
//! see [`cluster`]): the config's objects in a real API server, the real
//! node agent on every node, and the harness as kubelet and runtime, so a
//! test runs its scenario on either.

pub mod cluster;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use weft_control::auth::issue_node_token;
use weft_zds::{
    agent::{Agent, AgentError, AgentPod},
    messages::Workload,
};

use ztunnel::capture::CaptureMode;

use crate::{
    processes::{eventually, CaptureSetup, ControlProcess, WaypointProcess, ZtunnelProcess},
    topology::{addressing::CONTROL_PLANE_IP, PodNetworking, Topology, TopologyBuilder},
};

/// The binaries a mesh runs.
#[derive(Clone, Copy, Debug)]
pub struct Binaries<'a> {
    pub control: &'a Path,
    pub ztunnel: &'a Path,
}

pub struct Mesh {
    pub topology: Topology,
    /// The cluster, when the mesh runs on one ([`Source::Kubernetes`]).
    pub cluster: Option<cluster::Cluster>,
    pub dir: tempfile::TempDir,
    pub control: ControlProcess,
    pub ztunnels: BTreeMap<String, ZtunnelProcess>,
    /// Each node's node agent, which outlives its ztunnel's restarts (in
    /// this process; on a cluster they are processes of their own).
    agents: BTreeMap<String, Agent>,
    binaries: (std::path::PathBuf, std::path::PathBuf),
    control_flags: Vec<String>,
    capture: CaptureMode,
    splice: bool,
    bpf_log: bool,
    ztunnel_flags: Vec<String>,
}

/// How a mesh is started.
#[derive(Clone, Copy, Debug)]
pub struct MeshOptions<'a> {
    /// Extra flags for the control service.
    pub control_flags: &'a [&'a str],
    /// The ztunnels' capture mode: eBPF unless a test says otherwise (and
    /// never `auto`, so a missing kernel feature fails the test).
    pub capture: CaptureMode,
    /// Whether ztunnel splices same-node connections (`--splice`); on
    /// unless a test or benchmark compares.
    pub splice: bool,
    /// ztunnel's `--bpf-log`: the kernel programs' reports in its log.
    pub bpf_log: bool,
    /// More flags for every ztunnel.
    pub ztunnel_flags: &'a [&'a str],
    /// Where the config lives ([`Mesh::launch`]).
    pub source: Source<'a>,
}

/// Where a mesh's config lives, and so who hands pods to ztunnel.
#[derive(Clone, Copy, Debug, Default)]
pub enum Source<'a> {
    /// A YAML directory the control service reads; pods are enrolled by
    /// hand ([`Mesh::enroll`]) through a node agent in this process.
    #[default]
    Directory,
    /// A Kubernetes API server: the real node agent on every node enrolls
    /// pods from their labels when the harness, as kubelet, starts them.
    Kubernetes(cluster::NodeBinaries<'a>),
}

impl Default for MeshOptions<'_> {
    fn default() -> Self {
        Self {
            control_flags: &[],
            capture: CaptureMode::Ebpf,
            splice: true,
            bpf_log: false,
            ztunnel_flags: &[],
            source: Source::Directory,
        }
    }
}

/// The uid the harness gives pod `namespace/name` (the control service's
/// YAML source names pods the same way).
pub fn pod_uid(namespace: &str, name: &str) -> String {
    format!("Kubernetes//Pod/{namespace}/{name}")
}

/// Replaces `${ns/pod}` with the pod's IP.
pub fn render(topology: &Topology, template: &str) -> String {
    let mut out = template.to_owned();
    for pod in topology.pods() {
        out = out.replace(
            &format!("${{{}}}", pod.qualified_name()),
            &pod.ip().to_string(),
        );
    }
    out
}

impl Mesh {
    /// Builds the topology `builder` describes and starts the mesh on it
    /// from `options.source`: with [`Source::Directory`] as
    /// [`Mesh::start_with`]; with [`Source::Kubernetes`] the builder's pods
    /// are not created up front but run by the harness as kubelet, once
    /// their Pod objects exist and the node agents are up.
    pub async fn launch(
        builder: TopologyBuilder,
        config: &str,
        binaries: Binaries<'_>,
        options: MeshOptions<'_>,
    ) -> anyhow::Result<Self> {
        match options.source {
            Source::Directory => {
                Self::start_with(builder.build()?, config, binaries, options).await
            }
            Source::Kubernetes(node_binaries) => {
                Self::start_on_cluster(builder, config, binaries, node_binaries, options).await
            }
        }
    }

    async fn start_on_cluster(
        builder: TopologyBuilder,
        config: &str,
        binaries: Binaries<'_>,
        node_binaries: cluster::NodeBinaries<'_>,
        options: MeshOptions<'_>,
    ) -> anyhow::Result<Self> {
        let (builder, pods) = builder.networking(PodNetworking::Cni).without_pods();
        let mut topology = builder.build()?;
        let dir = tempfile::tempdir()?;
        let state_dir = dir.path().join("state");
        let cluster =
            cluster::Cluster::start(&mut topology, dir.path(), &state_dir, node_binaries).await?;
        let control_flags: Vec<String> = options
            .control_flags
            .iter()
            .map(|f| f.to_string())
            .collect();
        let control = cluster
            .start_control(binaries.control, &topology, &state_dir, &control_flags)
            .await?;
        cluster.apply_pods(config).await?;
        let nodes: Vec<String> = topology
            .nodes()
            .iter()
            .map(|n| n.name().to_owned())
            .collect();
        let mut mesh = Self::assemble(
            topology,
            Some(cluster),
            dir,
            control,
            binaries,
            control_flags,
            &options,
        );
        for node in &nodes {
            mesh.start_agent(node, &[]).await?;
            mesh.start_ztunnel(node).await?;
        }
        for node in &nodes {
            mesh.wait_ready(node).await?;
        }
        for (qualified, node) in &pods {
            mesh.run_pod(qualified, node).await?;
        }
        mesh.reconfigure(config).await?;
        for node in &nodes {
            mesh.wait_ready(node).await?;
        }
        Ok(mesh)
    }

    /// A mesh of these parts, no ztunnel started yet.
    fn assemble(
        topology: Topology,
        cluster: Option<cluster::Cluster>,
        dir: tempfile::TempDir,
        control: ControlProcess,
        binaries: Binaries<'_>,
        control_flags: Vec<String>,
        options: &MeshOptions<'_>,
    ) -> Self {
        Self {
            topology,
            cluster,
            dir,
            control,
            ztunnels: BTreeMap::new(),
            binaries: (binaries.control.to_owned(), binaries.ztunnel.to_owned()),
            control_flags,
            capture: options.capture,
            splice: options.splice,
            bpf_log: options.bpf_log,
            ztunnel_flags: options
                .ztunnel_flags
                .iter()
                .map(|f| f.to_string())
                .collect(),
            agents: BTreeMap::new(),
        }
    }

    /// The cluster the mesh runs on; panics on a directory mesh.
    pub fn cluster(&mut self) -> &mut cluster::Cluster {
        self.cluster
            .as_mut()
            .expect("this mesh reads a YAML directory, not a cluster")
    }

    /// Runs pod `qualified` on `node`, as kubelet does (cluster meshes).
    pub async fn run_pod(&mut self, qualified: &str, node: &str) -> anyhow::Result<()> {
        let cluster = self
            .cluster
            .as_mut()
            .context("only a cluster mesh runs pods")?;
        cluster.run_pod(&mut self.topology, qualified, node).await
    }

    /// Stops pod `qualified`'s sandbox as a node going down does (cluster
    /// meshes): its command killed, CNI DEL, its namespace gone; the Pod
    /// object stays, to be run again ([`Mesh::run_pod`]).
    pub fn stop_pod(&mut self, qualified: &str) -> anyhow::Result<()> {
        let cluster = self
            .cluster
            .as_mut()
            .context("only a cluster mesh runs pods")?;
        cluster.stop_pod(&mut self.topology, qualified)
    }

    /// Replaces the mesh's config (rendered as at start): the directory's
    /// file, or the cluster's objects (those gone from it are deleted).
    pub async fn reconfigure(&mut self, config: &str) -> anyhow::Result<()> {
        match &mut self.cluster {
            None => self.update_config(config),
            Some(cluster) => {
                let run: BTreeSet<String> = self
                    .topology
                    .pods()
                    .iter()
                    .map(|p| p.qualified_name())
                    .collect();
                cluster
                    .apply_config(&render(&self.topology, config), &run)
                    .await
            }
        }
    }

    /// Starts the control service (serving `config`, rendered) and one
    /// ztunnel per node, and waits until every ztunnel is ready.
    pub async fn start(
        topology: Topology,
        config: &str,
        binaries: Binaries<'_>,
    ) -> anyhow::Result<Self> {
        Self::start_with(topology, config, binaries, MeshOptions::default()).await
    }

    /// As [`Mesh::start`], with options.
    pub async fn start_with(
        topology: Topology,
        config: &str,
        binaries: Binaries<'_>,
        options: MeshOptions<'_>,
    ) -> anyhow::Result<Self> {
        let control_flags: Vec<String> = options
            .control_flags
            .iter()
            .map(|f| f.to_string())
            .collect();
        let dir = tempfile::tempdir()?;
        let (config_dir, state_dir) = (dir.path().join("config"), dir.path().join("state"));
        std::fs::create_dir_all(&config_dir)?;
        std::fs::write(config_dir.join("mesh.yaml"), render(&topology, config))?;
        for node in topology.nodes() {
            issue_node_token(&state_dir.join("nodes"), node.name())?;
        }
        let control_netns = topology
            .control_plane()
            .context("the topology needs a control plane (TopologyBuilder::control_plane)")?
            .name()
            .to_owned();
        let control = ControlProcess::start_with(
            binaries.control,
            Some(&control_netns),
            &config_dir,
            &state_dir,
            SocketAddr::from((CONTROL_PLANE_IP, 15012)),
            &control_flags,
        )
        .await?;
        let mut mesh = Self::assemble(
            topology,
            None,
            dir,
            control,
            binaries,
            control_flags,
            &options,
        );
        let nodes: Vec<String> = mesh
            .topology
            .nodes()
            .iter()
            .map(|n| n.name().to_owned())
            .collect();
        for node in nodes {
            mesh.start_agent(&node, &[]).await?;
            mesh.start_ztunnel(&node).await?;
        }
        for node in mesh.ztunnels.keys() {
            mesh.wait_ready(node).await?;
        }
        Ok(mesh)
    }

    /// Starts `node`'s ztunnel (again, after [`Mesh::kill_ztunnel`]).
    pub async fn start_ztunnel(&mut self, node: &str) -> anyhow::Result<()> {
        let socket = match &self.cluster {
            Some(cluster) => cluster.zds_socket(node),
            None => self.agent_socket(node),
        };
        let setup = CaptureSetup {
            splice: self.splice,
            bpf_log: self.bpf_log,
            extra_flags: self.ztunnel_flags.clone(),
            ..CaptureSetup::for_node(&self.topology, node, self.capture)
        };
        let z = ZtunnelProcess::start_with(
            &self.binaries.1,
            node,
            Some(self.topology.node(node).netns().name()),
            &socket,
            &self.control,
            Some(&setup),
        )
        .await?;
        self.ztunnels.insert(node.to_owned(), z);
        Ok(())
    }

    /// Replaces `node`'s ztunnel as a rolling update does: the new one
    /// starts beside the old (both connected to the node agent, both bound
    /// in every pod) and is waited on until ready; then the old one gets
    /// SIGTERM, drains and exits.
    pub async fn rolling_update_ztunnel(&mut self, node: &str) -> anyhow::Result<()> {
        let old = self
            .ztunnels
            .remove(node)
            .with_context(|| format!("no ztunnel runs on {node}"))?;
        self.start_ztunnel(node).await?;
        self.wait_ready(node).await?;
        old.terminate(Duration::from_secs(30)).await
    }

    /// SIGKILLs `node`'s ztunnel, as a crash would.
    pub async fn kill_ztunnel(&mut self, node: &str) -> anyhow::Result<()> {
        if let Some(mut z) = self.ztunnels.remove(node) {
            z.process.kill().await?;
        }
        Ok(())
    }

    /// Replaces the control service's config (rendered as at start); the
    /// control service picks the change up from its directory.
    pub fn update_config(&self, config: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.cluster.is_none(),
            "a cluster mesh's config is in the API server: use Mesh::reconfigure"
        );
        let path = self.dir.path().join("config").join("mesh.yaml");
        // Written aside and renamed in, so the control service never reads
        // half a file.
        let staged = self.dir.path().join("mesh.yaml.new");
        std::fs::write(&staged, render(&self.topology, config))?;
        std::fs::rename(&staged, &path)?;
        Ok(())
    }

    pub fn capture(&self) -> CaptureMode {
        self.capture
    }

    pub fn ztunnel(&self, node: &str) -> &ZtunnelProcess {
        &self.ztunnels[node]
    }

    /// Enrolls pod `ns/name` (service account `sa`) with its node's
    /// ztunnel, and waits until ztunnel holds its certificate.
    ///
    /// On a cluster the node agent enrolled it from its labels when it
    /// started; this waits until its ztunnel serves it under `service_account`.
    pub async fn enroll(&self, qualified: &str, service_account: &str) -> anyhow::Result<()> {
        let pod = self.topology.pod(qualified);
        if self.cluster.is_some() {
            let z = self.ztunnel(pod.node());
            eventually(
                &format!("{qualified} served by its ztunnel"),
                Duration::from_secs(20),
                || async {
                    let dump = z.config_dump().await.ok()?;
                    dump["pods"]
                        .as_array()?
                        .iter()
                        .any(|p| {
                            p["name"] == pod.name()
                                && p["namespace"] == pod.namespace()
                                && p["identity"].as_str().is_some_and(|id| {
                                    id.ends_with(&format!(
                                        "/ns/{}/sa/{service_account}",
                                        pod.namespace()
                                    ))
                                })
                        })
                        .then_some(())
                },
            )
            .await?;
        } else {
            self.add_pod(self.agent(pod.node()), qualified, service_account)
                .await?;
        }
        self.wait_ready(pod.node()).await
    }

    /// Hands pod `ns/name` to its node's ztunnel through `agent`, without
    /// waiting for anything but ztunnel's ack.
    pub async fn add_pod(
        &self,
        agent: &Agent,
        qualified: &str,
        service_account: &str,
    ) -> anyhow::Result<()> {
        let pod = self.topology.pod(qualified);
        agent
            .add(AgentPod {
                workload: Workload {
                    uid: pod_uid(pod.namespace(), pod.name()),
                    name: pod.name().to_owned(),
                    namespace: pod.namespace().to_owned(),
                    service_account: service_account.to_owned(),
                },
                netns: Arc::new(pod.netns().file().try_clone()?.into()),
            })
            .await?;
        Ok(())
    }

    /// The node agent of `node`.
    pub fn agent(&self, node: &str) -> &Agent {
        self.agents.get(node).unwrap_or_else(|| {
            panic!("no node agent of {node} in this process (a cluster's agents are processes)")
        })
    }

    /// Where `node`'s node agent listens (and its ztunnel connects).
    pub fn agent_socket(&self, node: &str) -> std::path::PathBuf {
        self.dir.path().join(format!("{node}.sock"))
    }

    /// Stops `node`'s node agent, as a crash would: its socket stops
    /// answering, its ztunnel keeps what it has.
    pub async fn stop_agent(&mut self, node: &str) -> anyhow::Result<()> {
        self.agents.remove(node);
        if let Some(cluster) = &mut self.cluster {
            cluster.kill_agent(node).await?;
        }
        Ok(())
    }

    /// Starts `node`'s node agent (again), holding `pods` (qualified name,
    /// service account) before it listens — as a restarted agent rebuilds
    /// its state from the API server first — so its first snapshot names
    /// them.
    ///
    /// On a cluster it starts the node agent's process, which finds the
    /// node's pods from the API server and `/proc` itself (`pods` unused).
    pub async fn start_agent(&mut self, node: &str, pods: &[(&str, &str)]) -> anyhow::Result<()> {
        if let Some(cluster) = &mut self.cluster {
            return cluster.start_agent(&self.topology, node).await;
        }
        let socket = self.agent_socket(node);
        let agent = Agent::bind(&socket)
            .with_context(|| format!("the node agent's socket {}", socket.display()))?;
        for (qualified, service_account) in pods {
            match self.add_pod(&agent, qualified, service_account).await {
                Ok(()) => {}
                Err(err)
                    if matches!(
                        err.downcast_ref::<AgentError>(),
                        Some(AgentError::NoZtunnel { .. })
                    ) => {}
                Err(err) => return Err(err),
            }
        }
        self.agents.insert(node.to_owned(), agent);
        Ok(())
    }

    /// Waits until `node`'s ztunnel is ready (config synced, the node
    /// agent's snapshot applied, every pod's certificate held).
    pub async fn wait_ready(&self, node: &str) -> anyhow::Result<()> {
        let z = self.ztunnel(node);
        eventually("ztunnel ready", Duration::from_secs(20), || async {
            (z.readiness().await.ok()? == 200).then_some(())
        })
        .await
    }

    /// SIGKILLs `node`'s ztunnel and starts it again; it reconnects to the
    /// node agent, which sends it the node's pods, and is waited on until
    /// ready.
    pub async fn restart_ztunnel(&mut self, node: &str) -> anyhow::Result<()> {
        self.kill_ztunnel(node).await?;
        self.start_ztunnel(node).await?;
        self.wait_ready(node).await
    }

    /// Releases a pod from its ztunnel.
    ///
    /// On a cluster, the pod is labelled out of the mesh
    /// (`istio.io/dataplane-mode=none`) and waited on until released.
    pub async fn release(&self, qualified: &str) -> anyhow::Result<()> {
        let pod = self.topology.pod(qualified);
        if let Some(cluster) = &self.cluster {
            cluster
                .api
                .kubectl_ok(
                    &[
                        "label",
                        "pod",
                        "-n",
                        pod.namespace(),
                        pod.name(),
                        "istio.io/dataplane-mode=none",
                        "--overwrite",
                    ],
                    None,
                )
                .await?;
            let z = self.ztunnel(pod.node());
            return eventually(
                &format!("{qualified} released"),
                Duration::from_secs(20),
                || async {
                    let dump = z.config_dump().await.ok()?;
                    (!dump["pods"]
                        .as_array()?
                        .iter()
                        .any(|p| p["name"] == pod.name() && p["namespace"] == pod.namespace()))
                    .then_some(())
                },
            )
            .await;
        }
        self.agent(pod.node())
            .remove(&pod_uid(pod.namespace(), pod.name()))
            .await;
        Ok(())
    }

    /// Starts waypoint `name` as the process of pod `ns/pod` (which must
    /// not be enrolled: a waypoint speaks HBONE itself) and waits until it
    /// is ready.
    pub async fn start_waypoint(
        &self,
        qualified: &str,
        name: &str,
        bin: &Path,
    ) -> anyhow::Result<WaypointProcess> {
        self.start_waypoint_with(qualified, name, bin, &[]).await
    }

    /// As [`Mesh::start_waypoint`], with extra flags for the waypoint.
    pub async fn start_waypoint_with(
        &self,
        qualified: &str,
        name: &str,
        bin: &Path,
        extra: &[&str],
    ) -> anyhow::Result<WaypointProcess> {
        let pod = self.topology.pod(qualified);
        let waypoint = WaypointProcess::start_with(bin, pod, name, &self.control, extra).await?;
        eventually("the waypoint ready", Duration::from_secs(20), || async {
            (waypoint.readiness().await.ok()? == 200).then_some(())
        })
        .await?;
        Ok(waypoint)
    }

    /// Restarts the control service on its address (after a kill).
    pub async fn restart_control(&mut self) -> anyhow::Result<()> {
        if let Some(cluster) = &self.cluster {
            self.control = cluster
                .start_control(
                    &self.binaries.0,
                    &self.topology,
                    &self.dir.path().join("state"),
                    &self.control_flags,
                )
                .await?;
            return Ok(());
        }
        let netns = self.topology.control_plane().map(|n| n.name().to_owned());
        self.control = ControlProcess::start_with(
            &self.binaries.0,
            netns.as_deref(),
            &self.dir.path().join("config"),
            &self.dir.path().join("state"),
            self.control.addr,
            &self.control_flags,
        )
        .await?;
        Ok(())
    }
}
