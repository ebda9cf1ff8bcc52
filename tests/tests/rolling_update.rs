//! ztunnel replaced as a DaemonSet rolling update replaces it: the new one
//! starts beside the old on the node, connects to the node agent, takes
//! its snapshot and binds every pod's ports beside the old one's
//! (SO_REUSEPORT); the old one gets SIGTERM, closes its listeners, drains
//! and exits. Under traffic, six times over both nodes, in both capture
//! modes: no connection bypasses the mesh (the enrolled client's payload
//! never crosses the wire in clear; a pod that policy refuses never
//! reaches the server), no pod is lost, and traffic flows afterwards.
//!
//! On a Kubernetes cluster (real node agents, pods run by the harness as
//! kubelet), the same checks hold when a ztunnel is killed halfway through
//! its update and the node agent restarts meanwhile, and when a node
//! reboots: its pods come back only through weft-cni, captured before
//! their command starts.

#[macro_use]
mod support;

use std::time::Duration;

use support::{
    binaries,
    churn::{self, UnderTraffic},
    cluster,
};
use weft_tests::{
    mesh::{Mesh, MeshOptions},
    privilege::require_privileged,
    processes::eventually,
};
use ztunnel::capture::CaptureMode;

async fn rolling_updates_under_traffic_never_bypass(capture: CaptureMode) -> anyhow::Result<()> {
    require_privileged();
    let mut mesh = Mesh::start_with(
        churn::topology()?,
        churn::CONFIG,
        binaries(),
        MeshOptions {
            capture,
            ..MeshOptions::default()
        },
    )
    .await?;
    let target = churn::serve(&mesh).await?;
    let traffic = UnderTraffic::start(&mesh, target, "ROLLING-UPDATE-PAYLOAD-77c1").await?;
    for round in 0..6 {
        let node = if round % 2 == 0 { "n1" } else { "n2" };
        tokio::time::sleep(Duration::from_millis(200)).await;
        mesh.rolling_update_ztunnel(node).await?;
        // No pod lost: the new ztunnel serves what the old one did.
        let dump = mesh.ztunnel(node).config_dump().await?;
        let pods: Vec<&str> = dump["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["name"].as_str())
            .collect();
        let expected = if node == "n1" { "client" } else { "server" };
        assert_eq!(pods, [expected], "round {round}: {node}'s pods");
    }
    traffic.finish().await?;
    churn::check(&mesh, target, "last").await
}

/// The names of the pods `node`'s ztunnel serves, and how many snapshots
/// it has taken from its node agent.
async fn served(mesh: &Mesh, node: &str) -> anyhow::Result<(Vec<String>, u64)> {
    let dump = mesh.ztunnel(node).config_dump().await?;
    let pods = dump["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    Ok((pods, dump["node_agent"]["snapshots"].as_u64().unwrap_or(0)))
}

/// Waits until `node`'s ztunnel has taken `snapshots` snapshots, is
/// connected to its node agent and ready.
async fn resynced(mesh: &Mesh, node: &str, snapshots: u64) -> anyhow::Result<()> {
    let z = mesh.ztunnel(node);
    eventually(
        &format!("{node}'s ztunnel to take snapshot {snapshots}"),
        Duration::from_secs(20),
        || async {
            let dump = z.config_dump().await.ok()?;
            (dump["node_agent"]["snapshots"] == snapshots
                && dump["node_agent"]["connected"] == true)
                .then_some(())
        },
    )
    .await?;
    mesh.wait_ready(node).await
}

/// The churn mesh on a Kubernetes cluster.
async fn cluster_mesh(capture: CaptureMode) -> anyhow::Result<Mesh> {
    Mesh::launch(
        churn::builder(),
        churn::CONFIG,
        binaries(),
        MeshOptions {
            capture,
            source: cluster(),
            ..MeshOptions::default()
        },
    )
    .await
}

/// A ztunnel SIGKILLed halfway through its rolling update (its successor
/// already beside it), then the node agent killed and restarted while the
/// successor runs, on both nodes in turn, under traffic: the successor
/// takes the restarted agent's snapshot (rebuilt from the API server and
/// `/proc`), no pod is released or lost, and nothing bypasses the mesh.
async fn a_ztunnel_killed_mid_update_and_a_restarted_agent_lose_nothing(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    require_privileged();
    let mut mesh = cluster_mesh(capture).await?;
    let target = churn::serve(&mesh).await?;
    let traffic = UnderTraffic::start(&mesh, target, "KILLED-MID-UPDATE-PAYLOAD-4e9d").await?;
    for (node, pod) in [("n1", "client"), ("n2", "server")] {
        let mut old = mesh
            .ztunnels
            .remove(node)
            .expect("every node runs a ztunnel");
        mesh.start_ztunnel(node).await?;
        mesh.wait_ready(node).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        old.process.kill().await?;
        mesh.stop_agent(node).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        mesh.start_agent(node, &[]).await?;
        resynced(&mesh, node, 2).await?;
        let (pods, _) = served(&mesh, node).await?;
        assert_eq!(pods, [pod], "{node}'s pods after the agent's restart");
        assert!(
            mesh.ztunnel(node)
                .process
                .lines_with(&["pod released"])
                .is_empty(),
            "{node}'s ztunnel released a pod across the agent's restart"
        );
    }
    traffic.finish().await?;
    churn::check(&mesh, target, "after").await
}

/// The cluster's CNI rewrites n1's configuration without weft-cni, and the
/// agent puts it back. Then n1 reboots: every process on it dies, its pods' sandboxes, its bpffs
/// pins and its /run sockets are gone; its CNI configuration (on disk)
/// still chains weft-cni. Kubelet comes back before the mesh's DaemonSets
/// and recreates the pods' sandboxes: an enrolled pod's ADD fails until
/// the node agent and ztunnel are up (so its command never runs
/// uncaptured) and succeeds after; its first connection goes through the
/// mesh, and the pod outside it is refused by policy as before.
async fn a_rebooted_node_recaptures_its_pods_before_they_run(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    require_privileged();
    let mut mesh = cluster_mesh(capture).await?;
    let target = churn::serve(&mesh).await?;
    // The cluster's CNI rewrites its configuration (as its installer does
    // when it starts): the running agent chains weft-cni in again.
    let files = mesh.cluster().cni_files("n1").clone();
    let primary = files.conf_dir.join("10-bridge.conflist");
    let mut list = files.read()?;
    list["plugins"]
        .as_array_mut()
        .expect("a conflist has plugins")
        .retain(|p| p["type"] != "weft-cni");
    std::fs::write(&primary, serde_json::to_vec(&list)?)?;
    mesh.cluster().wait_chained("n1").await?;

    mesh.kill_ztunnel("n1").await?;
    mesh.stop_agent("n1").await?;
    mesh.stop_pod("demo/client")?;
    mesh.stop_pod("legacy/outsider")?;
    let pins = mesh.topology.bpf_pin_dir("n1");
    if pins.exists() {
        std::fs::remove_dir_all(&pins)?;
    }
    let socket = mesh.cluster().zds_socket("n1");
    for stale in [socket.clone(), socket.with_file_name("cni.sock")] {
        let _ = std::fs::remove_file(stale);
    }

    // Kubelet first: the enrolled pod's sandbox fails (weft-cni cannot
    // reach the node agent) and is torn down again, as kubelet retries.
    let err = mesh
        .topology
        .add_pod("demo/client", "n1")
        .expect_err("an enrolled pod's ADD with no node agent");
    assert!(err.to_string().contains("unreachable"), "{err}");
    mesh.topology.remove_pod("demo/client")?;

    // The DaemonSets come up; kubelet's retries now succeed.
    mesh.start_agent("n1", &[]).await?;
    mesh.start_ztunnel("n1").await?;
    mesh.wait_ready("n1").await?;
    mesh.run_pod("demo/client", "n1").await?;
    mesh.run_pod("legacy/outsider", "n1").await?;
    let (pods, _) = served(&mesh, "n1").await?;
    assert_eq!(pods, ["client"]);
    mesh.enroll("demo/client", "client").await?;

    // The first connection the recreated client makes is the mesh's.
    let traffic = UnderTraffic::start(&mesh, target, "AFTER-REBOOT-PAYLOAD-0b57").await?;
    support::logged(
        mesh.ztunnel("n1"),
        &[
            "direction=\"outbound\"",
            "src.workload=client",
            "connection complete",
        ],
    )
    .await?;
    traffic.finish().await?;
    churn::check(&mesh, target, "after the reboot").await
}

in_both_capture_modes!(rolling_updates_under_traffic_never_bypass);

mod cluster {
    mod ebpf {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_ztunnel_killed_mid_update_and_a_restarted_agent_lose_nothing(
        ) -> anyhow::Result<()> {
            super::super::a_ztunnel_killed_mid_update_and_a_restarted_agent_lose_nothing(
                ztunnel::capture::CaptureMode::Ebpf,
            )
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_rebooted_node_recaptures_its_pods_before_they_run() -> anyhow::Result<()> {
            super::super::a_rebooted_node_recaptures_its_pods_before_they_run(
                ztunnel::capture::CaptureMode::Ebpf,
            )
            .await
        }
    }
    mod iptables {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_ztunnel_killed_mid_update_and_a_restarted_agent_lose_nothing(
        ) -> anyhow::Result<()> {
            super::super::a_ztunnel_killed_mid_update_and_a_restarted_agent_lose_nothing(
                ztunnel::capture::CaptureMode::Iptables,
            )
            .await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_rebooted_node_recaptures_its_pods_before_they_run() -> anyhow::Result<()> {
            super::super::a_rebooted_node_recaptures_its_pods_before_they_run(
                ztunnel::capture::CaptureMode::Iptables,
            )
            .await
        }
    }
}
