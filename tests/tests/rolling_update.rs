//! ztunnel replaced as a DaemonSet rolling update replaces it: the new one
//! starts beside the old on the node, connects to the node agent, takes
//! its snapshot and binds every pod's ports beside the old one's
//! (SO_REUSEPORT); the old one gets SIGTERM, closes its listeners, drains
//! and exits. Under traffic, six times over both nodes, in both capture
//! modes: no connection bypasses the mesh (the enrolled client's payload
//! never crosses the wire in clear; a pod that policy refuses never
//! reaches the server), no pod is lost, and traffic flows afterwards.

#[macro_use]
mod support;

use std::time::Duration;

use support::{
    binaries,
    churn::{self, UnderTraffic},
};
use weft_tests::{
    mesh::{Mesh, MeshOptions},
    privilege::require_privileged,
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

in_both_capture_modes!(rolling_updates_under_traffic_never_bypass);
