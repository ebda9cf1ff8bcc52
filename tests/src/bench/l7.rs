//! `waypoint-l7`: HTTP/1.1 keep-alive requests (1 KiB responses) from wrk,
//! through the waypoint and against baselines measured in the same run:
//!
//! - `direct`: unenrolled client to the backend;
//! - `nginx proxy`: Debian's nginx as a reverse proxy (keep-alive to the
//!   backend, a worker per core, an access line per request) in a pod of
//!   its own — one L7 hop, plaintext;
//! - `L7 engine`: the waypoint's request path in the same place, on
//!   plaintext (`wt-l7-engine`: no tunnel in or out, everything else the
//!   waypoint does per request) — hop for hop against nginx (target:
//!   ≥ 1.0× its requests/s, a p99 no worse);
//! - `nginx, 1 worker` and `L7 engine, 1 worker`: the same two with one
//!   worker each. With a worker per core, nginx's workers do not share
//!   wrk's connections: whichever worker wakes first accepts the burst, so
//!   one worker serves all 16, while the engine balances them 8/8 (so
//!   that long-lived connections, such as ztunnels' pooled HBONE ones,
//!   never leave a core idle under load). On a 2-core machine that also
//!   runs wrk and the backend, two busy workers wait on each other for a
//!   core, and the tail shows it; one worker each compares the engines
//!   themselves. Both comparisons are printed;
//! - `mesh L4`: enrolled client to a service without a waypoint (both
//!   ztunnels, HBONE), on a backend pod of its own (a pod behind a
//!   waypoint takes its service's traffic from the waypoint only);
//! - `mesh + waypoint`: the same through the namespace's waypoint (both
//!   ztunnels, two HBONE hops, the L7 engine).
//!
//! The backend is nginx serving 1 KiB. Routes alternate, a few rounds
//! each; the median round is reported, with the CPU per 1000 requests/s
//! of the proxies (nginx's workers, the engine, the waypoint) and the
//! waypoint's RSS (Istio's Envoy waypoint: about 0.25 vCPU and
//! 60 MB per 1000 requests/s; targets ≤ 0.1 vCPU and ≤ 20 MB).

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context;

use crate::{
    mesh::{Binaries, Mesh, MeshOptions},
    processes::WaypointProcess,
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
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: mesh}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: mesh
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {nodeName: n2, serviceAccountName: waypoint}
status: {podIP: "${mesh/waypoint-0}"}
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: mesh}
spec:
  clusterIP: 198.19.0.20
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: mesh}
spec: {nodeName: n1, serviceAccountName: client}
status: {podIP: "${mesh/client}"}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: mesh, labels: {app: web}}
spec: {nodeName: n2, serviceAccountName: web}
status: {podIP: "${mesh/web}"}
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: mesh
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 198.19.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: plain, namespace: mesh, labels: {app: plain}}
spec: {nodeName: n2, serviceAccountName: web}
status: {podIP: "${mesh/plain}"}
---
apiVersion: v1
kind: Service
metadata: {name: web-l4, namespace: mesh}
spec:
  clusterIP: 198.19.0.11
  selector: {app: plain}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: direct}
spec: {nodeName: n1}
status: {podIP: "${direct/client}"}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: direct}
spec: {nodeName: n2}
status: {podIP: "${direct/web}"}
---
apiVersion: v1
kind: Pod
metadata: {name: proxy, namespace: direct}
spec: {nodeName: n2}
status: {podIP: "${direct/proxy}"}
---
apiVersion: v1
kind: Pod
metadata: {name: engine, namespace: direct}
spec: {nodeName: n2}
status: {podIP: "${direct/engine}"}
"#;

/// Where the one-worker nginx and engine listen (beside the others, in
/// the same pods).
const ONE_WORKER_PORT: u16 = 8081;
/// The route through the waypoint, in `run`'s table.
const WAYPOINT: usize = 6;

/// wrk's connections and the length of one round.
const CONNECTIONS: u32 = 16;
const ROUND: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;

