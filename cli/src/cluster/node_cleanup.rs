//! What `weft uninstall` removes from the nodes themselves: the eBPF
//! capture ztunnel pins in each node's bpffs, on purpose, so that a
//! restarted or upgraded ztunnel adopts it and pods stay captured. Left
//! behind, it would keep steering enrolled pods' traffic to a ztunnel that
//! is gone.
//!
//! The same goes for `weft-cni`, which the node agent keeps chained in each
//! node's CNI configuration (on purpose too: while the agent is replaced,
//! new pods wait for it).
//!
//! The ztunnel and node agent DaemonSets are stopped first (nothing may pin
//! or chain again), then a DaemonSet `weft-node-cleanup` runs `ztunnel
//! uninstall` on every node from ztunnel's own image, with its pin
//! directory and bpffs mount, and `weft-node-agent uninstall` from the
//! agent's image with its CNI directories. Its pods are ready once those
//! init containers have succeeded; when all are, the DaemonSet is removed.
//! `deploy/uninstall/node-cleanup.yaml` is the same DaemonSet for those who
//! installed with kubectl.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Container, EnvVar, Pod, PodSpec, Volume},
};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams},
    Client,
};

use super::install::FIELD_MANAGER;

const NAMESPACE: &str = "weft-system";
const ZTUNNEL: &str = "ztunnel";
const NODE_AGENT: &str = "weft-node-agent";
pub const CLEANUP: &str = "weft-node-cleanup";
const TEMPLATE: &str = include_str!("../../../deploy/uninstall/node-cleanup.yaml");

/// Stops ztunnel on every node and removes its pinned capture there.
/// Without a ztunnel DaemonSet there is nothing to do.
pub async fn run(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), NAMESPACE);
    let Some(ztunnel) = daemonsets.get_opt(ZTUNNEL).await? else {
        println!("DaemonSet/{ZTUNNEL} not found: no node capture to remove");
        return Ok(());
    };
    let agent = daemonsets.get_opt(NODE_AGENT).await?;
    let cleanup = cleanup_daemonset(&ztunnel, agent.as_ref())?;
    let start = Instant::now();
    let mut stopped = vec![ZTUNNEL];
    if agent.is_some() {
        stopped.push(NODE_AGENT);
    }
    for name in &stopped {
        daemonsets
            .delete(name, &DeleteParams::background())
            .await
            .with_context(|| format!("deleting DaemonSet/{name}"))?;
        println!("DaemonSet/{name} deleted");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    for name in &stopped {
        let selector = format!("app={name}");
        loop {
            let left = pods.list(&ListParams::default().labels(&selector)).await?;
            if left.items.is_empty() {
                break;
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} {name} pods still running after {timeout:?}; the nodes' capture is left \
                     in place (see kubectl get pods -n {NAMESPACE} -l {selector})",
                    left.items.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    daemonsets
        .patch(
            CLEANUP,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cleanup),
        )
        .await
        .with_context(|| format!("creating DaemonSet/{CLEANUP}"))?;
    println!(
        "DaemonSet/{CLEANUP} created: removing ztunnel's eBPF capture{} on every node",
        if agent.is_some() { " and weft-cni" } else { "" }
    );
    let outcome = wait_done(&daemonsets, start, timeout).await;
    daemonsets
        .delete(CLEANUP, &DeleteParams::background())
        .await
        .with_context(|| format!("deleting DaemonSet/{CLEANUP}"))?;
    outcome?;
    println!("DaemonSet/{CLEANUP} deleted");
    Ok(())
}

/// The container `name` of `daemonset`'s pod template, and the template.
fn container<'a>(
    daemonset: &'a DaemonSet,
    name: &str,
) -> anyhow::Result<(&'a PodSpec, &'a Container)> {
    let what = daemonset.metadata.name.as_deref().unwrap_or_default();
    let template = daemonset
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .with_context(|| format!("DaemonSet/{what} has no pod template"))?;
    let container = template
        .containers
        .iter()
        .find(|c| c.name == name)
        .with_context(|| format!("DaemonSet/{what} has no container named {name}"))?;
    Ok((template, container))
}

