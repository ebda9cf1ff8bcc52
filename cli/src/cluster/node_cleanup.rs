//! What `weft uninstall` removes from the nodes themselves: the eBPF
//! capture ztunnel pins in each node's bpffs, on purpose, so that a
//! restarted or upgraded ztunnel adopts it and pods stay captured. Left
//! behind, it would keep steering enrolled pods' traffic to a ztunnel that
//! is gone.
//!
//! The ztunnel DaemonSet is stopped first (nothing may pin again), then a
//! DaemonSet `weft-node-cleanup` runs `ztunnel uninstall` on every node
//! from ztunnel's own image, with its pin directory and bpffs mount. Its
//! pods are ready once that init container has succeeded; when all are,
//! the DaemonSet is removed. `deploy/uninstall/node-cleanup.yaml` is the
//! same DaemonSet for those who installed with kubectl.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{EnvVar, Pod},
};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams},
    Client,
};

use super::install::FIELD_MANAGER;

const NAMESPACE: &str = "weft-system";
const ZTUNNEL: &str = "ztunnel";
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
    let cleanup = cleanup_daemonset(&ztunnel)?;
    daemonsets
        .delete(ZTUNNEL, &DeleteParams::background())
        .await
        .with_context(|| format!("deleting DaemonSet/{ZTUNNEL}"))?;
    println!("DaemonSet/{ZTUNNEL} deleted");
    let start = Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let selector = format!("app={ZTUNNEL}");
    loop {
        let left = pods.list(&ListParams::default().labels(&selector)).await?;
        if left.items.is_empty() {
            break;
        }
        if start.elapsed() > timeout {
            bail!(
                "{} ztunnel pods still running after {timeout:?}; the nodes' capture is left in \
                 place (see kubectl get pods -n {NAMESPACE} -l {selector})",
                left.items.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    daemonsets
        .patch(
            CLEANUP,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&cleanup),
        )
        .await
        .with_context(|| format!("creating DaemonSet/{CLEANUP}"))?;
    println!("DaemonSet/{CLEANUP} created: removing ztunnel's eBPF capture on every node");
    let outcome = wait_done(&daemonsets, start, timeout).await;
    daemonsets
        .delete(CLEANUP, &DeleteParams::background())
        .await
        .with_context(|| format!("deleting DaemonSet/{CLEANUP}"))?;
    outcome?;
    println!("DaemonSet/{CLEANUP} deleted");
    Ok(())
}

/// The cleanup DaemonSet for the ztunnel DaemonSet `ztunnel`: its image,
/// its pin directory and its bpffs volume.
fn cleanup_daemonset(ztunnel: &DaemonSet) -> anyhow::Result<DaemonSet> {
    let template = ztunnel
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .context("DaemonSet/ztunnel has no pod template")?;
    let container = template
        .containers
        .iter()
        .find(|c| c.name == ZTUNNEL)
        .context("DaemonSet/ztunnel has no container named ztunnel")?;
    let image = container
        .image
        .clone()
        .context("DaemonSet/ztunnel's container has no image")?;
    let pin_dir = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "WEFT_BPF_PIN_DIR")
        .and_then(|e| e.value.clone());
    let bpffs = template
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "bpffs")
        .cloned();
    let mut cleanup: DaemonSet = serde_yaml::from_str(TEMPLATE).context("the cleanup template")?;
    let spec = cleanup
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .context("the cleanup template has no pod spec")?;
    for container in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(&mut spec.containers)
    {
        container.image = Some(image.clone());
        if let Some(dir) = &pin_dir {
            let env = container.env.get_or_insert_with(Vec::new);
            env.retain(|e| e.name != "WEFT_BPF_PIN_DIR");
            env.push(EnvVar {
                name: "WEFT_BPF_PIN_DIR".into(),
                value: Some(dir.clone()),
                ..Default::default()
            });
        }
    }
    if let (Some(bpffs), Some(volumes)) = (bpffs, spec.volumes.as_mut()) {
        volumes.retain(|v| v.name != "bpffs");
        volumes.push(bpffs);
    }
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
