//! Invoking real CNI plugins the way a container runtime does (CNI spec 1.0:
//! environment variables for the command, the network configuration on
//! stdin, the result on stdout).
//!
//! Plugins run inside the *node's* network namespace, so the bridge they
//! create lives there and the host's own network is never touched.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde_json::{json, Value};

use super::{
    error::{Result, TopologyError},
    exec,
    netns::NetNs,
};

/// The CNI spec version the harness speaks (Debian 12's plugins are 1.1.1).
pub const CNI_VERSION: &str = "1.0.0";
/// The bridge the plugin creates in each node.
pub const BRIDGE: &str = "weft0";

/// An installed set of CNI plugins, and the plugins chained after the
/// bridge (the mesh's, in tests of it).
#[derive(Clone, Debug)]
pub struct CniPlugins {
    dir: PathBuf,
    chained: Vec<Chained>,
}

/// A plugin run after the bridge, as a cluster's conflist chains it.
#[derive(Clone, Debug)]
pub struct Chained {
    /// The directory holding its binary (named as its `type`).
    pub dir: PathBuf,
    /// Its entry in the conflist's `plugins`.
    pub config: Value,
    /// Run it in the machine's network namespace rather than the node's.
    /// On a real node both are the host's; here a node's namespace has no
    /// route to the test API server on the machine's loopback, which a
    /// plugin that reads the API server needs.
    pub in_host_netns: bool,
}

impl CniPlugins {
    /// The plugins in `$CNI_PATH`, else Debian's `/usr/lib/cni`, if the ones
    /// the harness needs are all there.
    pub fn find() -> Result<Self> {
        let dir = std::env::var_os("CNI_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/cni"));
        let complete = ["bridge", "host-local", "loopback"]
            .iter()
            .all(|plugin| dir.join(plugin).is_file());
        if complete {
            Ok(Self {
                dir,
                chained: Vec::new(),
            })
        } else {
            Err(TopologyError::CniMissing { dir })
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Chains `plugin` after the ones already there.
    pub fn chain(mut self, plugin: Chained) -> Self {
        self.chained.push(plugin);
        self
    }

    /// Takes the chained plugin of type `kind` out again.
    pub fn unchain(mut self, kind: &str) -> Self {
        self.chained.retain(|c| c.config["type"] != kind);
        self
    }

    fn in_host_netns(&self, kind: &str) -> bool {
        self.chained
            .iter()
            .any(|c| c.config["type"] == kind && c.in_host_netns)
    }

    /// Every directory plugins are found in for `network`'s pods.
    fn dirs<'a>(&'a self, network: &'a NodeNetwork) -> impl Iterator<Item = &'a PathBuf> {
        std::iter::once(&self.dir)
            .chain(self.chained.iter().map(|c| &c.dir))
            .chain(network.files.iter().map(|f| &f.bin_dir))
    }

    /// The runtime's `CNI_PATH`.
    fn path(&self, network: &NodeNetwork) -> String {
        self.dirs(network)
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Where the binary of plugin `kind` is, as a runtime searches
    /// `CNI_PATH`.
    fn binary(&self, kind: &str, network: &NodeNetwork) -> PathBuf {
        self.dirs(network)
            .map(|d| d.join(kind))
            .find(|p| p.is_file())
            .unwrap_or_else(|| self.dir.join(kind))
    }

    /// The conflist a pod of `network` is set up with: the node's file when
    /// it has a configuration directory (read at each call, as a runtime
    /// does), else `network`'s own with the chained plugins appended.
    fn conflist(&self, network: &NodeNetwork) -> Result<Value> {
        if let Some(files) = &network.files {
            return files.read();
        }
        let mut list = network.conflist();
        if let Some(plugins) = list["plugins"].as_array_mut() {
            plugins.extend(self.chained.iter().map(|c| c.config.clone()));
        }
        Ok(list)
    }
}

/// A node's CNI configuration as files, the way a runtime finds it: the
/// configuration directory (`/etc/cni/net.d`), whose first `.conflist` by
/// name is the network, and a directory of plugin binaries another
/// installer (the mesh's node agent) may add to (`/opt/cni/bin`).
#[derive(Clone, Debug)]
pub struct NodeCniFiles {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
}

impl NodeCniFiles {
    /// The first `.conflist` in the directory, parsed.
    pub fn read(&self) -> Result<Value> {
        let io = |what: &'static str| TopologyError::io(what, &self.conf_dir);
        let mut lists: Vec<PathBuf> = std::fs::read_dir(&self.conf_dir)
            .map_err(io("reading the CNI configuration directory"))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
            .collect();
        lists.sort();
        let first = lists.first().ok_or_else(|| {
            TopologyError::Invalid(format!(
                "no .conflist in {} (the runtime has no network)",
                self.conf_dir.display()
            ))
        })?;
        let text = std::fs::read(first).map_err(TopologyError::io("reading", first))?;
        serde_json::from_slice(&text).map_err(|err| {
            TopologyError::Invalid(format!("{} is not JSON: {err}", first.display()))
        })
    }
}

/// One node's pod network, as a CNI network configuration list.
#[derive(Clone, Debug)]
pub struct NodeNetwork {
    /// The network name (unique per topology and node).
    pub name: String,
    /// The pod subnet, `a.b.c.d/len`.
    pub subnet: String,
    /// The bridge's address, the pods' gateway.
    pub gateway: Ipv4Addr,
    /// Where host-local keeps its allocations (inside the topology's state
    /// directory, never the host's /var/lib/cni).
    pub ipam_dir: PathBuf,
    /// The node's configuration files, once it has them
    /// ([`crate::topology::Topology::use_cni_files`]).
    pub files: Option<NodeCniFiles>,
}

impl NodeNetwork {
    /// The network configuration list a runtime would read from
    /// `/etc/cni/net.d`.
    pub fn conflist(&self) -> Value {
        json!({
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "plugins": [{
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": self.subnet, "gateway": self.gateway.to_string() }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": self.ipam_dir,
                }
            }]
        })
    }
}

/// What `ADD` returned for a pod.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// The full CNI result (kept for `DEL`, which receives it as `prevResult`).
    pub result: Value,
    /// The pod's IPv4 address.
    pub ip: Ipv4Addr,
}

