//! ztunnel's side of ZDS, against a node agent played byte by byte with
//! frames as Istio's CNI agent writes them: the hello, an add with the
//! pod's namespace, keep, delete, the snapshot marker, and the malformed
//! shapes (a truncated datagram, a descriptor on the wrong message,
//! garbage), each refused with a reason while the session goes on; and
//! readiness held back until the snapshot.

use std::{os::fd::AsRawFd, path::Path, time::Duration};

use weft_tests::{
    mesh::{Binaries, Mesh},
    privilege::require_privileged,
    processes::{eventually, http_get},
    topology::Topology,
};
use weft_zds::wire::{DatagramListener, Datagrams};

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

/// A length-delimited protobuf field: tag, length, bytes.
fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128, "one-byte lengths only");
    let mut out = vec![(number << 3) | 2, bytes.len() as u8];
    out.extend_from_slice(bytes);
    out
}

const UID: &[u8] = b"Kubernetes//Pod/demo/app";

/// WorkloadRequest{add{uid, workload_info{name, namespace, service_account}}}
fn add_frame() -> Vec<u8> {
    let info = [field(1, b"app"), field(2, b"demo"), field(3, b"app")].concat();
    field(1, &[field(1, UID), field(2, &info)].concat())
}

/// WorkloadRequest{keep{uid}} (keep is field 5).
fn keep_frame(uid: &[u8]) -> Vec<u8> {
    field(5, &field(1, uid))
}

/// WorkloadRequest{del{uid}} (del is field 2, its uid field 2 as well).
fn del_frame() -> Vec<u8> {
    field(2, &field(2, UID))
}

/// WorkloadRequest{snapshot_sent{}}
const SNAPSHOT: &[u8] = &[0x1a, 0x00];
/// WorkloadResponse{ack{}}
const ACK: &[u8] = &[0x0a, 0x00];

/// Sends one request and returns ztunnel's answer: `Ok` for an ack,
/// `Err(reason)` for a refusal.
async fn ask(ztunnel: &Datagrams, bytes: &[u8], fds: &[i32]) -> anyhow::Result<Result<(), String>> {
    ztunnel.send(bytes, fds).await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), ztunnel.recv())
        .await??
        .ok_or_else(|| anyhow::anyhow!("ztunnel hung up"))?;
    anyhow::ensure!(answer.fds.is_empty(), "an answer with descriptors");
    if answer.bytes == ACK {
        return Ok(Ok(()));
    }
    // ack{error}: 0x0a len 0x0a len error
    let error = answer
        .bytes
        .get(4..)
        .filter(|_| answer.bytes[0] == 0x0a && answer.bytes[2] == 0x0a)
        .ok_or_else(|| anyhow::anyhow!("not a WorkloadResponse: {:02x?}", answer.bytes))?;
    Ok(Err(String::from_utf8_lossy(error).into_owned()))
}

async fn readiness(mesh: &Mesh) -> anyhow::Result<(u16, String)> {
    let z = mesh.ztunnel("n1");
    http_get(z.netns.as_deref(), z.readiness, "/healthz/ready").await
}

