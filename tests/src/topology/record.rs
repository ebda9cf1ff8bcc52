//! Detaching a topology from the process that built it, and attaching to
//! it again: how `weft local` keeps a cluster running between commands.
//!
//! A [`TopologyRecord`] (serializable) names everything the topology made;
//! [`Topology::detach`] returns it without tearing anything down, and
//! [`Topology::attach`] reopens the namespaces and cgroups it names.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::{
    addressing::NodeAddresses,
    cgroup::{self, Cgroup},
    cni::{Attachment, CniPlugins, NodeNetwork},
    error::{Result, TopologyError},
    netns::NetNs,
    pod::Pod,
    Node, Topology, TopologyId,
};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    pub index: usize,
    pub next_host: u8,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// The CNI result, when the CNI plugins networked the pod.
    pub cni_result: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopologyRecord {
    pub id: String,
    pub uses_cni: bool,
    pub control_plane: bool,
    pub nodes: Vec<NodeRecord>,
    pub pods: Vec<PodRecord>,
}

impl Topology {
    /// Leaves everything running and returns what is needed to attach.
    pub fn detach(mut self) -> TopologyRecord {
        let record = self.record();
        self.torn_down = true;
        record
    }

    /// The record of the topology as it is now.
    pub fn record(&self) -> TopologyRecord {
        TopologyRecord {
            id: self.id.as_str().to_owned(),
            uses_cni: self.cni.is_some(),
            control_plane: self.control_plane.is_some(),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeRecord {
                    name: n.name.clone(),
                    index: n.index,
                    next_host: n.next_host,
                })
                .collect(),
            pods: self
                .pods
                .iter()
                .map(|p| PodRecord {
                    namespace: p.namespace().to_owned(),
                    name: p.name().to_owned(),
                    node: p.node().to_owned(),
                    ip: p.ip(),
                    cni_result: p.cni_result().cloned(),
                })
                .collect(),
        }
    }

    /// Reopens a detached topology. Dropping the result tears it down, so
    /// callers that only visit call [`Topology::detach`] again when done.
    pub fn attach(record: &TopologyRecord) -> Result<Self> {
        let id = TopologyId::from_recorded(&record.id);
        let cni = if record.uses_cni {
            Some(CniPlugins::find()?)
        } else {
            None
        };
        let cgroup_root = cgroup::unified_root()?;
        let mut topology = Topology {
            pods_cgroup: cgroup_root.join(id.as_str()),
            system_cgroup: cgroup_root.join(id.child("system")),
            fabric: None,
            control_plane: None,
            nodes: Vec::new(),
            pods: Vec::new(),
            cni,
            // Until fully reopened, a failure must not tear down a running
            // topology.
            torn_down: true,
            id,
        };
        topology.fabric = Some(NetNs::open(&topology.id.child("fabric"))?);
        if record.control_plane {
            topology.control_plane = Some(NetNs::open(&topology.id.child("control"))?);
        }
        for n in &record.nodes {
            let addresses = NodeAddresses::for_node(n.index)?;
            topology.nodes.push(Node {
                name: n.name.clone(),
                index: n.index,
                netns: NetNs::open(&topology.id.child(&n.name))?,
                network: NodeNetwork {
                    name: topology.id.child(&n.name),
                    subnet: addresses.pod_cidr(),
                    gateway: addresses.pod_gateway,
                    ipam_dir: topology.id.state_dir().join("ipam"),
                    files: None,
                },
                addresses,
                next_host: n.next_host,
            });
        }
        for p in &record.pods {
            let netns = NetNs::open(
                &topology
                    .id
                    .child(&format!("pod-{}-{}", p.namespace, p.name)),
            )?;
            let cgroup = Cgroup::open(
                topology
                    .node_pods_cgroup(&p.node)
                    .join(format!("{}_{}", p.namespace, p.name)),
            );
            if !cgroup.path().is_dir() {
                return Err(TopologyError::Invalid(format!(
                    "pod {}/{}: its cgroup {} is gone",
                    p.namespace,
                    p.name,
                    cgroup.path().display()
                )));
            }
            let attachment = p
                .cni_result
                .clone()
                .map(|result| Attachment { result, ip: p.ip });
            topology.pods.push(Pod::restore(
                &p.namespace,
                &p.name,
                &p.node,
                netns,
                cgroup,
                p.ip,
                attachment,
            ));
        }
        topology.torn_down = false;
        Ok(topology)
    }
}
