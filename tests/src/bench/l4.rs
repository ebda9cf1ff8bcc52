//! Data-path benchmarks: direct (unenrolled pods) against the mesh in each
//! capture mode, measured in the same run and printed as ratios to direct.
//!
//! Three meshes run side by side, each with two nodes: iptables capture
//! (copying same-node connections), eBPF capture with the same-node splice
//! switched off (copying) and eBPF capture with it on.
//! Every mesh has an enrolled client on n1, a server on n2 (cross-node:
//! both ztunnels, HBONE, mTLS) and a server on n1 (same-node: one ztunnel,
//! no tunnel); the iptables mesh also holds the unenrolled (direct) pods.
//!
//! - `throughput`: one iperf3 stream per route for a few seconds, rounds
//!   alternating between routes. Targets: cross-node eBPF ≥ 0.35×,
//!   same-node eBPF+splice ≥ 0.9×.
//! - `rr-latency`: 1 KiB request / 1 KiB response, sequential on one
//!   connection; p50 and p99 per route.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use ztunnel::capture::CaptureMode;

use super::ms;
use crate::{
    mesh::{Binaries, Mesh, MeshOptions},
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
metadata: {name: local, namespace: mesh}
spec: {nodeName: n1, serviceAccountName: server}
status: {podIP: "${mesh/local}"}
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
---
apiVersion: v1
kind: Pod
metadata: {name: local, namespace: direct}
spec: {nodeName: n1}
status: {podIP: "${direct/local}"}
"#;

/// The three meshes the routes run through.
pub struct Bed {
    /// iptables capture, no splice; also holds the direct pods.
    iptables: Mesh,
    ebpf: Mesh,
    /// eBPF capture with `--splice false`: same-node connections copied.
    ebpf_copy: Mesh,
}

#[derive(Clone, Copy, PartialEq)]
enum Locality {
    CrossNode,
    SameNode,
}

impl Locality {
    fn describe(self) -> &'static str {
        match self {
            Locality::CrossNode => "cross-node",
            Locality::SameNode => "same-node",
        }
    }

    /// The server pod's name in each namespace.
    fn server(self) -> &'static str {
        match self {
            Locality::CrossNode => "server",
            Locality::SameNode => "local",
        }
    }

    /// The ratio a route must reach against direct, if it has a target.
    fn target(self, label: &str) -> Option<f64> {
        match (self, label) {
            (Locality::CrossNode, "ebpf") => Some(0.35),
            (Locality::SameNode, "ebpf+splice") => Some(0.9),
            _ => None,
        }
    }
}

/// A client/server pair and the mesh (and capture) between them; the first
/// route of a locality is direct.
struct Route<'a> {
    label: &'static str,
    client: &'a Pod,
    server: &'a Pod,
}

impl Bed {
    fn routes(&self, locality: Locality) -> Vec<Route<'_>> {
        fn route<'a>(label: &'static str, mesh: &'a Mesh, ns: &str, server: &str) -> Route<'a> {
            Route {
                label,
                client: mesh.topology.pod(&format!("{ns}/client")),
                server: mesh.topology.pod(&format!("{ns}/{server}")),
            }
        }
        let server = locality.server();
        let route = |label, mesh, ns| route(label, mesh, ns, server);
        let mut routes = vec![
            route("direct", &self.iptables, "direct"),
            route("iptables", &self.iptables, "mesh"),
        ];
        match locality {
            Locality::CrossNode => routes.push(route("ebpf", &self.ebpf, "mesh")),
            Locality::SameNode => {
                routes.push(route("ebpf (copy)", &self.ebpf_copy, "mesh"));
                routes.push(route("ebpf+splice", &self.ebpf, "mesh"));
            }
        }
        routes
    }
}

/// Builds one two-node mesh capturing as `capture` says, the mesh pods
/// enrolled.
async fn mesh(bin_dir: &Path, capture: CaptureMode, splice: bool) -> anyhow::Result<Mesh> {
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("mesh/client", "n1")
        .pod("mesh/server", "n2")
        .pod("mesh/local", "n1")
        .pod("direct/client", "n1")
        .pod("direct/server", "n2")
        .pod("direct/local", "n1")
        .build()?;
    let mesh = Mesh::start_with(
        topology,
        CONFIG,
        Binaries {
            control: &bin_dir.join("wt-control"),
            ztunnel: &bin_dir.join("wt-ztunnel"),
        },
        MeshOptions {
            capture,
            splice,
            ..MeshOptions::default()
        },
    )
    .await?;
    mesh.enroll("mesh/client", "client").await?;
    mesh.enroll("mesh/server", "server").await?;
    mesh.enroll("mesh/local", "server").await?;
    Ok(mesh)
}

/// Builds the three meshes.
pub async fn setup(bin_dir: &Path) -> anyhow::Result<Bed> {
    Ok(Bed {
        iptables: mesh(bin_dir, CaptureMode::Iptables, false).await?,
        ebpf: mesh(bin_dir, CaptureMode::Ebpf, true).await?,
        ebpf_copy: mesh(bin_dir, CaptureMode::Ebpf, false).await?,
    })
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

pub async fn throughput(bed: &Bed) -> anyhow::Result<()> {
    let (seconds, rounds) = (3, 5);
    for locality in [Locality::CrossNode, Locality::SameNode] {
        let routes = bed.routes(locality);
        // Alternating rounds, so a noisy neighbour hurts every route alike;
        // each round's ratios compare runs made seconds apart.
        let mut rates = vec![Vec::new(); routes.len()];
        let mut ratios = vec![Vec::new(); routes.len()];
        for _ in 0..rounds {
            let mut round = Vec::new();
            for route in &routes {
                round.push(iperf(route.client, route.server, seconds).await?);
            }
            for (i, rate) in round.iter().enumerate() {
                rates[i].push(*rate);
                ratios[i].push(rate / round[0]);
            }
        }
        println!(
            "throughput: one TCP stream, {}, {rounds} alternating rounds of {seconds} s (iperf3)",
            locality.describe()
        );
        for (i, route) in routes.iter().enumerate() {
            let rate = median(&mut rates[i]) / 1e9;
            if i == 0 {
                println!("  {:<12} {rate:>7.2} Gbit/s", route.label);
                continue;
            }
            let ratio = median(&mut ratios[i].clone());
            let verdict = match locality.target(route.label) {
                Some(target) if ratio >= target => format!("   target ≥ {target}×: met"),
                Some(target) => format!("   target ≥ {target}×: MISSED"),
                None => String::new(),
            };
            println!(
                "  {:<12} {rate:>7.2} Gbit/s  {ratio:.2}× direct (rounds: {}){verdict}",
                route.label,
                ratios[i]
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
    Ok(())
}

pub async fn rr_latency(bed: &Bed) -> anyhow::Result<()> {
    let rounds = 5000;
    for locality in [Locality::CrossNode, Locality::SameNode] {
        println!(
            "rr-latency: 1 KiB request/response, {}, {rounds} sequential rounds",
            locality.describe()
        );
        let mut direct = None;
        for route in bed.routes(locality) {
            let (p50, p99) = rr(route.client, route.server, rounds).await?;
            let (d50, d99) = *direct.get_or_insert((p50, p99));
            println!(
                "  {:<12} p50 {:>9} ({:.2}×)  p99 {:>9} ({:.2}×)",
                route.label,
                ms(p50),
                p50.as_secs_f64() / d50.as_secs_f64(),
                ms(p99),
                p99.as_secs_f64() / d99.as_secs_f64(),
            );
        }
    }
    Ok(())
}
