//! A pod cannot turn ztunnel against itself: connections to ztunnel's own
//! ports and to the pod's own address are refused without being proxied
//! anywhere (once, a single connect to 127.0.0.1:15001 became 41,222
//! connections and exhausted ztunnel's descriptors), and a pod that opens
//! connections past its share is refused while other pods are served.
//!
//! Every test runs twice, once per capture mode (`iptables::…`, `ebpf::…`).

#[macro_use]
mod support;

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use support::{binaries, probe};
use weft_tests::{
    apps,
    mesh::{Mesh, MeshOptions},
    privilege::require_privileged,
    processes::eventually,
    topology::{Pod, Topology},
};
use ztunnel::capture::CaptureMode;

const CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata: {name: attacker, namespace: demo, labels: {app: attacker}}
spec: {nodeName: n1, serviceAccountName: attacker}
status: {podIP: "${demo/attacker}"}
---
apiVersion: v1
kind: Pod
metadata: {name: bystander, namespace: demo, labels: {app: bystander}}
spec: {nodeName: n1, serviceAccountName: bystander}
status: {podIP: "${demo/bystander}"}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec: {nodeName: n2, serviceAccountName: server}
status: {podIP: "${demo/server}"}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: legacy, labels: {app: outsider}}
spec: {nodeName: n2}
status: {podIP: "${legacy/outsider}"}
"#;

async fn mesh(capture: CaptureMode, ztunnel_flags: &[&str]) -> anyhow::Result<Mesh> {
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("demo/attacker", "n1")
        .pod("demo/bystander", "n1")
        .pod("demo/server", "n2")
        .pod("legacy/outsider", "n2")
        .build()?;
    let mesh = Mesh::start_with(
        topology,
        CONFIG,
        binaries(),
        MeshOptions {
            capture,
            ztunnel_flags,
            ..MeshOptions::default()
        },
    )
    .await?;
    for (pod, sa) in [
        ("demo/attacker", "attacker"),
        ("demo/bystander", "bystander"),
        ("demo/server", "server"),
    ] {
        mesh.enroll(pod, sa).await?;
    }
    for (qualified, name) in [("demo/server", "server"), ("legacy/outsider", "outsider")] {
        let pod = mesh.topology.pod(qualified);
        let listener = pod.enter(|| std::net::TcpListener::bind((pod.ip(), 8080)))??;
        apps::spawn_echo(listener, name)?;
    }
    Ok(mesh)
}

/// Runs `weft-probe VERB ADDR --count N` as a process of `pod`; its report.
async fn probe_count(
    pod: &Pod,
    verb: &str,
    addr: SocketAddr,
    count: usize,
) -> anyhow::Result<serde_json::Value> {
    let mut cmd = pod.command(env!("CARGO_BIN_EXE_weft-probe"))?;
    cmd.args([verb, &addr.to_string(), "--count", &count.to_string()]);
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "weft-probe {verb} {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stderr.is_empty() {
        println!(
            "weft-probe {verb} {addr}: {}",
            stderr.lines().take(3).collect::<Vec<_>>().join(" | ")
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "weft-probe printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Probes from `pod` to `dst` until `stop` is set; fails on the first
/// failure; returns how many succeeded.
async fn keep_probing(
    pod: &Pod,
    dst: SocketAddr,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<usize> {
    let mut served = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let report = probe(pod, dst, "still served?")
            .await
            .with_context(|| format!("after {served} probes"))?;
        anyhow::ensure!(report.reply.ends_with("still served?"), "{report:?}");
        served += 1;
    }
    Ok(served)
}

/// Floods each target from `pod` with 1,000 connections; each must be
/// refused (or reach nothing); returns the peak of `z`'s descriptors.
async fn flood_all(
    pod: &Pod,
    targets: &[SocketAddr],
    z: &weft_tests::processes::ZtunnelProcess,
    baseline: usize,
) -> anyhow::Result<usize> {
    let mut peak = baseline;
    for target in targets {
        let flood = probe_count(pod, "flood", *target, 1000);
        tokio::pin!(flood);
        let report = loop {
            tokio::select! {
                report = &mut flood => break report?,
                () = tokio::time::sleep(Duration::from_millis(50)) => {
                    peak = peak.max(z.open_fds()?);
                }
            }
        };
        let outcomes: usize = report
            .as_object()
            .context("a JSON object")?
            .iter()
            .map(|(outcome, n)| {
                assert!(
                    matches!(
                        outcome.as_str(),
                        "refused" | "reset" | "closed" | "tls_alert"
                    ),
                    "{target}: a connection ended as {outcome:?}: {report}"
                );
                n.as_u64().unwrap_or(0) as usize
            })
            .sum();
        assert_eq!(outcomes, 1000, "{target}: {report}");
        println!("{target}: {report}");
    }
    Ok(peak)
}

async fn connects_to_ztunnel_itself_are_refused_and_cost_nothing(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, &[]).await?;
    let attacker = mesh.topology.pod("demo/attacker");
    let bystander = mesh.topology.pod("demo/bystander");
    let server = mesh.topology.pod("demo/server");
    let z = mesh.ztunnel("n1");
    let baseline = z.open_fds()?;

    let stop = std::sync::atomic::AtomicBool::new(false);
    let pod_ip = attacker.ip();
    let targets: Vec<SocketAddr> = [15001, 15006, 15008]
        .into_iter()
        .flat_map(|port| {
            [
                SocketAddr::from(([127, 0, 0, 1], port)),
                SocketAddr::from((pod_ip, port)),
            ]
        })
        .chain([15000, 15020, 15021].map(|port| SocketAddr::from(([127, 0, 0, 1], port))))
        .collect();
    let floods = async {
        // However the floods end, the bystander stops with them.
        let flooded = flood_all(attacker, &targets, z, baseline).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flooded
    };
    let (peak, served) = tokio::join!(
        floods,
        keep_probing(bystander, SocketAddr::from((server.ip(), 8080)), &stop)
    );
    let (peak, served) = (peak?, served?);
    assert!(served > 0, "the bystander was served while the attack ran");
    println!("ztunnel fds: {baseline} before, {peak} at most during the floods; bystander served {served} probes");
    assert!(
        peak <= baseline + 64,
        "ztunnel's descriptors grew from {baseline} to {peak} during the floods"
    );
    eventually(
        "ztunnel's descriptors back to the baseline",
        Duration::from_secs(10),
        || async { (z.open_fds().ok()? <= baseline + 4).then_some(()) },
    )
    .await?;

    // Counted, and logged within limits.
    let dump = z.config_dump().await?;
    let refused = &dump["refused"];
    let own = refused["own_endpoint"].as_u64().unwrap_or(0)
        + refused["no_original_destination"].as_u64().unwrap_or(0);
    assert!(own >= 3000, "refusals counted: {refused}");
    let lines = z
        .process
        .lines_with(&["connection failed", "reached ztunnel directly"])
        .len()
        + z.process
            .lines_with(&["connection failed", "original destination of a connection"])
            .len();
    assert!(
        (lines as u64) < own / 5,
        "{lines} log lines for {own} refusals: the log is not rate-limited"
    );
    // The next refusal logged, a window later, says how many were not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    probe_count(
        attacker,
        "flood",
        SocketAddr::from(([127, 0, 0, 1], 15006)),
        1,
    )
    .await?;
    assert!(
        !z.process
            .lines_with(&["more like it were not logged"])
            .is_empty(),
        "the log says how many refusals it left out"
    );
    // And the mesh still works for the attacker's own legitimate traffic.
    let report = probe(attacker, SocketAddr::from((server.ip(), 8080)), "after").await?;
    assert_eq!(report.reply, format!("server saw {pod_ip}: after"));
    Ok(())
}