async fn pods(mesh: &Mesh) -> anyhow::Result<Vec<String>> {
    let dump = mesh.ztunnel("n1").config_dump().await?;
    Ok(dump["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_speaks_istios_zds() -> anyhow::Result<()> {
    require_privileged();
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .pod("demo/app", "n1")
        .build()?;
    let binaries = Binaries {
        control: Path::new(env!("CARGO_BIN_EXE_wt-control")),
        ztunnel: Path::new(env!("CARGO_BIN_EXE_wt-ztunnel")),
    };
    let mut mesh = Mesh::start(topology, CONFIG, binaries).await?;

    // The node agent is now this test, and ztunnel a fresh one.
    mesh.stop_agent("n1").await?;
    let listener = DatagramListener::bind(&mesh.agent_socket("n1"))?;
    mesh.kill_ztunnel("n1").await?;
    mesh.start_ztunnel("n1").await?;
    let ztunnel = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .map_err(|_| anyhow::anyhow!("ztunnel did not connect"))??;

    // ZdsHello{version: V1}, nothing attached.
    let hello = tokio::time::timeout(Duration::from_secs(5), ztunnel.recv())
        .await??
        .ok_or_else(|| anyhow::anyhow!("no hello"))?;
    assert_eq!(hello.bytes, [0x08, 0x01]);
    assert!(hello.fds.is_empty());

    // Synced, but not ready before the snapshot, and it says why.
    eventually("xDS synced", Duration::from_secs(20), || async {
        let dump = mesh.ztunnel("n1").config_dump().await.ok()?;
        (dump["xds"]["synced"] == true).then_some(())
    })
    .await?;
    let (status, body) = readiness(&mesh).await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no snapshot of this node's pods"), "{body}");

    let netns = mesh.topology.pod("demo/app").netns().file().as_raw_fd();
    // The snapshot: an add with the pod's namespace.
    assert_eq!(ask(&ztunnel, &add_frame(), &[netns]).await?, Ok(()));
    // Refused, with reasons, and the session goes on:
    let refusals: Vec<(&str, Vec<u8>, Vec<i32>, &str)> = vec![
        (
            "keep of a pod it does not serve",
            keep_frame(b"Kubernetes//Pod/demo/ghost"),
            vec![],
            "does not serve",
        ),
        (
            "a descriptor on a delete",
            del_frame(),
            vec![netns],
            "del carried 1 descriptor",
        ),
        (
            "an add without its namespace",
            add_frame(),
            vec![],
            "carried 0 descriptors",
        ),
        (
            "a truncated datagram",
            vec![0x1a; 70 * 1024],
            vec![],
            "truncated",
        ),
        (
            "garbage",
            vec![0xff, 0xff, 0xff],
            vec![],
            "not a WorkloadRequest",
        ),
    ];
    for (what, bytes, fds, expected) in &refusals {
        let answer = ask(&ztunnel, bytes, fds).await?;
        let reason = answer.expect_err(what);
        assert!(reason.contains(expected), "{what}: {reason}");
    }
    assert_eq!(ask(&ztunnel, SNAPSHOT, &[]).await?, Ok(()));
    eventually(
        "ready after the snapshot",
        Duration::from_secs(20),
        || async { (readiness(&mesh).await.ok()?.0 == 200).then_some(()) },
    )
    .await?;
    assert_eq!(pods(&mesh).await?, ["app"]);
    let dump = mesh.ztunnel("n1").config_dump().await?;
    assert_eq!(dump["node_agent"]["connected"], true);
    assert_eq!(dump["node_agent"]["snapshots"], 1);

    // After the snapshot: keep of a served pod is fine, a second
    // snapshot marker is not, a delete releases the pod.
    assert_eq!(ask(&ztunnel, &keep_frame(UID), &[]).await?, Ok(()));
    let again = ask(&ztunnel, SNAPSHOT, &[])
        .await?
        .expect_err("a second marker");
    assert!(again.contains("already applied"), "{again}");
    assert_eq!(pods(&mesh).await?, ["app"]);
    assert_eq!(ask(&ztunnel, &del_frame(), &[]).await?, Ok(()));
    assert!(pods(&mesh).await?.is_empty());

    // The agent goes; ztunnel stays up and waits for it.
    drop(ztunnel);
    drop(listener);
    eventually("ztunnel to notice", Duration::from_secs(10), || async {
        let dump = mesh.ztunnel("n1").config_dump().await.ok()?;
        (dump["node_agent"]["connected"] == false).then_some(())
    })
    .await?;
    assert_eq!(
        readiness(&mesh).await?.0,
        200,
        "still ready: nothing to serve"
    );
    Ok(())
}
