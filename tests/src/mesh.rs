//! A whole mesh on a [`Topology`] for end-to-end tests: the control service
//! in the control-plane namespace, a ztunnel in every node namespace, pods
//! enrolled through the node-agent protocol as the CNI plugin would.
//!
//! The config is Kubernetes YAML in which `${ns/pod}` stands for that pod's
//! IP (assigned by the CNI plugin when the topology was built).

use std::{collections::BTreeMap, net::SocketAddr, path::Path, time::Duration};

use anyhow::Context;
use weft_control::auth::issue_node_token;
use ztunnel::nodeagent::client::{AgentClient, Pod as AgentPod};

use ztunnel::capture::CaptureMode;

use crate::{
    processes::{eventually, CaptureSetup, ControlProcess, WaypointProcess, ZtunnelProcess},
    topology::{addressing::CONTROL_PLANE_IP, Topology},
};

/// The binaries a mesh runs.
#[derive(Clone, Copy, Debug)]
pub struct Binaries<'a> {
    pub control: &'a Path,
    pub ztunnel: &'a Path,
}

pub struct Mesh {
    pub topology: Topology,
    pub dir: tempfile::TempDir,
    pub control: ControlProcess,
    pub ztunnels: BTreeMap<String, ZtunnelProcess>,
    binaries: (std::path::PathBuf, std::path::PathBuf),
    control_flags: Vec<String>,
    capture: CaptureMode,
    splice: bool,
    bpf_log: bool,
    ztunnel_flags: Vec<String>,
    /// Enrolled pods (qualified name → service account), to enroll again
    /// after a ztunnel restart, as the node agent would.
    enrolled: std::sync::Mutex<BTreeMap<String, String>>,
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
}

impl Default for MeshOptions<'_> {
    fn default() -> Self {
        Self {
            control_flags: &[],
            capture: CaptureMode::Ebpf,
            splice: true,
            bpf_log: false,
            ztunnel_flags: &[],
        }
    }
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
        let mut mesh = Self {
            topology,
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
            enrolled: Default::default(),
        };
        let nodes: Vec<String> = mesh
            .topology
            .nodes()
            .iter()
            .map(|n| n.name().to_owned())
            .collect();
        for node in nodes {
            mesh.start_ztunnel(&node).await?;
        }
        for node in mesh.ztunnels.keys() {
            mesh.wait_ready(node).await?;
        }
        Ok(mesh)
    }

    /// Starts `node`'s ztunnel (again, after [`Mesh::kill_ztunnel`]).
    pub async fn start_ztunnel(&mut self, node: &str) -> anyhow::Result<()> {
        let socket = self.dir.path().join(format!("{node}.sock"));
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
    pub async fn enroll(&self, qualified: &str, service_account: &str) -> anyhow::Result<()> {
        let pod = self.topology.pod(qualified);
        let client = AgentClient::connect(&self.ztunnel(pod.node()).socket).await?;
        self.add_pod(&client, qualified, service_account).await?;
        self.enrolled
            .lock()
            .expect("enrolled lock")
            .insert(qualified.to_owned(), service_account.to_owned());
        self.wait_ready(pod.node()).await
    }

    /// Hands pod `ns/name` to its node's ztunnel through `client` (a
    /// node-agent session the test holds), without waiting for anything.
    pub async fn add_pod(
        &self,
        client: &AgentClient,
        qualified: &str,
        service_account: &str,
    ) -> anyhow::Result<()> {
        let pod = self.topology.pod(qualified);
        let uid = format!("Kubernetes//Pod/{}/{}", pod.namespace(), pod.name());
        client
            .add(
                &AgentPod {
                    uid: &uid,
                    name: pod.name(),
                    namespace: pod.namespace(),
                    service_account,
                    ips: &[pod.ip().into()],
                },
                pod.netns().file(),
            )
            .await?;
        Ok(())
    }

    /// A node-agent session with the ztunnel of `node`.
    pub async fn agent(&self, node: &str) -> anyhow::Result<AgentClient> {
        Ok(AgentClient::connect(&self.ztunnel(node).socket).await?)
    }

    /// Waits until `node`'s ztunnel is ready (config synced, every pod's
    /// certificate held).
    pub async fn wait_ready(&self, node: &str) -> anyhow::Result<()> {
        let z = self.ztunnel(node);
        eventually("ztunnel ready", Duration::from_secs(20), || async {
            (z.readiness().await.ok()? == 200).then_some(())
        })
        .await
    }

    /// SIGKILLs `node`'s ztunnel and starts it again; like the node agent
    /// after a restart, sends it the node's enrolled pods and a snapshot
    /// marker, and waits until it is ready.
    pub async fn restart_ztunnel(&mut self, node: &str) -> anyhow::Result<()> {
        self.kill_ztunnel(node).await?;
        self.start_ztunnel(node).await?;
        let client = AgentClient::connect(&self.ztunnel(node).socket).await?;
        let pods: Vec<(String, String)> = self
            .enrolled
            .lock()
            .expect("enrolled lock")
            .iter()
            .filter(|(qualified, _)| self.topology.pod(qualified).node() == node)
            .map(|(q, sa)| (q.clone(), sa.clone()))
            .collect();
        for (qualified, service_account) in pods {
            self.add_pod(&client, &qualified, &service_account).await?;
        }
        client.snapshot_done().await?;
        self.wait_ready(node).await
    }

    /// Releases a pod from its ztunnel.
    pub async fn release(&self, qualified: &str) -> anyhow::Result<()> {
        let pod = self.topology.pod(qualified);
        let client = AgentClient::connect(&self.ztunnel(pod.node()).socket).await?;
        self.enrolled
            .lock()
            .expect("enrolled lock")
            .remove(qualified);
        client
            .remove(&format!(
                "Kubernetes//Pod/{}/{}",
                pod.namespace(),
                pod.name()
            ))
            .await?;
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
