//! A cluster's ztunnels, reached the way `istioctl ztunnel-config` reaches
//! Istio's: a port-forward through the API server (and the node's kubelet)
//! to the admin port, which ztunnel serves on its pod's loopback only.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{Api, ListParams},
    Client,
};
use serde_json::Value;

/// Where `weft install` runs ztunnel, and its pods' label.
pub const NAMESPACE: &str = "weft-system";
const SELECTOR: &str = "app=ztunnel";
const ADMIN_PORT: u16 = 15000;

pub struct ClusterZtunnels {
    pods: Api<Pod>,
    /// Node → the running ztunnel pod on it.
    by_node: BTreeMap<String, String>,
}

impl ClusterZtunnels {
    /// The running ztunnel pods, one per node.
    pub async fn find(client: &Client) -> anyhow::Result<Self> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
        let listed = pods
            .list(&ListParams::default().labels(SELECTOR))
            .await
            .with_context(|| format!("listing ztunnel pods ({SELECTOR}) in {NAMESPACE}"))?;
        let mut by_node = BTreeMap::new();
        for pod in listed {
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if let (true, Some(node), Some(name)) = (running, node, pod.metadata.name) {
                by_node.insert(node, name);
            }
        }
        if by_node.is_empty() {
            bail!(
                "no running ztunnel pod ({SELECTOR}) in namespace {NAMESPACE}: is Weft installed \
                 (weft install)?"
            );
        }
        Ok(Self { pods, by_node })
    }

    pub fn nodes(&self) -> Vec<String> {
        self.by_node.keys().cloned().collect()
    }

    /// The pod running ztunnel on `node`.
    pub fn pod(&self, node: &str) -> Option<&str> {
        self.by_node.get(node).map(String::as_str)
    }

    /// `/config_dump` of `node`'s ztunnel.
    pub async fn config_dump(&self, node: &str) -> anyhow::Result<Value> {
        let pod = self.pod(node).with_context(|| {
            format!(
                "no running ztunnel on node {node} (nodes with one: {})",
                self.nodes().join(", ")
            )
        })?;
        let mut forward = self
            .pods
            .portforward(pod, &[ADMIN_PORT])
            .await
            .with_context(|| format!("port-forwarding to {NAMESPACE}/{pod}:{ADMIN_PORT}"))?;
        let mut stream = forward
            .take_stream(ADMIN_PORT)
            .context("the port-forward has no stream")?;
        let (status, body) = weft_tests::processes::http_exchange(
            &mut stream,
            "GET",
            &format!("localhost:{ADMIN_PORT}"),
            "/config_dump",
        )
        .await
        .with_context(|| format!("reading {NAMESPACE}/{pod}'s config through a port-forward"))?;
        drop(stream);
        let _ = forward.join().await;
        if status != 200 {
            bail!("ztunnel {NAMESPACE}/{pod} answered {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("ztunnel {NAMESPACE}/{pod}'s dump"))
    }
}
