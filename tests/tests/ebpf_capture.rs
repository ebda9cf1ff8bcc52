//! eBPF capture with real processes: Weft's programs, loaded into this
//! kernel by ztunnel, capture an unmodified `curl` of an enrolled pod and
//! leave an unenrolled pod's alone; enrolling and releasing a running pod
//! disturbs neither its established connections nor another pod's. With
//! `--bpf-log`, the programs' own reports of what they captured reach
//! ztunnel's log.

#[macro_use]
mod support;

use std::net::SocketAddr;

use support::{binaries, curl, logged, probe, HeldProbe};
use weft_tests::{
    apps,
    mesh::{Mesh, MeshOptions},
    privilege::require_privileged,
    topology::Topology,
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
metadata: {name: bystander, namespace: demo}
spec: {nodeName: n1, serviceAccountName: bystander}
status: {podIP: "${demo/bystander}"}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: legacy}
spec: {nodeName: n1}
status: {podIP: "${legacy/outsider}"}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo}
spec: {nodeName: n2, serviceAccountName: server}
status: {podIP: "${demo/server}"}
"#;

/// A two-node mesh in eBPF mode with an HTTP server (port 8080) and an echo
/// server (port 9090) in the enrolled `demo/server` pod on n2.
async fn mesh(options: MeshOptions<'_>) -> anyhow::Result<Mesh> {
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("demo/client", "n1")
        .pod("demo/bystander", "n1")
        .pod("legacy/outsider", "n1")
        .pod("demo/server", "n2")
        .build()?;
    let mesh = Mesh::start_with(topology, CONFIG, binaries(), options).await?;
    mesh.enroll("demo/server", "server").await?;
    let server = mesh.topology.pod("demo/server");
    let http = server.enter(|| std::net::TcpListener::bind((server.ip(), 8080)))??;
    apps::spawn_http(http, "server")?;
    let echo = server.enter(|| std::net::TcpListener::bind((server.ip(), 9090)))??;
    apps::spawn_echo(echo, "server")?;
    Ok(mesh)
}

