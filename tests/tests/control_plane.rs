//! The control service and a ztunnel as real processes: initial sync, the
//! control service SIGKILLed while ztunnel is connected
//! (ztunnel keeps serving from its last config) and restarted (ztunnel
//! resyncs, including changes made while it was down).

use std::{path::Path, time::Duration};

use weft_control::auth::issue_node_token;
use weft_tests::processes::{eventually, http_request, ControlProcess, ZtunnelProcess};

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec: {nodeName: n1, serviceAccountName: client}
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec: {nodeName: n2, serviceAccountName: server}
status: {podIP: 198.18.2.2}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec: {selector: {app: server}, ports: [{port: 80, targetPort: 8080}]}
"#;

const CONTROL: &str = env!("CARGO_BIN_EXE_wt-control");
const ZTUNNEL: &str = env!("CARGO_BIN_EXE_wt-ztunnel");

fn workload_names(dump: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = dump["workloads"]
        .as_array()
        .map(|ws| {
            ws.iter()
                .filter_map(|w| w["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_rides_out_a_control_service_crash_and_resyncs() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (config_dir, state_dir) = (dir.path().join("config"), dir.path().join("state"));
    std::fs::create_dir_all(&config_dir)?;
    std::fs::write(config_dir.join("mesh.yaml"), MESH)?;
    issue_node_token(&state_dir.join("nodes"), "n1")?;
    let control = ControlProcess::start(
        Path::new(CONTROL),
        None,
        &config_dir,
        &state_dir,
        "127.0.0.1:0".parse()?,
    )
    .await?;
    let addr = control.addr;
    // The node agent ztunnel connects to; it has no pods to hand over.
    let _agent = weft_zds::agent::Agent::bind(&dir.path().join("n1.sock"))?;
    let ztunnel = ZtunnelProcess::start(
        Path::new(ZTUNNEL),
        "n1",
        None,
        &dir.path().join("n1.sock"),
        &control,
    )
    .await?;

    // Ready once xDS synced (no pods are enrolled, so no certificates are due).
    eventually("ztunnel ready", Duration::from_secs(20), || async {
        (ztunnel.readiness().await.ok()? == 200).then_some(())
    })
    .await?;
    let dump = ztunnel.config_dump().await?;
    assert_eq!(workload_names(&dump), ["client", "server"]);
    assert_eq!(
        dump["services"][0]["hostname"],
        "server.demo.svc.cluster.local"
    );
    // Crash the control service.
    let mut control = control;
    control.process.kill().await?;
    eventually("ztunnel to notice", Duration::from_secs(10), || async {
        let dump = ztunnel.config_dump().await.ok()?;
        (dump["xds"]["connected"] == false).then_some(())
    })
    .await?;
    let dump = ztunnel.config_dump().await?;
    assert_eq!(
        workload_names(&dump),
        ["client", "server"],
        "the last config is kept"
    );
    assert_eq!(ztunnel.readiness().await?, 200, "still serving");

    // Change the config while the control service is down, then restart it.
    std::fs::write(
        config_dir.join("more.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: demo}\nspec: {nodeName: n2}\nstatus: {podIP: 198.18.2.9}\n",
    )?;
    let control =
        ControlProcess::start(Path::new(CONTROL), None, &config_dir, &state_dir, addr).await?;
    let dump = eventually("the resync", Duration::from_secs(20), || async {
        let dump = ztunnel.config_dump().await.ok()?;
        (workload_names(&dump).len() == 3 && dump["xds"]["connected"] == true).then_some(dump)
    })
    .await?;
    assert_eq!(workload_names(&dump), ["client", "late", "server"]);
    assert_eq!(dump["xds"]["nacks"], 0);

    // Admin: the log level changes at run time, and /quitquitquit stops it.
    let admin = ztunnel.admin;
    let (status, body) = http_request(None, "POST", admin, "/logging?level=debug").await?;
    assert_eq!((status, body.trim()), (200, "log level set to debug"));
    let (status, _) = http_request(None, "POST", admin, "/logging?level=not%20a%20filter[").await?;
    assert_eq!(status, 400);
    let (status, _) = http_request(None, "POST", admin, "/quitquitquit").await?;
    assert_eq!(status, 200);
    let mut ztunnel = ztunnel;
    let exit = tokio::time::timeout(Duration::from_secs(10), ztunnel.process.wait()).await??;
    assert!(
        exit.success(),
        "ztunnel exits cleanly on /quitquitquit: {exit}"
    );
    drop(control);
    Ok(())
}
