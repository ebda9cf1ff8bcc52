//! Restart safety of eBPF capture: both nodes' ztunnels are SIGKILLed and
//! restarted 20 times while enrolled and unenrolled pods keep connecting.
//! No connection ever bypasses the mesh — the enrolled client's payload
//! never crosses the wire in clear (tshark), and an unenrolled pod that
//! policy refuses never gets a reply from the server — and no BPF program,
//! map or link is left behind by the restarts. `ztunnel uninstall` then
//! removes every one of them.
//!
//! (Its own test binary: it counts the kernel's BPF objects, which no other
//! test may change meanwhile.)

#[macro_use]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    process::Stdio,
    time::Duration,
};

use support::{binaries, probe};
use tokio::io::AsyncReadExt;
use weft_tests::{
    apps,
    capture::{contains, PacketCapture},
    mesh::Mesh,
    privilege::require_privileged,
    topology::{Pod, Topology},
};

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
metadata: {name: client, namespace: demo}
spec: {nodeName: n1, serviceAccountName: client}
status: {podIP: "${demo/client}"}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: legacy}
spec: {nodeName: n1}
status: {podIP: "${legacy/outsider}"}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec: {nodeName: n2, serviceAccountName: server}
status: {podIP: "${demo/server}"}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-client, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
"#;

const MARKER: &str = "ENROLLED-CLIENT-PAYLOAD-5d21";

/// The kernel's BPF programs, maps and links of Weft, by kind and name.
fn weft_bpf_objects() -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for program in aya::programs::loaded_programs().flatten() {
        if let Some(name) = program.name_as_str().filter(|n| n.starts_with("weft_")) {
            *counts.entry(format!("program {name}")).or_default() += 1;
        }
    }
    for map in aya::maps::loaded_maps().flatten() {
        if let Some(name) = map.name_as_str().filter(|n| n.starts_with("WEFT_")) {
            *counts.entry(format!("map {name}")).or_default() += 1;
        }
    }
    let weft_programs: Vec<u32> = aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("weft_")))
        .map(|p| p.id())
        .collect();
    for link in aya::programs::loaded_links().flatten() {
        if weft_programs.contains(&link.program_id()) {
            *counts.entry("links".into()).or_default() += 1;
        }
    }
    counts
}

/// The IDs of Weft's BPF programs and maps in the kernel right now.
fn weft_bpf_ids() -> BTreeSet<String> {
    let programs = aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("weft_")))
        .map(|p| format!("program {}", p.id()));
    let maps = aya::maps::loaded_maps()
        .flatten()
        .filter(|m| m.name_as_str().is_some_and(|n| n.starts_with("WEFT_")))
        .map(|m| format!("map {}", m.id()));
    programs.chain(maps).collect()
}

