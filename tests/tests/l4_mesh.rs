//! ztunnel's L4 data path end to end, on real namespaces with real
//! processes: enrolled pods talk across nodes through HBONE, by pod IP and
//! by service VIP, with the server seeing the client's own address.

mod support;

use std::{net::SocketAddr, path::Path};

use support::probe;
use weft_tests::{
    apps,
    mesh::{Binaries, Mesh},
    privilege::require_privileged,
    topology::Topology,
};

fn binaries() -> Binaries<'static> {
    Binaries {
        control: Path::new(env!("CARGO_BIN_EXE_wt-control")),
        ztunnel: Path::new(env!("CARGO_BIN_EXE_wt-ztunnel")),
    }
}

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
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {nodeName: n1, serviceAccountName: client}
status: {podIP: "${demo/client}"}
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
spec: {nodeName: n1}
status: {podIP: "${legacy/outsider}"}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  clusterIP: 198.19.0.10
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
"#;

async fn mesh() -> anyhow::Result<Mesh> {
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("demo/client", "n1")
        .pod("demo/server", "n2")
        .pod("legacy/outsider", "n1")
        .build()?;
    let mesh = Mesh::start(topology, CONFIG, binaries()).await?;
    mesh.enroll("demo/client", "client").await?;
    mesh.enroll("demo/server", "server").await?;
    let server = mesh.topology.pod("demo/server");
    let listener = server.enter(|| std::net::TcpListener::bind((server.ip(), 8080)))??;
    std::mem::forget(apps::spawn_echo(listener, "server")?);
    Ok(mesh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolled_pods_talk_across_nodes_by_ip_and_by_service_vip() -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh().await?;
    let client = mesh.topology.pod("demo/client");
    let server = mesh.topology.pod("demo/server");

    let report = probe(client, SocketAddr::from((server.ip(), 8080)), "by ip").await?;
    assert_eq!(
        report.reply,
        format!("server saw {}: by ip", client.ip()),
        "the server sees the client pod's address"
    );
    let report = probe(client, "198.19.0.10:80".parse()?, "by vip").await?;
    assert_eq!(report.reply, format!("server saw {}: by vip", client.ip()));

    let dump = mesh.ztunnel("n1").config_dump().await?;
    assert_eq!(
        dump["hbone"]["handshakes"], 1,
        "both went through one HBONE connection: {}",
        dump["hbone"]
    );
    assert_eq!(dump["hbone"]["streams"], 2);
    let outbound = mesh
        .ztunnel("n1")
        .process
        .lines_with(&["direction=\"outbound\"", "connection complete"]);
    assert_eq!(outbound.len(), 2, "{outbound:#?}");
    assert!(
        outbound[1].contains("dst.service=demo/server.demo.svc.cluster.local"),
        "{}",
        outbound[1]
    );
    assert!(
        outbound[1].contains("dst.identity=spiffe://cluster.local/ns/demo/sa/server"),
        "{}",
        outbound[1]
    );
    let inbound = mesh
        .ztunnel("n2")
        .process
        .lines_with(&["direction=\"inbound\"", "connection complete"]);
    assert_eq!(inbound.len(), 2, "{inbound:#?}");
    assert!(
        inbound[0].contains("src.identity=spiffe://cluster.local/ns/demo/sa/client"),
        "{}",
        inbound[0]
    );
    Ok(())
}
