//! ztunnel's readiness: 503 until xDS has synced and every enrolled pod's
//! certificate is held, 200 then, and 503 again when a certificate is lost
//! (expired while the CA is away), until it is renewed.

use std::{path::Path, time::Duration};

use weft_tests::{
    mesh::{Binaries, Mesh, MeshOptions},
    privilege::require_privileged,
    processes::eventually,
    topology::Topology,
};

const CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: demo}
spec: {nodeName: n1, serviceAccountName: app}
status: {podIP: "${demo/app}"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_sync_and_certificates() -> anyhow::Result<()> {
    require_privileged();
    // This test also checks JSON logs (the only test in this binary, so
    // the variable reaches no other).
    std::env::set_var("WEFT_LOG_FORMAT", "json");
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .pod("demo/app", "n1")
        .build()?;
    let binaries = Binaries {
        control: Path::new(env!("CARGO_BIN_EXE_wt-control")),
        ztunnel: Path::new(env!("CARGO_BIN_EXE_wt-ztunnel")),
    };
    // Certificates that live 4 s: renewed every 2 s while the CA is there.
    let mut mesh = Mesh::start_with(
        topology,
        CONFIG,
        binaries,
        MeshOptions {
            control_flags: &["--cert-lifetime-secs", "4"],
            ..MeshOptions::default()
        },
    )
    .await?;
    let z = mesh.ztunnel("n1");
    assert_eq!(
        z.readiness().await?,
        200,
        "synced, and no pod needs a certificate yet"
    );
    mesh.enroll("demo/app", "app").await?;
    assert_eq!(z.readiness().await?, 200);
    let enrolled = z
        .process
        .output()
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|json| json["message"] == "pod enrolled")
        .expect("a JSON log line for the enrollment");
    assert_eq!(
        enrolled["identity"],
        "spiffe://cluster.local/ns/demo/sa/app"
    );
    assert_eq!(enrolled["level"], "INFO");

    mesh.control.process.kill().await?;
    let z = mesh.ztunnel("n1");
    eventually(
        "readiness to drop once the certificate expires",
        Duration::from_secs(15),
        || async { (z.readiness().await.ok()? == 503).then_some(()) },
    )
    .await?;
    let (_, body) =
        weft_tests::processes::http_get(z.netns.as_deref(), z.readiness, "/healthz/ready").await?;
    assert!(
        body.contains("no valid certificate for spiffe://cluster.local/ns/demo/sa/app"),
        "{body}"
    );
    let metrics = z.metrics_text().await?;
    assert!(
        metrics.contains("weft_ztunnel_xds_connected 0"),
        "{metrics}"
    );

    mesh.restart_control().await?;
    let z = mesh.ztunnel("n1");
    eventually(
        "readiness to return with a renewed certificate",
        Duration::from_secs(30),
        || async { (z.readiness().await.ok()? == 200).then_some(()) },
    )
    .await?;
    let metrics = z.metrics_text().await?;
    assert!(metrics.contains("weft_ztunnel_certificate_expiry_timestamp_seconds{identity=\"spiffe://cluster.local/ns/demo/sa/app\"}"), "{metrics}");
    assert!(
        metrics.contains("weft_ztunnel_capture_mode{mode=\"ebpf\"} 1"),
        "{metrics}"
    );
    Ok(())
}
