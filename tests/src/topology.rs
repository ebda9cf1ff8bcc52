//! A cluster on one machine, made of network namespaces.
//!
//! ```text
//!              fabric netns: bridge fabric0 (198.19.255.0/24)
//!             /n1                                    \n2
//!   node n1 netns (eth0 198.19.255.1)       node n2 netns (eth0 198.19.255.2)
//!   bridge weft0 198.18.1.1/24 ── pods      bridge weft0 198.18.2.1/24 ── pods
//! ```
//!
//! Nodes route each other's pod subnets over the fabric and forward IP
//! (enabled inside the node namespaces only). Pods get `eth0` from the real
//! CNI `bridge` + `host-local` plugins when they are installed, else from a
//! plain veth the harness wires itself. Each pod also gets a cgroup v2
//! directory below one per-topology parent, the cgroup that capture programs
//! attach to. Dropping the [`Topology`] (also while unwinding from a panic)
//! kills the pods' processes and removes every namespace, cgroup and state
//! directory it made.

pub mod addressing;
pub mod cgroup;
pub mod cni;
mod error;
mod exec;
mod names;
pub mod netns;
mod pod;
mod record;

use std::{net::Ipv4Addr, path::PathBuf};

pub use addressing::NodeAddresses;
pub use error::{Result, TopologyError};
pub use names::{leftovers, reap_orphans, remove_owned_by, TopologyId, PREFIX, STATE_DIR};
pub use netns::NetNs;
pub use pod::{Pod, PodTask};
pub use record::{NodeRecord, PodRecord, TopologyRecord};

use cni::{CniPlugins, NodeNetwork, PodCall};

/// How pods get their network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PodNetworking {
    /// The CNI plugins when installed, else plain veths.
    #[default]
    Auto,
    /// The CNI plugins; building fails when they are missing.
    Cni,
    /// Plain veths onto a bridge, wired by the harness.
    Veth,
}

/// The interface name of the bridge in each node's namespace.
pub const NODE_BRIDGE: &str = cni::BRIDGE;
/// The bridge in the fabric namespace that joins the nodes.
pub const FABRIC_BRIDGE: &str = "fabric0";

/// Describes a topology; [`TopologyBuilder::build`] makes it.
#[derive(Debug, Default)]
pub struct TopologyBuilder {
    id: Option<TopologyId>,
    nodes: Vec<String>,
    pods: Vec<(String, String)>,
    networking: PodNetworking,
    control_plane: bool,
}

impl TopologyBuilder {
    /// Adds a control-plane namespace on the fabric at
    /// [`addressing::CONTROL_PLANE_IP`], where the control service runs.
    pub fn control_plane(mut self) -> Self {
        self.control_plane = true;
        self
    }

    /// Adds a node.
    pub fn node(mut self, name: &str) -> Self {
        self.nodes.push(name.to_owned());
        self
    }

    /// Adds the pod `namespace/name` on `node`.
    pub fn pod(mut self, qualified_name: &str, node: &str) -> Self {
        self.pods.push((qualified_name.to_owned(), node.to_owned()));
        self
    }

    /// Takes the declared pods out of the description, for a caller that
    /// adds them later ([`Topology::add_pod`]), in order.
    pub fn without_pods(mut self) -> (Self, Vec<(String, String)>) {
        let pods = std::mem::take(&mut self.pods);
        (self, pods)
    }

    /// Chooses how pods are networked (default: [`PodNetworking::Auto`]).
    pub fn networking(mut self, networking: PodNetworking) -> Self {
        self.networking = networking;
        self
    }

    /// Names the topology instead of tying it to this process (for tools
    /// such as `weft local` whose topology outlives the command).
    pub fn id(mut self, id: TopologyId) -> Self {
        self.id = Some(id);
        self
    }