/// Sets `value` for `name` in `container`'s environment.
fn set_env(container: &mut Container, name: &str, value: Option<String>) {
    if let Some(value) = value {
        let env = container.env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != name);
        env.push(EnvVar {
            name: name.into(),
            value: Some(value),
            ..Default::default()
        });
    }
}

fn env_of(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

/// Replaces `volumes`' entries of the same names by `from`'s.
fn take_volumes(volumes: &mut Vec<Volume>, from: &PodSpec, names: &[&str]) {
    for name in names {
        if let Some(volume) = from.volumes.iter().flatten().find(|v| v.name == *name) {
            volumes.retain(|v| v.name != *name);
            volumes.push(volume.clone());
        }
    }
}

/// The cleanup DaemonSet for the ztunnel DaemonSet `ztunnel` (its image,
/// its pin directory and its bpffs volume) and the node agent's `agent`
/// (its image and CNI directories; without one, the plugin step is left
/// out).
fn cleanup_daemonset(ztunnel: &DaemonSet, agent: Option<&DaemonSet>) -> anyhow::Result<DaemonSet> {
    let (ztunnel_pod, ztunnel_container) = container(ztunnel, ZTUNNEL)?;
    let image = ztunnel_container
        .image
        .clone()
        .context("DaemonSet/ztunnel's container has no image")?;
    let pin_dir = env_of(ztunnel_container, "WEFT_BPF_PIN_DIR");
    let agent = agent.map(|a| container(a, "node-agent")).transpose()?;
    let mut cleanup: DaemonSet = serde_yaml::from_str(TEMPLATE).context("the cleanup template")?;
    let spec = cleanup
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .context("the cleanup template has no pod spec")?;
    let init = spec.init_containers.get_or_insert_with(Vec::new);
    if agent.is_none() {
        init.retain(|c| c.name != "remove-cni");
    }
    for container in init.iter_mut().chain(&mut spec.containers) {
        if container.name == "remove-cni" {
            let Some((agent_pod, agent_container)) = agent else {
                continue;
            };
            container.image = agent_container.image.clone();
            for name in [
                "WEFT_CNI_CONF_DIR",
                "WEFT_CNI_BIN_DIR",
                "WEFT_ZDS_SOCKET",
                "WEFT_CNI_SOCKET",
            ] {
                set_env(container, name, env_of(agent_container, name));
            }
            let volumes = spec.volumes.get_or_insert_with(Vec::new);
            take_volumes(
                volumes,
                agent_pod,
                &["cni-bin", "cni-conf", "zds", "cni-socket"],
            );
        } else {
            container.image = Some(image.clone());
            set_env(container, "WEFT_BPF_PIN_DIR", pin_dir.clone());
        }
    }
    if agent.is_none() {
        if let Some(volumes) = spec.volumes.as_mut() {
            volumes.retain(|v| {
                !["cni-bin", "cni-conf", "zds", "cni-socket"].contains(&v.name.as_str())
            });
        }
    }
    let volumes = spec.volumes.get_or_insert_with(Vec::new);
    take_volumes(volumes, ztunnel_pod, &["bpffs"]);
    Ok(cleanup)
}

/// Until every node's cleanup pod is ready (its `ztunnel uninstall` done).
async fn wait_done(
    daemonsets: &Api<DaemonSet>,
    start: Instant,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let cleanup = daemonsets.get(CLEANUP).await?;
        let generation = cleanup.metadata.generation.unwrap_or(0);
        let status = cleanup.status.unwrap_or_default();
        let observed = status.observed_generation.unwrap_or(0) >= generation;
        let (ready, nodes) = (status.number_ready, status.desired_number_scheduled);
        let line = format!("ztunnel's capture removed on {ready}/{nodes} nodes");
        if observed && line != last {
            println!("waiting: {line}");
            last = line.clone();
        }
        if observed && ready >= nodes {
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "{line} after {timeout:?}; on the others run `ztunnel uninstall` (see kubectl \
                 get pods -n {NAMESPACE} -l app={CLEANUP} and their remove-pins logs)"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