/// The runtime's side of one pod's CNI calls.
pub struct PodCall<'a> {
    pub plugins: &'a CniPlugins,
    pub node: &'a NetNs,
    pub pod_netns: &'a NetNs,
    pub container_id: &'a str,
    pub pod: &'a str,
}

impl PodCall<'_> {
    /// `ADD`: the loopback plugin for `lo`, then each plugin of the list for
    /// `eth0`, chaining results through `prevResult` as libcni does.
    ///
    /// When a plugin fails, the whole list is torn down (DEL in reverse,
    /// with no result) before the error is returned, as containerd does, so
    /// a retry starts clean (host-local releases the address).
    pub fn add(&self, network: &NodeNetwork) -> Result<Attachment> {
        let loopback = json!({ "cniVersion": CNI_VERSION, "name": "loopback", "type": "loopback" });
        self.invoke(network, "ADD", "lo", &loopback)?;
        let list = self.plugins.conflist(network)?;
        let mut prev: Option<Value> = None;
        for plugin in list["plugins"].as_array().into_iter().flatten() {
            let config = plugin_config(&list, plugin, prev.as_ref());
            let added = self
                .invoke(network, "ADD", "eth0", &config)
                .and_then(|out| {
                    serde_json::from_str(&out)
                        .map_err(|err| self.error("ADD", plugin, err.to_string()))
                });
            match added {
                Ok(result) => prev = Some(result),
                Err(err) => {
                    for plugin in list["plugins"].as_array().into_iter().flatten().rev() {
                        let config = plugin_config(&list, plugin, None);
                        if let Err(del) = self.invoke(network, "DEL", "eth0", &config) {
                            tracing::warn!(pod = self.pod, %del, "teardown after a failed ADD");
                        }
                    }
                    return Err(err);
                }
            }
        }
        let result = prev.ok_or_else(|| TopologyError::Invalid("empty CNI plugin list".into()))?;
        let ip = first_ipv4(&result).ok_or_else(|| TopologyError::Cni {
            plugin: "bridge".into(),
            command: "ADD",
            pod: self.pod.to_owned(),
            message: format!("result has no IPv4 address: {result}"),
        })?;
        Ok(Attachment { result, ip })
    }

    /// `DEL`: the list's plugins in reverse order, each given the `ADD`
    /// result, so host-local releases the address.
    pub fn del(&self, network: &NodeNetwork, attachment: &Attachment) -> Result<()> {
        let list = self.plugins.conflist(network)?;
        for plugin in list["plugins"].as_array().into_iter().flatten().rev() {
            let config = plugin_config(&list, plugin, Some(&attachment.result));
            self.invoke(network, "DEL", "eth0", &config)?;
        }
        Ok(())
    }

    fn invoke(
        &self,
        network: &NodeNetwork,
        command: &'static str,
        ifname: &str,
        config: &Value,
    ) -> Result<String> {
        let plugin = config["type"].as_str().unwrap_or_default();
        let binary = self.plugins.binary(plugin, network);
        // What containerd passes for a Kubernetes pod.
        let (namespace, name) = self.pod.split_once('/').unwrap_or(("", self.pod));
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
             K8S_POD_INFRA_CONTAINER_ID={}",
            self.container_id
        );
        // `ip netns exec` (rather than a bare setns) also remounts /sys for
        // the namespace, which the plugins read.
        let mut cmd = if self.plugins.in_host_netns(plugin) {
            std::process::Command::new(&binary)
        } else {
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["netns", "exec", self.node.name()]).arg(&binary);
            cmd
        };
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_NETNS", self.pod_netns.path())
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", self.plugins.path(network));
        let stdin = serde_json::to_vec(config).expect("JSON values serialize");
        exec::run(&mut cmd, Some(&stdin))
            .map_err(|err| self.error(command, &config["type"], err.to_string()))
    }

    fn error(&self, command: &'static str, plugin: &Value, message: String) -> TopologyError {
        TopologyError::Cni {
            plugin: plugin.as_str().unwrap_or("?").to_owned(),
            command,
            pod: self.pod.to_owned(),
            message,
        }
    }
}