    /// Creates every namespace, link, route, cgroup and pod. On failure,
    /// whatever was already made is removed again.
    pub fn build(self) -> Result<Topology> {
        self.validate()?;
        reap_orphans();
        let cni = match self.networking {
            PodNetworking::Veth => None,
            PodNetworking::Cni => Some(CniPlugins::find()?),
            PodNetworking::Auto => CniPlugins::find().ok(),
        };
        let id = self.id.clone().unwrap_or_else(TopologyId::for_this_process);
        let cgroup_root = cgroup::unified_root()?;
        let mut topology = Topology {
            pods_cgroup: cgroup_root.join(id.as_str()),
            system_cgroup: cgroup_root.join(id.child("system")),
            id,
            fabric: None,
            control_plane: None,
            nodes: Vec::new(),
            pods: Vec::new(),
            cni,
            torn_down: false,
        };
        topology.create_base()?;
        if self.control_plane {
            topology.add_control_plane()?;
        }
        for (index, name) in self.nodes.iter().enumerate() {
            topology.add_node(name, index + 1)?;
        }
        topology.route_between_nodes()?;
        for (qualified, node) in &self.pods {
            topology.add_pod(qualified, node)?;
        }
        Ok(topology)
    }

    fn validate(&self) -> Result<()> {
        let invalid = |msg: String| Err(TopologyError::Invalid(msg));
        if self.nodes.is_empty() {
            return invalid("a topology needs at least one node".into());
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if self.nodes[..i].contains(node) {
                return invalid(format!("node {node} is declared twice"));
            }
            if node.is_empty() || !node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return invalid(format!(
                    "node name {node:?} must be letters, digits and '-'"
                ));
            }
        }
        for (i, (pod, node)) in self.pods.iter().enumerate() {
            let Some((ns, name)) = pod.split_once('/') else {
                return invalid(format!("pod {pod:?} must be written namespace/name"));
            };
            let label = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            };
            if !label(ns) || !label(name) {
                return invalid(format!(
                    "pod {pod:?}: names are letters, digits, '-' and '.'"
                ));
            }
            if !self.nodes.contains(node) {
                return invalid(format!(
                    "pod {pod} is on node {node}, which is not declared"
                ));
            }
            if self.pods[..i].iter().any(|(other, _)| other == pod) {
                return invalid(format!("pod {pod} is declared twice"));
            }
        }
        Ok(())
    }
}

/// A node: a network namespace routing for its pods.
#[derive(Debug)]
pub struct Node {
    name: String,
    index: usize,
    netns: NetNs,
    addresses: NodeAddresses,
    network: NodeNetwork,
    next_host: u8,
}

impl Node {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn addresses(&self) -> &NodeAddresses {
        &self.addresses
    }

    /// The node's address on the fabric.
    pub fn ip(&self) -> Ipv4Addr {
        self.addresses.fabric
    }

    /// The name, inside the fabric namespace, of the veth leading to this
    /// node: where a capture sees everything the node sends to others.
    pub fn fabric_link(&self) -> String {
        format!("n{}", self.index)
    }
}

/// A running topology. See the module documentation for its shape.
#[derive(Debug)]
pub struct Topology {
    id: TopologyId,
    fabric: Option<NetNs>,
    control_plane: Option<NetNs>,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    pods_cgroup: PathBuf,
    system_cgroup: PathBuf,
    cni: Option<CniPlugins>,
    torn_down: bool,
}

impl Topology {
    /// The cgroup for the topology's own infrastructure processes (control
    /// service, ztunnels): beside the pods' cgroup, never below it, so pod
    /// capture never applies to them.
    pub fn system_cgroup(&self) -> cgroup::Cgroup {
        cgroup::Cgroup::open(self.system_cgroup.clone())
    }

    /// Starts describing a topology.
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    pub fn id(&self) -> &TopologyId {
        &self.id
    }

    /// The namespace standing for the physical network between nodes.
    pub fn fabric(&self) -> &NetNs {
        self.fabric.as_ref().expect("the fabric exists once built")
    }