/// nginx in `pod` (daemon off, its files in `dir`, `workers` worker
/// processes) with `server` as the body of its one `server {}` block,
/// listening on `port` of the pod, and `http` added to its `http {}` block.
fn nginx(
    pod: &Pod,
    dir: &Path,
    port: u16,
    workers: &str,
    server: &str,
    http: &str,
) -> anyhow::Result<tokio::process::Child> {
    let id = format!("{}-{}-{port}", pod.namespace(), pod.name());
    let conf = dir.join(format!("nginx-{id}.conf"));
    let tmp = dir.join(format!("nginx-{id}"));
    std::fs::create_dir_all(&tmp)?;
    let t = tmp.display();
    std::fs::write(
        &conf,
        format!(
            "worker_processes {workers};\n\
             pid {t}/nginx.pid;\n\
             error_log {t}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {t}/body;\n\
               proxy_temp_path {t}/proxy;\n\
               fastcgi_temp_path {t}/fastcgi;\n\
               uwsgi_temp_path {t}/uwsgi;\n\
               scgi_temp_path {t}/scgi;\n\
               keepalive_requests 1000000;\n\
               {http}\n\
               server {{\n\
                 listen {}:{port};\n\
                 {server}\n\
               }}\n\
             }}\n",
            pod.ip()
        ),
    )?;
    let mut cmd = tokio::process::Command::from(pod.command("/usr/sbin/nginx")?);
    cmd.arg("-c")
        .arg(&conf)
        .args(["-p", &t.to_string(), "-g", "daemon off;"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd.spawn()
        .context("starting nginx (cargo xtask setup installs it)")
}

/// What one wrk round measured.
#[derive(Clone, Copy, Debug)]
struct Round {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

fn wrk_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic())?);
    let value: f64 = number.parse().ok()?;
    let secs = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// One wrk round from `client` to `url`.
async fn wrk(client: &Pod, url: &str) -> anyhow::Result<Round> {
    let out = tokio::process::Command::from(client.command("wrk")?)
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{}s", ROUND.as_secs()),
            "--latency",
            url,
        ])
        .kill_on_drop(true)
        .output()
        .await
        .context("running wrk (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(out.status.success(), "wrk {url}: {text}");
    anyhow::ensure!(
        !text.contains("Non-2xx"),
        "wrk {url} got errors; the route is broken: {text}"
    );
    let field = |prefix: &str| {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .map(str::trim)
                .map(str::to_owned)
        })
    };
    Ok(Round {
        rps: field("Requests/sec:")
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no Requests/sec in {text}"))?,
        p50: field("50%")
            .and_then(|v| wrk_duration(&v))
            .with_context(|| format!("no p50 in {text}"))?,
        p99: field("99%")
            .and_then(|v| wrk_duration(&v))
            .with_context(|| format!("no p99 in {text}"))?,
    })
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces, and closes with ')'): field 3 (1-based) is index 0.
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default())
}

/// CPU seconds (user + system) and RSS (bytes) of process `pid`.
fn usage(pid: u32) -> anyhow::Result<(f64, u64)> {
    let fields = stat_fields(pid)?;
    let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 here.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    Ok((cpu, rss_kb * 1024))
}

/// CPU seconds of `pid` and its children (nginx's master and workers).
fn tree_cpu(pid: u32) -> anyhow::Result<f64> {
    let mut cpu = usage(pid)?.0;
    for entry in std::fs::read_dir("/proc")? {
        let Some(child) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // The parent's pid is field 4 (1-based), index 1 here.
        let parent = stat_fields(child)
            .ok()
            .and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()));
        if parent == Some(pid) {
            cpu += usage(child).map(|u| u.0).unwrap_or(0.0);
        }
    }
    Ok(cpu)
}

/// The L7 engine on plaintext in `pod` at `port`, proxying to `backend`
/// with `workers` worker threads (0: one per core).
fn engine(
    bin_dir: &Path,
    pod: &Pod,
    port: u16,
    backend: SocketAddr,
    workers: usize,
) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::from(pod.command(bin_dir.join("wt-l7-engine"))?);
    cmd.arg(SocketAddr::from((pod.ip(), port)).to_string())
        .arg(backend.to_string())
        .arg(workers.to_string())
        // Its access lines cost what nginx's cost: a write per request.
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd.spawn().context("starting wt-l7-engine")
}

