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

use crate::{
    processes::{eventually, ControlProcess, ZtunnelProcess},
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
        Self::start_with(topology, config, binaries, &[]).await
    }

    /// As [`Mesh::start`], with extra flags for the control service.
    pub async fn start_with(
        topology: Topology,
        config: &str,
        binaries: Binaries<'_>,
        control_flags: &[&str],
    ) -> anyhow::Result<Self> {
        let control_flags: Vec<String> = control_flags.iter().map(|f| f.to_string()).collect();
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
        let mut ztunnels = BTreeMap::new();
        for node in topology.nodes() {
            let socket = dir.path().join(format!("{}.sock", node.name()));
            let z = ZtunnelProcess::start(
                binaries.ztunnel,
                node.name(),
                Some(node.netns().name()),
                &socket,
                &control,
            )
            .await?;
            ztunnels.insert(node.name().to_owned(), z);
        }
        let mesh = Self {
            topology,
            dir,
            control,
            ztunnels,
            binaries: (binaries.control.to_owned(), binaries.ztunnel.to_owned()),
            control_flags,
        };
        for z in mesh.ztunnels.values() {
            eventually("ztunnel ready", Duration::from_secs(20), || async {
                (z.readiness().await.ok()? == 200).then_some(())
            })
            .await?;
        }
        Ok(mesh)
    }

    pub fn ztunnel(&self, node: &str) -> &ZtunnelProcess {
        &self.ztunnels[node]
    }

    /// Enrolls pod `ns/name` (service account `sa`) with its node's
    /// ztunnel, and waits until ztunnel holds its certificate.
    pub async fn enroll(&self, qualified: &str, service_account: &str) -> anyhow::Result<()> {
        let pod = self.topology.pod(qualified);
        let z = self.ztunnel(pod.node());
        let client = AgentClient::connect(&z.socket).await?;
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
        eventually("the pod's certificate", Duration::from_secs(20), || async {
            (z.readiness().await.ok()? == 200).then_some(())
        })
        .await
    }

    /// Releases a pod from its ztunnel.
    pub async fn release(&self, qualified: &str) -> anyhow::Result<()> {
        let pod = self.topology.pod(qualified);
        let client = AgentClient::connect(&self.ztunnel(pod.node()).socket).await?;
        client
            .remove(&format!(
                "Kubernetes//Pod/{}/{}",
                pod.namespace(),
                pod.name()
            ))
            .await?;
        Ok(())
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