    /// The control-plane namespace, if the topology has one.
    pub fn control_plane(&self) -> Option<&NetNs> {
        self.control_plane.as_ref()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node called `name`; panics (naming the known ones) if none is.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|node| node.name == name)
            .unwrap_or_else(|| {
                let known: Vec<_> = self.nodes.iter().map(|n| n.name.as_str()).collect();
                panic!("no node {name} in this topology (nodes: {known:?})")
            })
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pod `namespace/name`; panics (naming the known ones) if none is.
    pub fn pod(&self, qualified_name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|pod| pod.qualified_name() == qualified_name)
            .unwrap_or_else(|| {
                let known: Vec<_> = self.pods.iter().map(Pod::qualified_name).collect();
                panic!("no pod {qualified_name} in this topology (pods: {known:?})")
            })
    }

    /// The cgroup all nodes' pods' cgroups sit under.
    pub fn pods_cgroup(&self) -> &std::path::Path {
        &self.pods_cgroup
    }

    /// The cgroup `node`'s pods sit under: where its ztunnel's capture
    /// attaches.
    pub fn node_pods_cgroup(&self, node: &str) -> PathBuf {
        self.pods_cgroup.join(node)
    }

    /// The cgroup `node`'s ztunnel runs in: its own, beside the pods'.
    pub fn ztunnel_cgroup(&self, node: &str) -> cgroup::Cgroup {
        cgroup::Cgroup::open(self.system_cgroup.join(format!("ztunnel-{node}")))
    }

    /// Where `node`'s ztunnel pins its eBPF programs, maps and links
    /// (named for the topology, so teardown and the leftover check find it).
    pub fn bpf_pin_dir(&self, node: &str) -> PathBuf {
        PathBuf::from("/sys/fs/bpf").join(self.id.child(node))
    }

    /// Whether pods were networked by the CNI plugins.
    pub fn uses_cni(&self) -> bool {
        self.cni.is_some()
    }

    /// Chains a CNI plugin after the bridge for the pods added from now on
    /// (as a node's conflist gains an entry while it runs).
    pub fn chain_cni(&mut self, plugin: cni::Chained) -> Result<()> {
        let plugins = self.cni.take().ok_or_else(|| {
            TopologyError::Invalid("this topology's pods are not networked by CNI".into())
        })?;
        self.cni = Some(plugins.chain(plugin));
        Ok(())
    }

    /// Takes the chained plugin of type `kind` out again (as the runtime
    /// reads a conflist its installer has removed it from).
    pub fn unchain_cni(&mut self, kind: &str) {
        self.cni = self.cni.take().map(|plugins| plugins.unchain(kind));
    }

    /// From now on, `node`'s pods are set up from configuration files, as
    /// a runtime finds them: `conf_dir`'s first `.conflist` (read at every
    /// ADD and DEL) with plugins looked up in `bin_dir` too. The node's own
    /// network (the bridge and host-local) is written there first, as the
    /// cluster's primary CNI installs it.
    pub fn use_cni_files(&mut self, node: &str, files: cni::NodeCniFiles) -> Result<()> {
        if self.cni.is_none() {
            return Err(TopologyError::Invalid(
                "this topology's pods are not networked by CNI".into(),
            ));
        }
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .ok_or_else(|| TopologyError::Invalid(format!("no node {node}")))?;
        for dir in [&files.conf_dir, &files.bin_dir] {
            std::fs::create_dir_all(dir).map_err(TopologyError::io("creating", dir))?;
        }
        let primary = files.conf_dir.join("10-bridge.conflist");
        let list = serde_json::to_vec_pretty(&node.network.conflist()).expect("JSON serializes");
        std::fs::write(&primary, list).map_err(TopologyError::io("writing", &primary))?;
        node.network.files = Some(files);
        Ok(())
    }

    /// Adds a pod to a running topology.
    pub fn add_pod(&mut self, qualified_name: &str, node: &str) -> Result<&Pod> {
        let (namespace, name) = qualified_name.split_once('/').ok_or_else(|| {
            TopologyError::Invalid(format!("pod {qualified_name:?} must be namespace/name"))
        })?;
        if self
            .pods
            .iter()
            .any(|pod| pod.qualified_name() == qualified_name)
        {
            return Err(TopologyError::Invalid(format!(
                "pod {qualified_name} exists already"
            )));
        }
        let node_index = self
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| {
                TopologyError::Invalid(format!("no node {node} for pod {qualified_name}"))
            })?;
        let netns = NetNs::create(&self.id.child(&format!("pod-{namespace}-{name}")))?;
        let cgroup = match cgroup::Cgroup::create(
            self.node_pods_cgroup(node)
                .join(format!("{namespace}_{name}")),
        ) {
            Ok(cgroup) => cgroup,
            Err(err) => {
                let _ = netns.delete();
                return Err(err);
            }
        };
        let mut pod = Pod::new(namespace, name, node, netns, cgroup);
        let wired = match &self.cni {
            Some(plugins) => self.attach_with_cni(plugins, node_index, &mut pod),
            None => self.attach_with_veth(node_index, &mut pod),
        };
        // Keep the pod even if wiring failed, so teardown removes it.
        self.pods.push(pod);
        wired?;
        Ok(self.pods.last().expect("just pushed"))
    }

    /// Removes a pod: kills its processes, releases its network (CNI DEL)
    /// and deletes its namespace and cgroup.
    pub fn remove_pod(&mut self, qualified_name: &str) -> Result<()> {
        let index = self
            .pods
            .iter()
            .position(|p| p.qualified_name() == qualified_name)
            .ok_or_else(|| TopologyError::Invalid(format!("no pod {qualified_name}")))?;
        let pod = self.pods.remove(index);
        let mut first_error = cgroup::destroy_tree(pod.cgroup()).err();
        if let (Some(plugins), Some(attachment)) = (&self.cni, pod.attachment()) {
            if let Some(node) = self.nodes.iter().find(|n| n.name == pod.node()) {
                let call = PodCall {
                    plugins,
                    node: &node.netns,
                    pod_netns: pod.netns(),
                    container_id: pod.netns().name(),
                    pod: &pod.qualified_name(),
                };
                if let Err(err) = call.del(&node.network, attachment) {
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Err(err) = pod.into_netns().delete() {
            first_error.get_or_insert(err);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn attach_with_cni(
        &self,
        plugins: &CniPlugins,
        node_index: usize,
        pod: &mut Pod,
    ) -> Result<()> {
        let node = &self.nodes[node_index];
        let call = PodCall {
            plugins,
            node: &node.netns,
            pod_netns: pod.netns(),
            container_id: pod.netns().name(),
            pod: &pod.qualified_name(),
        };
        let attachment = call.add(&node.network)?;
        pod.set_network(attachment.ip, Some(attachment));
        Ok(())
    }

    fn attach_with_veth(&mut self, node_index: usize, pod: &mut Pod) -> Result<()> {
        let node = &mut self.nodes[node_index];
        node.next_host = node
            .next_host
            .checked_add(1)
            .filter(|host| *host < 255)
            .ok_or_else(|| {
                TopologyError::Invalid(format!("node {} has no pod addresses left", node.name))
            })?;
        let ip = node.addresses.pod_address(node.next_host);
        let host_side = format!("veth{}", node.next_host);
        node.netns.ip(&[
            "link",
            "add",
            &host_side,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            pod.netns().name(),
        ])?;
        node.netns
            .ip(&["link", "set", &host_side, "master", NODE_BRIDGE, "up"])?;
        let cidr = format!("{ip}/{}", addressing::POD_PREFIX_LEN);
        pod.netns().ip(&["addr", "add", &cidr, "dev", "eth0"])?;
        pod.netns().ip(&["link", "set", "eth0", "up"])?;
        let gateway = node.addresses.pod_gateway.to_string();
        pod.netns()
            .ip(&["route", "add", "default", "via", &gateway])?;
        pod.set_network(ip, None);
        Ok(())
    }

    fn create_base(&mut self) -> Result<()> {
        let state = self.id.state_dir();
        std::fs::create_dir_all(&state)
            .map_err(TopologyError::io("creating state directory", &state))?;
        cgroup::Cgroup::create(self.pods_cgroup.clone())?;
        cgroup::Cgroup::create(self.system_cgroup.clone())?;
        let fabric = NetNs::create(&self.id.child("fabric"))?;
        self.fabric = Some(fabric);
        let fabric = self.fabric();
        fabric.ip(&["link", "add", FABRIC_BRIDGE, "type", "bridge"])?;
        fabric.ip(&["link", "set", FABRIC_BRIDGE, "up"])?;
        Ok(())
    }

    fn add_control_plane(&mut self) -> Result<()> {
        let netns = NetNs::create(&self.id.child("control"))?;
        self.fabric().ip(&[
            "link",
            "add",
            "cp",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns.name(),
        ])?;
        self.fabric()
            .ip(&["link", "set", "cp", "master", FABRIC_BRIDGE, "up"])?;
        let cidr = format!(
            "{}/{}",
            addressing::CONTROL_PLANE_IP,
            addressing::FABRIC_PREFIX_LEN
        );
        netns.ip(&["addr", "add", &cidr, "dev", "eth0"])?;
        netns.ip(&["link", "set", "eth0", "up"])?;
        self.control_plane = Some(netns);
        Ok(())
    }

    fn add_node(&mut self, name: &str, index: usize) -> Result<()> {
        let addresses = NodeAddresses::for_node(index)?;
        let netns = NetNs::create(&self.id.child(name))?;
        cgroup::Cgroup::create(self.node_pods_cgroup(name))?;
        cgroup::Cgroup::create(self.ztunnel_cgroup(name).path().to_owned())?;
        let network = NodeNetwork {
            name: self.id.child(name),
            subnet: addresses.pod_cidr(),
            gateway: addresses.pod_gateway,
            ipam_dir: self.id.state_dir().join("ipam"),
            files: None,
        };
        self.nodes.push(Node {
            name: name.to_owned(),
            index,
            netns,
            addresses,
            network,
            next_host: 1,
        });
        let node = self.nodes.last().expect("just pushed");
        let link = node.fabric_link();
        // Both ends are created inside namespaces of ours: no interface ever
        // appears in the host's namespace.
        self.fabric().ip(&[
            "link",
            "add",
            &link,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            node.netns.name(),
        ])?;
        self.fabric()
            .ip(&["link", "set", &link, "master", FABRIC_BRIDGE, "up"])?;
        let fabric_cidr = format!("{}/{}", addresses.fabric, addressing::FABRIC_PREFIX_LEN);
        node.netns
            .ip(&["addr", "add", &fabric_cidr, "dev", "eth0"])?;
        node.netns.ip(&["link", "set", "eth0", "up"])?;
        node.netns.sysctl("net.ipv4.ip_forward", "1")?;
        if self.cni.is_none() {
            // Without CNI the harness makes the bridge the plugin would.
            let gateway = format!("{}/{}", addresses.pod_gateway, addressing::POD_PREFIX_LEN);
            node.netns
                .ip(&["link", "add", NODE_BRIDGE, "type", "bridge"])?;
            node.netns
                .ip(&["addr", "add", &gateway, "dev", NODE_BRIDGE])?;
            node.netns.ip(&["link", "set", NODE_BRIDGE, "up"])?;
        }
        Ok(())
    }

    fn route_between_nodes(&self) -> Result<()> {
        for node in &self.nodes {
            for other in self.nodes.iter().filter(|other| other.index != node.index) {
                let via = other.addresses.fabric.to_string();
                node.netns
                    .ip(&["route", "add", &other.addresses.pod_cidr(), "via", &via])?;
            }
            // Pods reach the control service too (a waypoint is a pod that
            // talks to it), as in a cluster.
            if let Some(control) = &self.control_plane {
                let via = node.addresses.fabric.to_string();
                control.ip(&["route", "add", &node.addresses.pod_cidr(), "via", &via])?;
            }
        }
        Ok(())
    }

    /// Removes everything, reporting the first failure (after trying all).
    pub fn teardown(mut self) -> Result<()> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut first_error = None;
        let mut note = |result: Result<()>| {
            if let Err(err) = result {
                tracing::warn!(%err, "topology teardown");
                first_error.get_or_insert(err);
            }
        };
        // Processes first, so nothing holds the pods' sockets or addresses.
        note(cgroup::destroy_tree(&self.pods_cgroup));
        note(cgroup::destroy_tree(&self.system_cgroup));
        for pod in self.pods.drain(..) {
            if let (Some(plugins), Some(attachment)) = (&self.cni, pod.attachment()) {
                if let Some(node) = self.nodes.iter().find(|n| n.name == pod.node()) {
                    let call = PodCall {
                        plugins,
                        node: &node.netns,
                        pod_netns: pod.netns(),
                        container_id: pod.netns().name(),
                        pod: &pod.qualified_name(),
                    };
                    note(call.del(&node.network, attachment));
                }
            }
            note(pod.into_netns().delete());
        }
        for node in self.nodes.drain(..) {
            note(node.netns.delete());
            // Pins hold the capture programs in the kernel: removing them
            // detaches and unloads everything ztunnel left.
            let pins = PathBuf::from("/sys/fs/bpf").join(self.id.child(&node.name));
            if pins.exists() {
                note(std::fs::remove_dir_all(&pins).map_err(TopologyError::io("removing", &pins)));
            }
        }
        if let Some(control_plane) = self.control_plane.take() {
            note(control_plane.delete());
        }
        if let Some(fabric) = self.fabric.take() {
            note(fabric.delete());
        }
        let state = self.id.state_dir();
        if state.exists() {
            note(std::fs::remove_dir_all(&state).map_err(TopologyError::io("removing", &state)));
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if let Err(err) = self.teardown_inner() {
            eprintln!(
                "topology {}: teardown left something behind: {err}",
                self.id.as_str()
            );
        }
    }
}
