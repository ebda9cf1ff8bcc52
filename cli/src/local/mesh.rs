//! A read-only view of a running local mesh, for inspection commands.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use weft_tests::topology::{NetNs, TopologyId};

use super::{config, paths::Paths, state::State};

pub struct LocalMesh {
    paths: Paths,
    state: State,
}

impl LocalMesh {
    pub fn open(paths: &Paths) -> anyhow::Result<Self> {
        Ok(Self {
            paths: paths.clone(),
            state: State::load(paths)?,
        })
    }

    fn id(&self) -> TopologyId {
        TopologyId::from_recorded(&self.state.topology.id)
    }

    pub fn nodes(&self) -> Vec<String> {
        self.state
            .topology
            .nodes
            .iter()
            .map(|n| n.name.clone())
            .collect()
    }

    /// The network namespace (name) a node — and its ztunnel — lives in.
    pub fn node_netns(&self, node: &str) -> anyhow::Result<String> {
        if !self.state.topology.nodes.iter().any(|n| n.name == node) {
            anyhow::bail!(
                "no node {node} in the local mesh (nodes: {})",
                self.nodes().join(", ")
            );
        }
        Ok(self.id().child(node))
    }

    /// The control-plane namespace (name).
    pub fn control_netns(&self) -> String {
        self.id().child("control")
    }

    pub fn control_reachable(&self) -> bool {
        let Ok(addr) = super::paths::CONTROL_ADDRESS.parse::<SocketAddr>() else {
            return false;
        };
        NetNs::open(&self.control_netns())
            .ok()
            .and_then(|ns| {
                ns.enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)))
                    .ok()
            })
            .is_some_and(|r| r.is_ok())
    }

    /// Whether pod `namespace/name` answers 200 on `GET /healthz/ready` at
    /// its own `127.0.0.1:port`; why not, if it does not.
    /// The network namespace (name) of pod `namespace/name`.
    pub fn pod_netns(&self, qualified: &str) -> anyhow::Result<String> {
        let (ns, name) = qualified
            .split_once('/')
            .ok_or_else(|| anyhow::anyhow!("{qualified:?} is not namespace/name"))?;
        Ok(self.id().child(&format!("pod-{ns}-{name}")))
    }

    pub async fn pod_ready(&self, qualified: &str, port: u16) -> Result<(), String> {
        let netns = self.pod_netns(qualified).map_err(|e| e.to_string())?;
        match weft_tests::processes::http_get(
            Some(&netns),
            SocketAddr::from(([127, 0, 0, 1], port)),
            "/healthz/ready",
        )
        .await
        {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(format!("{status} {}", body.trim())),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Namespaces with at least one pod in the mesh.
    pub fn enrolled_namespaces(&self) -> anyhow::Result<Vec<String>> {
        let (snapshot, _) = config::served(&self.paths)?;
        Ok(config::enrollment(&snapshot)
            .into_values()
            .filter(|(_, enrolled)| *enrolled)
            .map(|(pod, _)| pod.namespace)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect())
    }

    /// Where things are, for tools and tests (`weft local status -o json`).
    pub fn describe(&self) -> serde_json::Value {
        let id = self.id();
        serde_json::json!({
            "control": { "netns": id.child("control"), "address": super::paths::CONTROL_ADDRESS },
            "nodes": self.state.topology.nodes.iter().map(|n| serde_json::json!({
                "name": n.name,
                "netns": id.child(&n.name),
                "ip": format!("198.19.255.{}", n.index),
            })).collect::<Vec<_>>(),
            "pods": self.state.topology.pods.iter().map(|p| serde_json::json!({
                "name": format!("{}/{}", p.namespace, p.name),
                "node": p.node,
                "ip": p.ip,
                "netns": id.child(&format!("pod-{}-{}", p.namespace, p.name)),
            })).collect::<Vec<_>>(),
        })
    }
}