async fn a_pod_past_its_share_is_refused_while_others_are_served(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, &["--max-connections-per-pod", "20"]).await?;
    let attacker = mesh.topology.pod("demo/attacker");
    let bystander = mesh.topology.pod("demo/bystander");
    let (server, outsider) = (
        mesh.topology.pod("demo/server"),
        mesh.topology.pod("legacy/outsider"),
    );
    let dump = mesh.ztunnel("n1").config_dump().await?;
    assert_eq!(
        dump["limits"]["connections_per_pod"], 20,
        "{}",
        dump["limits"]
    );
    assert!(dump["limits"]["open_files"].as_u64().unwrap_or(0) >= 1024);

    // The attacker holds 30 connections to a destination outside the mesh.
    let mut cmd = attacker.command(env!("CARGO_BIN_EXE_weft-probe"))?;
    cmd.args([
        "hold",
        &SocketAddr::from((outsider.ip(), 8080)).to_string(),
        "--count",
        "30",
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped());
    let mut holder = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        holder.stdout.take().context("piped")?,
    ));
    let report: serde_json::Value =
        serde_json::from_str(&lines.next_line().await?.context("a report")?)?;
    assert_eq!(report["open"], 20, "the attacker keeps its share: {report}");
    let turned_away =
        report["closed"].as_u64().unwrap_or(0) + report["refused"].as_u64().unwrap_or(0);
    assert_eq!(turned_away, 10, "the rest is refused: {report}");

    // Meanwhile another pod on the same node is served, through the tunnel
    // and outside it.
    let reply = probe(bystander, SocketAddr::from((server.ip(), 8080)), "mesh").await?;
    assert!(reply.reply.ends_with("mesh"), "{reply:?}");
    let reply = probe(bystander, SocketAddr::from((outsider.ip(), 8080)), "plain").await?;
    assert!(reply.reply.ends_with("plain"), "{reply:?}");
    // The attacker itself gets no more until it lets go.
    let refused = probe(attacker, SocketAddr::from((server.ip(), 8080)), "one more").await;
    assert!(
        refused.is_err() || refused.as_ref().is_ok_and(|r| r.reply.is_empty()),
        "served past its share: {refused:?}"
    );
    let dump = mesh.ztunnel("n1").config_dump().await?;
    assert!(
        dump["refused"]["pod_share"].as_u64().unwrap_or(0) >= 11,
        "{}",
        dump["refused"]
    );
    support::logged(
        mesh.ztunnel("n1"),
        &["pod demo/attacker already holds 20 connections"],
    )
    .await?;

    drop(holder.stdin.take());
    holder.wait().await?;
    let report = eventually(
        "the attacker served again",
        Duration::from_secs(10),
        || async {
            probe(attacker, SocketAddr::from((server.ip(), 8080)), "again")
                .await
                .ok()
        },
    )
    .await?;
    assert!(report.reply.ends_with("again"), "{report:?}");
    Ok(())
}

in_both_capture_modes!(
    connects_to_ztunnel_itself_are_refused_and_cost_nothing,
    a_pod_past_its_share_is_refused_while_others_are_served,
);
