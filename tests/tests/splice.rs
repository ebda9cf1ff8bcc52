//! The same-node splice: two enrolled pods on one node talk through
//! ztunnel, which authorizes the connection and then joins its two sockets
//! inside the kernel (`splice(2)`), in both capture modes. The bytes arrive
//! intact and in order, all of them moved by the splice (ztunnel's copy loop
//! sees none), Istio's byte counters still add up, and a policy change
//! still closes the connection. With `--splice false` the same connection
//! is copied, and says so.

#[macro_use]
mod support;

use std::{net::SocketAddr, time::Duration};

use support::{binaries, logged, probe, HeldProbe};
use weft_tests::{
    apps,
    mesh::{Mesh, MeshOptions},
    privilege::require_privileged,
    processes::eventually,
    topology::Topology,
};
use ztunnel::capture::CaptureMode;

const CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo}
spec: {nodeName: n1, serviceAccountName: client}
status: {podIP: "${demo/client}"}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec: {nodeName: n1, serviceAccountName: server}
status: {podIP: "${demo/server}"}
"#;

const DENY_CLIENT: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-client, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
"#;

/// The value of the first sample of `metric` whose labels hold all of
/// `labels`.
fn sample(metrics: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(metric) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `size` bytes of the probe's payload pattern.
fn pattern(size: usize) -> String {
    (0..size)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect()
}

in_both_capture_modes!(
    same_node_connections_are_spliced_counted_and_still_policed,
    many_small_writes_to_a_slow_reader_all_arrive,
);

/// One node with an enrolled client and an echo server; ztunnel splicing
/// or not.
async fn same_node_mesh(capture: CaptureMode, splice: bool) -> anyhow::Result<Mesh> {
    require_privileged();
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .pod("demo/client", "n1")
        .pod("demo/server", "n1")
        .build()?;
    let options = MeshOptions {
        capture,
        splice,
        ..MeshOptions::default()
    };
    let mesh = Mesh::start_with(topology, CONFIG, binaries(), options).await?;
    mesh.enroll("demo/client", "client").await?;
    mesh.enroll("demo/server", "server").await?;
    let server = mesh.topology.pod("demo/server");
    let echo = server.enter(|| std::net::TcpListener::bind((server.ip(), 9090)))??;
    apps::spawn_echo(echo, "server")?;
    Ok(mesh)
}

/// Sends `size` bytes from the client to the echo server and checks the
/// reply byte for byte; returns the bytes sent and received.
async fn exchange(mesh: &Mesh, size: usize) -> anyhow::Result<(usize, usize)> {
    let (client, server) = (
        mesh.topology.pod("demo/client"),
        mesh.topology.pod("demo/server"),
    );
    let target = SocketAddr::from((server.ip(), 9090));
    let mut cmd = client.command(env!("CARGO_BIN_EXE_weft-probe"))?;
    cmd.args([
        "connect",
        &target.to_string(),
        "--send-size",
        &size.to_string(),
    ]);
    let out = tokio::process::Command::from(cmd).output().await?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = weft_tests::apps::ProbeReport::parse(&out.stdout)?;
    let expected = format!("server saw {}: {}", client.ip(), pattern(size));
    assert!(
        report.reply == expected,
        "the reply came back intact and in order"
    );
    Ok((size, expected.len()))
}

async fn same_node_connections_are_spliced_counted_and_still_policed(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    let mesh = same_node_mesh(capture, true).await?;
    let client = mesh.topology.pod("demo/client");
    let target = SocketAddr::from((mesh.topology.pod("demo/server").ip(), 9090));
    let z = mesh.ztunnel("n1");

    // 4 MiB each way, checked byte for byte.
    let (sent, received) = exchange(&mesh, 4 << 20).await?;

    // The access log: no tunnel, and every byte moved by the splice.
    let line = logged(
        z,
        &[
            "connection complete",
            "outbound",
            &format!("dst.addr={target}"),
            "dst.hbone_addr= ",
        ],
    )
    .await?;
    assert!(line.contains(&format!("bytes_sent={sent} ")), "{line}");
    assert!(line.contains(&format!("bytes_recv={received} ")), "{line}");
    assert!(
        line.contains(&format!("bytes_spliced={} ", sent + received)),
        "the copy loop saw none of the bytes: {line}"
    );

    // Counters: the splice's own, and Istio's at both ends, which see the
    // bytes the kernel moved.
    let metrics = z.metrics_text().await?;
    assert_eq!(
        sample(&metrics, "weft_ztunnel_spliced_bytes_total", &[]),
        Some((sent + received) as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "weft_ztunnel_spliced_connections_total", &[]),
        Some(1.0)
    );
    for reporter in ["reporter=\"source\"", "reporter=\"destination\""] {
        assert_eq!(
            sample(
                &metrics,
                "istio_tcp_received_bytes_total",
                &[reporter, "destination_workload=\"server\""]
            ),
            Some(sent as f64),
            "{reporter}: {metrics}"
        );
        assert_eq!(
            sample(
                &metrics,
                "istio_tcp_sent_bytes_total",
                &[reporter, "destination_workload=\"server\""]
            ),
            Some(received as f64),
            "{reporter}: {metrics}"
        );
    }

    // A spliced connection is still ztunnel's: a DENY closes it.
    let open = HeldProbe::start(client, target, "held open").await?;
    eventually(
        "the held connection to be spliced",
        Duration::from_secs(10),
        || async {
            let dump = z.config_dump().await.ok()?;
            let connections = dump["connections"].as_array()?;
            (connections
                .iter()
                .filter(|c| c["dst"] == target.to_string())
                .count()
                == 2)
                .then_some(())
        },
    )
    .await?;
    mesh.update_config(&format!("{CONFIG}{DENY_CLIENT}"))?;
    logged(
        z,
        &[
            "connection failed",
            "outbound",
            "closed by a policy change",
            "no-client",
        ],
    )
    .await?;
    assert!(
        open.finish().await.is_err(),
        "the denied connection was reset"
    );
    let refused = probe(client, target, "after deny").await;
    assert!(refused.is_err(), "new connections are denied: {refused:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_splice_off_same_node_connections_are_copied() -> anyhow::Result<()> {
    let mesh = same_node_mesh(CaptureMode::Ebpf, false).await?;
    let target = SocketAddr::from((mesh.topology.pod("demo/server").ip(), 9090));
    let z = mesh.ztunnel("n1");
    let (sent, received) = exchange(&mesh, 256 * 1024).await?;
    let line = logged(
        z,
        &[
            "connection complete",
            "outbound",
            &format!("dst.addr={target}"),
        ],
    )
    .await?;
    assert!(line.contains(&format!("bytes_sent={sent} ")), "{line}");
    assert!(line.contains(&format!("bytes_recv={received} ")), "{line}");
    assert!(line.contains("bytes_spliced=0 "), "{line}");
    let metrics = z.metrics_text().await?;
    assert_eq!(
        sample(&metrics, "weft_ztunnel_spliced_connections_total", &[]),
        Some(0.0),
        "{metrics}"
    );
    Ok(())
}

/// Many small segments fill a splice pipe's slots long before its bytes:
/// while the application is not reading, the client's 4,000 ten-byte writes
/// wait in the kernel, and once the application reads they must all arrive.
async fn many_small_writes_to_a_slow_reader_all_arrive(capture: CaptureMode) -> anyhow::Result<()> {
    const WRITES: usize = 4000;
    const WRITE: usize = 10;
    let mesh = same_node_mesh(capture, true).await?;
    let (client, server) = (
        mesh.topology.pod("demo/client"),
        mesh.topology.pod("demo/server"),
    );
    let listener = server.enter(|| std::net::TcpListener::bind((server.ip(), 9191)))??;
    let slow = std::thread::spawn(move || -> std::io::Result<usize> {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept()?;
        // Not reading while the client writes.
        std::thread::sleep(Duration::from_secs(1));
        let mut request = Vec::new();
        stream.read_to_end(&mut request)?;
        stream.write_all(format!("got {}", request.len()).as_bytes())?;
        Ok(request.len())
    });
    let mut cmd = client.command(env!("CARGO_BIN_EXE_weft-probe"))?;
    cmd.args([
        "connect",
        &SocketAddr::from((server.ip(), 9191)).to_string(),
        "--send-size",
        &(WRITES * WRITE).to_string(),
        "--write-size",
        &WRITE.to_string(),
    ]);
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = weft_tests::apps::ProbeReport::parse(&out.stdout)?;
    assert_eq!(report.reply, format!("got {}", WRITES * WRITE));
    let received = slow.join().expect("server thread")?;
    assert_eq!(received, WRITES * WRITE);
    logged(
        mesh.ztunnel("n1"),
        &[
            "connection complete",
            "outbound",
            &format!("bytes_spliced={} ", WRITES * WRITE + report.reply.len()),
        ],
    )
    .await?;
    Ok(())
}