fn median_round(rounds: &mut [Round]) -> Round {
    rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    rounds[rounds.len() / 2]
}

pub async fn run(bin_dir: &Path) -> anyhow::Result<()> {
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("mesh/client", "n1")
        .pod("mesh/web", "n2")
        .pod("mesh/plain", "n2")
        .pod("mesh/waypoint-0", "n2")
        .pod("direct/client", "n1")
        .pod("direct/web", "n2")
        .pod("direct/proxy", "n2")
        .pod("direct/engine", "n2")
        .build()?;
    let mesh = Mesh::start_with(
        topology,
        CONFIG,
        Binaries {
            control: &bin_dir.join("wt-control"),
            ztunnel: &bin_dir.join("wt-ztunnel"),
        },
        MeshOptions::default(),
    )
    .await?;
    mesh.enroll("mesh/client", "client").await?;
    mesh.enroll("mesh/web", "web").await?;
    mesh.enroll("mesh/plain", "web").await?;
    let waypoint: WaypointProcess = mesh
        .start_waypoint("mesh/waypoint-0", "waypoint", &bin_dir.join("wt-waypoint"))
        .await?;
    let dir = tempfile::tempdir()?;
    let body = "x".repeat(1024);
    let backend = format!("location / {{ default_type text/plain; return 200 '{body}'; }}");
    let pod = |q: &str| mesh.topology.pod(q);
    let web = SocketAddr::from((pod("direct/web").ip(), 8080));
    let proxy = nginx(
        pod("direct/proxy"),
        dir.path(),
        8080,
        // A worker per core, as the engine has a thread per core; keep-alive
        // to the backend, as the waypoint's pooled connections are; an
        // access line per request, as the waypoint writes.
        "auto",
        "access_log /dev/null; \
         location / { proxy_pass http://backend; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; }",
        &format!("upstream backend {{ server {web}; keepalive 64; }}"),
    )?;
    let proxy_pid = proxy.id().context("nginx's pid")?;
    let engine_per_core = engine(bin_dir, pod("direct/engine"), 8080, web, 0)?;
    let engine_pid = engine_per_core.id().context("the engine's pid")?;
    let proxy_one = nginx(
        pod("direct/proxy"),
        dir.path(),
        ONE_WORKER_PORT,
        "1",
        "access_log /dev/null; \
         location / { proxy_pass http://backend; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; }",
        &format!("upstream backend {{ server {web}; keepalive 64; }}"),
    )?;
    let proxy_one_pid = proxy_one.id().context("nginx's pid")?;
    let engine_one = engine(bin_dir, pod("direct/engine"), ONE_WORKER_PORT, web, 1)?;
    let engine_one_pid = engine_one.id().context("the engine's pid")?;
    let _servers = [
        nginx(pod("mesh/web"), dir.path(), 8080, "1", &backend, "")?,
        nginx(pod("mesh/plain"), dir.path(), 8080, "1", &backend, "")?,
        nginx(pod("direct/web"), dir.path(), 8080, "1", &backend, "")?,
        proxy,
        engine_per_core,
        proxy_one,
        engine_one,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let one_worker = |pod: &str| {
        format!(
            "http://{}/",
            SocketAddr::from((mesh.topology.pod(pod).ip(), ONE_WORKER_PORT))
        )
    };
    let routes: [(&str, &Pod, String); 7] = [
        ("direct", pod("direct/client"), format!("http://{web}/")),
        (
            "nginx proxy",
            pod("direct/client"),
            format!(
                "http://{}/",
                SocketAddr::from((pod("direct/proxy").ip(), 8080))
            ),
        ),
        (
            "L7 engine",
            pod("direct/client"),
            format!(
                "http://{}/",
                SocketAddr::from((pod("direct/engine").ip(), 8080))
            ),
        ),
        (
            "nginx, 1 worker",
            pod("direct/client"),
            one_worker("direct/proxy"),
        ),
        (
            "engine, 1 worker",
            pod("direct/client"),
            one_worker("direct/engine"),
        ),
        ("mesh L4", pod("mesh/client"), "http://198.19.0.11/".into()),
        (
            "mesh + waypoint",
            pod("mesh/client"),
            "http://198.19.0.10/".into(),
        ),
    ];
    // Warm every path (connections, certificates, pools) before measuring.
    for (label, client, url) in &routes {
        let probe = tokio::process::Command::from(client.command("curl")?)
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
                url,
            ])
            .output()
            .await?;
        let code = String::from_utf8_lossy(&probe.stdout).into_owned();
        anyhow::ensure!(code == "200", "{label} ({url}) answered {code:?}");
    }
    let waypoint_pid = waypoint.process.pid().context("the waypoint's pid")?;
    // Whose CPU each route's proxying costs (none for direct and L4).
    let proxies: [Option<u32>; 7] = [
        None,
        Some(proxy_pid),
        Some(engine_pid),
        Some(proxy_one_pid),
        Some(engine_one_pid),
        None,
        Some(waypoint_pid),
    ];
    let mut results: Vec<Vec<Round>> = vec![Vec::new(); routes.len()];
    // CPU seconds and requests, per route.
    let mut cost = vec![(0.0, 0.0); routes.len()];
    let mut rss_peak = 0;
    for _ in 0..ROUNDS {
        for (i, (_, client, url)) in routes.iter().enumerate() {
            let before = proxies[i].map(tree_cpu).transpose()?;
            let round = wrk(client, url).await?;
            if let (Some(pid), Some(before)) = (proxies[i], before) {
                cost[i].0 += tree_cpu(pid)? - before;
                cost[i].1 += round.rps * ROUND.as_secs_f64();
            }
            if i == WAYPOINT {
                rss_peak = rss_peak.max(usage(waypoint_pid)?.1);
            }
            results[i].push(round);
        }
    }
    let medians: Vec<Round> = results.iter_mut().map(|r| median_round(r)).collect();
    let (direct, nginx_proxy) = (medians[0], medians[1]);
    println!(
        "waypoint-l7: HTTP/1.1 keep-alive, 1 KiB responses, wrk {CONNECTIONS} connections, \
         median of {ROUNDS} × {} s",
        ROUND.as_secs()
    );
    // CPU-seconds per second of load, per 1000 requests/s of that load.
    let vcpu_per_krps = |(cpu, requests): (f64, f64)| cpu / (requests / 1000.0);
    for (((label, _, _), m), cost) in routes.iter().zip(&medians).zip(&cost) {
        let cpu = if cost.1 > 0.0 {
            format!("  {:.3} vCPU/1000 req/s", vcpu_per_krps(*cost))
        } else {
            String::new()
        };
        println!(
            "  {label:<16} {:>8.0} req/s ({:.2}× direct, {:.2}× nginx)  p50 {:>9} ({:.2}×)  p99 {:>9} ({:.2}× direct, {:.2}× nginx){cpu}",
            m.rps,
            m.rps / direct.rps,
            m.rps / nginx_proxy.rps,
            super::ms(m.p50),
            m.p50.as_secs_f64() / direct.p50.as_secs_f64(),
            super::ms(m.p99),
            m.p99.as_secs_f64() / direct.p99.as_secs_f64(),
            m.p99.as_secs_f64() / nginx_proxy.p99.as_secs_f64(),
        );
    }
    for (what, nginx, engine) in [("a worker per core", 1, 2), ("one worker each", 3, 4)] {
        println!(
            "  L7 engine vs nginx, {what}: {:.2}× requests/s (target ≥ 1.0), {:.2}× p99 (target ≤ 1.0), {:.2}× CPU per request",
            medians[engine].rps / medians[nginx].rps,
            medians[engine].p99.as_secs_f64() / medians[nginx].p99.as_secs_f64(),
            vcpu_per_krps(cost[engine]) / vcpu_per_krps(cost[nginx]),
        );
    }
    println!(
        "  waypoint: {:.3} vCPU per 1000 req/s (target ≤ 0.1; Istio's Envoy ~0.25), \
         RSS {:.1} MB (target ≤ 20; Envoy ~60)",
        vcpu_per_krps(cost[WAYPOINT]),
        rss_peak as f64 / 1e6
    );
    Ok(())
}