/// A shell loop, as a process of `pod`, connecting to `addr` with `text`
/// over and over; it prints each reply it gets.
fn traffic(pod: &Pod, addr: SocketAddr, text: &str) -> anyhow::Result<tokio::process::Child> {
    let script =
        format!("while :; do \"$0\" connect {addr} --send {text} 2>/dev/null; sleep 0.02; done");
    let mut cmd = pod.command("sh")?;
    cmd.args(["-c", &script, env!("CARGO_BIN_EXE_weft-probe")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    Ok(tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_ztunnel_restarts_under_traffic_never_bypass_and_never_leak() -> anyhow::Result<()> {
    require_privileged();
    // (Objects of an earlier test may still be on their way out.)
    let baseline = weft_bpf_ids();
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("demo/client", "n1")
        .pod("legacy/outsider", "n1")
        .pod("demo/server", "n2")
        .build()?;
    let mut mesh = Mesh::start(topology, CONFIG, binaries()).await?;
    mesh.enroll("demo/client", "client").await?;
    mesh.enroll("demo/server", "server").await?;
    let server = mesh.topology.pod("demo/server");
    let echo = server.enter(|| std::net::TcpListener::bind((server.ip(), 9090)))??;
    apps::spawn_echo(echo, "server")?;
    let target = SocketAddr::from((server.ip(), 9090));
    let client_ip = mesh.topology.pod("demo/client").ip();

    // The mesh works, and policy refuses the unenrolled pod.
    let report = probe(mesh.topology.pod("demo/client"), target, "first").await?;
    assert_eq!(report.reply, format!("server saw {client_ip}: first"));
    assert!(
        probe(mesh.topology.pod("legacy/outsider"), target, "refused")
            .await
            .is_err()
    );
    let objects = weft_bpf_objects();
    assert_eq!(
        objects.keys().filter(|k| k.starts_with("program")).count(),
        4,
        "connect4, connect6, sockops, sk_lookup: {objects:?}"
    );

    let pcap = mesh.dir.path().join("fabric.pcap");
    let wire = PacketCapture::start(
        mesh.topology.fabric(),
        &mesh.topology.node("n1").fabric_link(),
        pcap.clone(),
    )
    .await?;
    let mut client_loop = traffic(mesh.topology.pod("demo/client"), target, MARKER)?;
    let mut outsider_loop = traffic(mesh.topology.pod("legacy/outsider"), target, "OUTSIDER")?;

    for round in 0..20 {
        let node = if round % 2 == 0 { "n1" } else { "n2" };
        tokio::time::sleep(Duration::from_millis(100)).await;
        mesh.restart_ztunnel(node).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    client_loop.kill().await?;
    outsider_loop.kill().await?;
    let bytes = wire.stop().await?;

    // Nothing crossed in clear: every connection of the enrolled client
    // that reached the server went through the tunnel.
    assert!(
        !contains(&bytes, MARKER.as_bytes()),
        "the enrolled client's payload crossed the wire in clear"
    );
    assert!(
        PacketCapture::count(&pcap, "tcp.port == 15008").await? > 0,
        "the tunnel carried the client's traffic"
    );
    // The refused pod never got through to the server.
    let mut refused_output = String::new();
    if let Some(mut out) = outsider_loop.stdout.take() {
        out.read_to_string(&mut refused_output).await?;
    }
    assert!(
        !refused_output.contains("server saw"),
        "a refused connection reached the server: {refused_output}"
    );
    let mut client_output = String::new();
    if let Some(mut out) = client_loop.stdout.take() {
        out.read_to_string(&mut client_output).await?;
    }
    assert!(
        client_output.contains(&format!("server saw {client_ip}: {MARKER}")),
        "the client's traffic kept flowing between restarts"
    );

    // The restarted ztunnels adopted the pinned programs: nothing leaked,
    // and capture still works.
    assert_eq!(
        weft_bpf_objects(),
        objects,
        "BPF objects before and after 20 restarts"
    );
    let report = probe(mesh.topology.pod("demo/client"), target, "last").await?;
    assert_eq!(report.reply, format!("server saw {client_ip}: last"));
    assert!(
        probe(mesh.topology.pod("legacy/outsider"), target, "refused")
            .await
            .is_err()
    );
    for node in ["n1", "n2"] {
        let adopted = mesh
            .ztunnel(node)
            .process
            .lines_with(&["adopting the pinned capture programs"]);
        assert!(
            !adopted.is_empty(),
            "{node}'s ztunnel adopted the pins after restarting"
        );
    }

    // With ztunnel stopped for good, `ztunnel uninstall` takes every
    // program, map and link out of the kernel.
    for node in ["n1", "n2"] {
        mesh.kill_ztunnel(node).await?;
        let pins = mesh.topology.bpf_pin_dir(node);
        let out = std::process::Command::new(binaries().ztunnel)
            .arg("uninstall")
            .arg("--bpf-pin-dir")
            .arg(&pins)
            .output()?;
        assert!(
            out.status.success(),
            "ztunnel uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!pins.exists(), "{} removed", pins.display());
    }
    // The kernel frees unreferenced objects asynchronously.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ours = || -> BTreeSet<String> { weft_bpf_ids().difference(&baseline).cloned().collect() };
    while !ours().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ours(), BTreeSet::new(), "BPF objects left after uninstall");
    Ok(())
}