/// The stdin of one plugin of a list: its own configuration plus the list's
/// `name` and `cniVersion`, and the previous plugin's result.
fn plugin_config(list: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
    let mut config = plugin.clone();
    config["name"] = list["name"].clone();
    config["cniVersion"] = list["cniVersion"].clone();
    if let Some(prev) = prev {
        config["prevResult"] = prev.clone();
    }
    config
}

fn first_ipv4(result: &Value) -> Option<Ipv4Addr> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let address = ip["address"].as_str()?;
        address.split('/').next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_config_carries_the_list_name_version_and_previous_result() {
        let network = NodeNetwork {
            name: "wft-1-0-n1".into(),
            subnet: "198.18.1.0/24".into(),
            gateway: Ipv4Addr::new(198, 18, 1, 1),
            ipam_dir: "/run/wft/x".into(),
            files: None,
        };
        let list = network.conflist();
        let prev = json!({"cniVersion": CNI_VERSION, "ips": []});
        let config = plugin_config(&list, &list["plugins"][0], Some(&prev));
        assert_eq!(config["name"], "wft-1-0-n1");
        assert_eq!(config["cniVersion"], CNI_VERSION);
        assert_eq!(config["type"], "bridge");
        assert_eq!(config["ipam"]["dataDir"], "/run/wft/x");
        assert_eq!(config["prevResult"], prev);
    }

    #[test]
    fn the_pod_address_is_read_from_the_result() {
        let result = json!({"ips": [{"address": "198.18.1.7/24", "gateway": "198.18.1.1"}]});
        assert_eq!(first_ipv4(&result), Some(Ipv4Addr::new(198, 18, 1, 7)));
        assert_eq!(first_ipv4(&json!({"ips": []})), None);
    }
}