/// Lines of `node`'s ztunnel logging a finished outbound connection from
/// `pod` (captured) to `dst`.
fn outbound_lines(mesh: &Mesh, node: &str, pod_ip: &str, dst: &str) -> Vec<String> {
    mesh.ztunnel(node).process.lines_with(&[
        "connection complete",
        "outbound",
        &format!("src.addr={pod_ip}:"),
        &format!("dst.addr={dst}"),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_in_an_enrolled_pod_is_captured_and_an_unenrolled_pods_is_not() -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(MeshOptions::default()).await?;
    mesh.enroll("demo/client", "client").await?;
    let (client, outsider) = (
        mesh.topology.pod("demo/client"),
        mesh.topology.pod("legacy/outsider"),
    );
    let server_ip = mesh.topology.pod("demo/server").ip();
    let url = format!("http://{server_ip}:8080/hello");
    let dst = format!("{server_ip}:8080");

    let dump = mesh.ztunnel("n1").config_dump().await?;
    assert_eq!(dump["capture"]["mode"], "ebpf", "{}", dump["capture"]);
    // connect4, connect6 and sockops on the pods' cgroup, and one sk_lookup
    // per enrolled pod.
    assert_eq!(dump["capture"]["bpf_attachments"], 4, "{}", dump["capture"]);

    // The enrolled pod's curl goes through both ztunnels, over HBONE, and
    // the server still sees the client pod's own address.
    let body = curl(client, &url).await?;
    assert_eq!(body, format!("server saw {}: GET /hello", client.ip()));
    logged(
        mesh.ztunnel("n1"),
        &[
            "connection complete",
            "outbound",
            &format!("src.addr={}:", client.ip()),
            &format!("dst.addr={dst}"),
            "src.identity=spiffe://cluster.local/ns/demo/sa/client",
        ],
    )
    .await?;
    logged(
        mesh.ztunnel("n2"),
        &[
            "connection complete",
            "inbound",
            "src.identity=spiffe://cluster.local/ns/demo/sa/client",
            &format!("dst.addr={dst}"),
        ],
    )
    .await?;

    // Each original destination is read once and taken out: none lingers
    // for a later connection from the same address and port to find.
    let tuples = mesh.topology.bpf_pin_dir("n1").join("map-WEFT_TUPLES");
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(&tuples)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "bpftool: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        entries.as_array().map(Vec::len),
        Some(0),
        "original destinations left after use: {entries}"
    );

    // The unenrolled pod's curl is not captured on its node; it reaches the
    // enrolled server in plaintext, which the server's capture (sk_lookup)
    // takes in, without an identity.
    let body = curl(outsider, &url).await?;
    assert_eq!(body, format!("server saw {}: GET /hello", outsider.ip()));
    logged(
        mesh.ztunnel("n2"),
        &[
            "connection complete",
            "inbound",
            &format!("src.addr={}:", outsider.ip()),
            "src.identity= ",
        ],
    )
    .await?;
    assert!(
        mesh.ztunnel("n1")
            .process
            .lines_with(&[&outsider.ip().to_string()])
            .is_empty(),
        "n1's ztunnel saw the unenrolled pod's traffic"
    );

    // Loopback inside an enrolled pod is never captured.
    let local = client.enter(|| std::net::TcpListener::bind(("127.0.0.1", 0)))??;
    let local_addr = local.local_addr()?;
    let _local = apps::spawn_echo(local, "local")?;
    let report = probe(client, local_addr, "on loopback").await?;
    assert_eq!(report.reply, "local saw 127.0.0.1: on loopback");
    assert_eq!(
        report.peer, local_addr,
        "a loopback connect is not rewritten"
    );
    // Nor is the pod talking to itself on its own address, either way.
    let own = client.enter(|| std::net::TcpListener::bind((client.ip(), 0)))??;
    let own_addr = own.local_addr()?;
    let _own = apps::spawn_echo(own, "itself")?;
    let report = probe(client, own_addr, "to itself").await?;
    assert_eq!(
        report.reply,
        format!("itself saw {}: to itself", client.ip())
    );
    assert_eq!(report.peer, own_addr);
    assert!(
        mesh.ztunnel("n1")
            .process
            .lines_with(&[&format!("dst.addr={own_addr}")])
            .is_empty(),
        "ztunnel saw the pod's connection to itself"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolling_and_releasing_a_running_pod_disturbs_no_connection() -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(MeshOptions::default()).await?;
    mesh.enroll("demo/bystander", "bystander").await?;
    let (client, bystander) = (
        mesh.topology.pod("demo/client"),
        mesh.topology.pod("demo/bystander"),
    );
    let server_ip = mesh.topology.pod("demo/server").ip();
    let echo = SocketAddr::from((server_ip, 9090));
    let dst = echo.to_string();
    let client_ip = client.ip().to_string();

    // Not enrolled yet: the client's connections go direct.
    let report = probe(client, echo, "before").await?;
    assert_eq!(report.reply, format!("server saw {client_ip}: before"));
    assert_eq!(
        report.peer, echo,
        "an unenrolled pod's connect is not rewritten"
    );
    assert!(outbound_lines(&mesh, "n1", &client_ip, &dst).is_empty());

    // Connections open across the enrollment: one of the client (direct)
    // and one of another enrolled pod (captured).
    let direct = HeldProbe::start(client, echo, "opened direct").await?;
    let neighbour = HeldProbe::start(bystander, echo, "neighbour").await?;

    mesh.enroll("demo/client", "client").await?;
    let report = probe(client, echo, "enrolled").await?;
    assert_eq!(report.reply, format!("server saw {client_ip}: enrolled"));
    logged(
        mesh.ztunnel("n1"),
        &[
            "connection complete",
            "outbound",
            &format!("src.addr={client_ip}:"),
            &format!("dst.addr={dst}"),
            "bytes_sent=8",
        ],
    )
    .await?;
    // The direct connection opened before enrollment finishes as it began.
    assert_eq!(
        direct.finish().await?.reply,
        format!("server saw {client_ip}: opened direct")
    );

    // A captured connection open across the release finishes through
    // ztunnel; new connections after the release go direct.
    let captured = HeldProbe::start(client, echo, "opened captured").await?;
    mesh.release("demo/client").await?;
    let before = outbound_lines(&mesh, "n1", &client_ip, &dst).len();
    let report = probe(client, echo, "released").await?;
    assert_eq!(report.reply, format!("server saw {client_ip}: released"));
    assert_eq!(
        report.peer, echo,
        "a released pod's connect is not rewritten"
    );
    assert_eq!(
        captured.finish().await?.reply,
        format!("server saw {client_ip}: opened captured")
    );
    logged(
        mesh.ztunnel("n1"),
        &[
            "connection complete",
            "outbound",
            &format!("src.addr={client_ip}:"),
            "bytes_sent=15",
        ],
    )
    .await?;
    assert_eq!(
        outbound_lines(&mesh, "n1", &client_ip, &dst).len(),
        before + 1,
        "only the connection opened before the release went through ztunnel"
    );

    // The other pod was never disturbed.
    assert_eq!(
        neighbour.finish().await?.reply,
        format!("server saw {}: neighbour", bystander.ip())
    );
    logged(
        mesh.ztunnel("n1"),
        &[
            "connection complete",
            "outbound",
            &format!("src.addr={}:", bystander.ip()),
            "src.identity=spiffe://cluster.local/ns/demo/sa/bystander",
        ],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_bpf_log_the_programs_report_what_they_capture() -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(MeshOptions {
        bpf_log: true,
        ..MeshOptions::default()
    })
    .await?;
    mesh.enroll("demo/client", "client").await?;
    let target = SocketAddr::from((mesh.topology.pod("demo/server").ip(), 9090));

    // The enrolled client's connect, redirected by connect4 on n1.
    probe(mesh.topology.pod("demo/client"), target, "meshed").await?;
    logged(
        mesh.ztunnel("n1"),
        &[
            "weft_ebpf",
            "connect: netns",
            &format!("to {target} captured"),
        ],
    )
    .await?;

    // Plaintext from the unenrolled pod, redirected by sk_lookup on n2.
    let outsider = mesh.topology.pod("legacy/outsider");
    probe(outsider, target, "plaintext").await?;
    logged(
        mesh.ztunnel("n2"),
        &[
            "weft_ebpf",
            &format!("sk_lookup: {} to {target} captured", outsider.ip()),
        ],
    )
    .await?;
    Ok(())
}
