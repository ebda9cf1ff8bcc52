//! Cross-node data-path benchmarks: the same two nodes carry a pair of
//! enrolled pods (mesh: both ztunnels, HBONE, mTLS) and a pair of
//! unenrolled ones (direct), measured in the same run.
//!
//! - `throughput`: one iperf3 stream for a few seconds; ratio mesh/direct.
//!   Target ≥ 0.35×.
//! - `rr-latency`: 1 KiB request / 1 KiB response, sequential on one
//!   connection; p50 and p99, ratio mesh/direct.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ms;
use crate::{
    mesh::{Binaries, Mesh},
    topology::{Pod, Topology},
};

const CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: direct}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: mesh}
spec: {nodeName: n1, serviceAccountName: client}
status: {podIP: "${mesh/client}"}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: mesh}
spec: {nodeName: n2, serviceAccountName: server}
status: {podIP: "${mesh/server}"}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: direct}
spec: {nodeName: n1}
status: {podIP: "${direct/client}"}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: direct}
spec: {nodeName: n2}
status: {podIP: "${direct/server}"}
"#;

/// Builds the two-node mesh with both pairs, the mesh pair enrolled.
pub async fn setup(bin_dir: &Path) -> anyhow::Result<Mesh> {
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("mesh/client", "n1")
        .pod("mesh/server", "n2")
        .pod("direct/client", "n1")
        .pod("direct/server", "n2")
        .build()?;
    let mesh = Mesh::start(
        topology,
        CONFIG,
        Binaries {
            control: &bin_dir.join("wt-control"),
            ztunnel: &bin_dir.join("wt-ztunnel"),
        },
    )
    .await?;
    mesh.enroll("mesh/client", "client").await?;
    mesh.enroll("mesh/server", "server").await?;
    Ok(mesh)
}

/// One iperf3 run from `client` to `server`; bits per second received.
async fn iperf(client: &Pod, server: &Pod, seconds: u32) -> anyhow::Result<f64> {
    let mut server_cmd = tokio::process::Command::from(server.command("iperf3")?);
    server_cmd
        .args(["-s", "-1", "-p", "5201"])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null());
    let mut server_proc = server_cmd
        .spawn()
        .context("starting iperf3 (cargo xtask setup installs it)")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = tokio::process::Command::from(client.command("iperf3")?)
        .args([
            "-c",
            &server.ip().to_string(),
            "-p",
            "5201",
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .output()
        .await?;
    let _ = server_proc.wait().await;
    anyhow::ensure!(
        out.status.success(),
        "iperf3 failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 reported no throughput")
}

/// p50 and p99 of sequential 1 KiB request/response exchanges.
async fn rr(client: &Pod, server: &Pod, rounds: usize) -> anyhow::Result<(Duration, Duration)> {
    let listener = server.enter(|| std::net::TcpListener::bind((server.ip(), 7070)))??;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let serve = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 1024];
        loop {
            if s.read_exact(&mut buf).await.is_err() {
                return anyhow::Ok(());
            }
            s.write_all(&buf).await?;
        }
    });
    let target = SocketAddr::from((server.ip(), 7070));
    let samples = client
        .spawn(move || async move {
            let mut s = tokio::net::TcpStream::connect(target).await?;
            s.set_nodelay(true)?;
            let request = [7u8; 1024];
            let mut reply = [0u8; 1024];
            let mut samples = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let start = Instant::now();
                s.write_all(&request).await?;
                s.read_exact(&mut reply).await?;
                samples.push(start.elapsed());
            }
            anyhow::Ok(samples)
        })?
        .join()
        .await?;
    serve.abort();
    let mut samples = samples;
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Ok((at(0.5), at(0.99)))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

pub async fn throughput(mesh: &Mesh) -> anyhow::Result<()> {
    let t = &mesh.topology;
    let (seconds, rounds) = (4, 5);
    // Alternating rounds, so a noisy neighbour hurts both sides alike; each
    // round's ratio compares runs made seconds apart.
    let (mut direct, mut meshed, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let d = iperf(t.pod("direct/client"), t.pod("direct/server"), seconds).await?;
        let m = iperf(t.pod("mesh/client"), t.pod("mesh/server"), seconds).await?;
        direct.push(d);
        meshed.push(m);
        ratios.push(m / d);
    }
    let ratio = median(&mut ratios.clone());
    println!("throughput: one TCP stream, cross-node, {rounds} alternating rounds of {seconds} s (iperf3)");
    println!(
        "  direct {:>8.2} Gbit/s (median)",
        median(&mut direct) / 1e9
    );
    println!(
        "  mesh   {:>8.2} Gbit/s (median)",
        median(&mut meshed) / 1e9
    );
    println!(
        "  ratio mesh/direct {ratio:.2}× (median; rounds: {})   target ≥ 0.35×: {}",
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" "),
        if ratio >= 0.35 { "met" } else { "MISSED" }
    );
    Ok(())
}

pub async fn rr_latency(mesh: &Mesh) -> anyhow::Result<()> {
    let t = &mesh.topology;
    let rounds = 5000;
    let (d50, d99) = rr(t.pod("direct/client"), t.pod("direct/server"), rounds).await?;
    let (m50, m99) = rr(t.pod("mesh/client"), t.pod("mesh/server"), rounds).await?;
    println!("rr-latency: 1 KiB request/response, cross-node, {rounds} sequential rounds");
    println!("  direct p50 {:>9}  p99 {:>9}", ms(d50), ms(d99));
    println!("  mesh   p50 {:>9}  p99 {:>9}", ms(m50), ms(m99));
    println!(
        "  ratio mesh/direct p50 {:.2}×, p99 {:.2}×",
        m50.as_secs_f64() / d50.as_secs_f64(),
        m99.as_secs_f64() / d99.as_secs_f64()
    );
    Ok(())
}
