//! ztunnel's L4 data path end to end, on real namespaces with real
//! processes: enrolled pods talk across nodes through HBONE, by pod IP and
//! by service VIP, with the server seeing the client's own address; nothing
//! crosses the wire in clear; unenrolled pods keep working both ways; every
//! kind of bad peer is refused with a clear log line; connections are
//! pooled; and the mesh keeps working while the control service is down.
//!
//! Every test runs once per capture mode (`iptables::…`, `ebpf::…`), and
//! all but the impostor's also on a Kubernetes cluster (`cluster::…`): the
//! config's objects in a real API server, the real node agent and
//! `weft-cni` on every node, pods started by the harness as kubelet.

#[macro_use]
mod support;

use std::{
    net::{Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use http::StatusCode;
use support::{binaries, probe, HeldProbe};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use weft_proto::spiffe::Identity;
use weft_proxy::hbone::{
    client::{connect_stream, handshake, HboneError},
    server,
    tls::{server_config, WorkloadCertResolver},
};
use weft_tests::{
    apps,
    capture::{contains, PacketCapture},
    forge,
    mesh::{Mesh, MeshOptions, Source},
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
kind: Pod
metadata: {name: neighbor, namespace: legacy, labels: {app: neighbor}}
spec: {nodeName: n1}
status: {podIP: "${legacy/neighbor}"}
---
apiVersion: v1
kind: Pod
metadata: {name: fake, namespace: demo, labels: {app: fake}}
spec: {nodeName: n2, serviceAccountName: fake}
status: {podIP: "${demo/fake}"}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  clusterIP: 198.19.0.10
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
"#;

async fn mesh(capture: CaptureMode, source: Source<'_>) -> anyhow::Result<Mesh> {
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("demo/client", "n1")
        .pod("demo/server", "n2")
        .pod("legacy/outsider", "n1")
        .pod("legacy/neighbor", "n1")
        .pod("demo/fake", "n2");
    let mesh = Mesh::launch(
        topology,
        CONFIG,
        binaries(),
        MeshOptions {
            capture,
            source,
            ..MeshOptions::default()
        },
    )
    .await?;
    mesh.enroll("demo/client", "client").await?;
    mesh.enroll("demo/server", "server").await?;
    let server = mesh.topology.pod("demo/server");
    let listener = server.enter(|| std::net::TcpListener::bind((server.ip(), 8080)))??;
    apps::spawn_echo(listener, "server")?;
    Ok(mesh)
}

async fn enrolled_pods_talk_across_nodes_by_ip_and_by_service_vip(
    capture: CaptureMode,
    source: Source<'_>,
) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, source).await?;
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

    // An application on a dual-stack (IPv6) socket reaching an IPv4
    // address, as Java does by default: the IPv4-mapped destination is
    // captured like any other and goes through the tunnel.
    let mapped = SocketAddr::from((server.ip().to_ipv6_mapped(), 8080));
    let report = probe(client, mapped, "mapped").await?;
    assert_eq!(report.reply, format!("server saw {}: mapped", client.ip()));
    eventually(
        "the third inbound connection",
        Duration::from_secs(5),
        || async {
            let inbound = mesh.ztunnel("n2").process.lines_with(&[
                "direction=\"inbound\"",
                "connection complete",
                "src.identity=spiffe://cluster.local/ns/demo/sa/client",
            ]);
            (inbound.len() == 3).then_some(())
        },
    )
    .await?;
    let outbound = eventually(
        "the third outbound connection",
        Duration::from_secs(5),
        || async {
            let outbound = mesh
                .ztunnel("n1")
                .process
                .lines_with(&["direction=\"outbound\"", "connection complete"]);
            (outbound.len() == 3).then_some(outbound)
        },
    )
    .await?;
    assert!(
        outbound[2].contains(&format!("dst.addr={}:8080", server.ip())),
        "the original destination is the IPv4 address: {}",
        outbound[2]
    );

    // A server on a dual-stack listener (`[::]`) is reached the same way
    // and sees the client's own address, IPv4-mapped.
    let dual = server.enter(|| std::net::TcpListener::bind("[::]:8081"))??;
    let _dual = apps::spawn_echo(dual, "dual")?;
    let report = probe(client, SocketAddr::from((server.ip(), 8081)), "to [::]").await?;
    assert_eq!(
        report.reply,
        format!("dual saw {}: to [::]", client.ip().to_ipv6_mapped())
    );
    logged(
        &mesh,
        "n2",
        &[
            "connection complete",
            "inbound",
            "src.identity=spiffe://cluster.local/ns/demo/sa/client",
            &format!("dst.addr={}:8081", server.ip()),
        ],
    )
    .await?;
    Ok(())
}

/// A TCP connection made from inside `pod`'s network namespace.
async fn connect_from(pod: &Pod, addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream =
        pod.enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))??;
    stream.set_nonblocking(true)?;
    Ok(TcpStream::from_std(stream)?)
}

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa)
}

/// Waits for a line in `node`'s ztunnel output containing all of `needles`.
async fn logged(mesh: &Mesh, node: &str, needles: &[&str]) -> anyhow::Result<String> {
    support::logged(mesh.ztunnel(node), needles).await
}

async fn no_payload_crosses_the_wire_in_clear_but_passthrough_does(
    capture: CaptureMode,
    source: Source<'_>,
) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, source).await?;
    let (client, server, outsider) = (
        mesh.topology.pod("demo/client"),
        mesh.topology.pod("demo/server"),
        mesh.topology.pod("legacy/outsider"),
    );
    let outsider_app = outsider.enter(|| std::net::TcpListener::bind((outsider.ip(), 9090)))??;
    apps::spawn_echo(outsider_app, "outsider")?;
    let pcap = mesh.dir.path().join("n1.pcap");
    let capture = PacketCapture::start(
        mesh.topology.fabric(),
        &mesh.topology.node("n1").fabric_link(),
        pcap.clone(),
    )
    .await?;

    let secret = "SECRET-MESH-PAYLOAD-7f3a";
    let report = probe(client, SocketAddr::from((server.ip(), 8080)), secret).await?;
    assert!(report.reply.ends_with(secret));
    // The control case: an unenrolled client's plaintext crosses in clear.
    let clear = "CLEAR-PLAINTEXT-PAYLOAD-91bc";
    let report = probe(outsider, SocketAddr::from((server.ip(), 8080)), clear).await?;
    assert_eq!(
        report.reply,
        format!("server saw {}: {clear}", outsider.ip())
    );
    // An enrolled client to an unenrolled destination passes through.
    let report = probe(
        client,
        SocketAddr::from((outsider.ip(), 9090)),
        "passthrough",
    )
    .await?;
    assert_eq!(
        report.reply,
        format!("outsider saw {}: passthrough", client.ip())
    );
    let bytes = capture.stop().await?;

    let all = PacketCapture::count(&pcap, "frame").await?;
    let tunnel = PacketCapture::count(&pcap, "tcp.port == 15008").await?;
    assert!(
        tunnel > 0,
        "the tunnel crossed this link ({tunnel} of {all} packets)"
    );
    assert!(
        !contains(&bytes, secret.as_bytes()),
        "the mesh payload appeared in clear on the wire"
    );
    let mesh_reply = format!("server saw {}:", client.ip());
    assert!(
        !contains(&bytes, mesh_reply.as_bytes()),
        "the mesh reply appeared in clear on the wire"
    );
    assert!(
        contains(&bytes, clear.as_bytes()),
        "the capture sees clear text when there is some"
    );
    let passthrough = logged(
        &mesh,
        "n1",
        &[
            "direction=\"outbound\"",
            "dst.workload=outsider",
            "connection complete",
        ],
    )
    .await?;
    assert!(
        passthrough.contains("dst.hbone_addr= "),
        "passthrough uses no tunnel: {passthrough}"
    );
    Ok(())
}

async fn an_unenrolled_client_reaches_an_enrolled_server_in_plaintext(
    capture: CaptureMode,
    source: Source<'_>,
) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, source).await?;
    let (server, outsider) = (
        mesh.topology.pod("demo/server"),
        mesh.topology.pod("legacy/outsider"),
    );
    let report = probe(
        outsider,
        SocketAddr::from((server.ip(), 8080)),
        "from outside",
    )
    .await?;
    assert_eq!(
        report.reply,
        format!("server saw {}: from outside", outsider.ip())
    );
    let line = logged(
        &mesh,
        "n2",
        &[
            "direction=\"inbound\"",
            "src.workload=outsider",
            "connection complete",
        ],
    )
    .await?;
    assert!(
        line.contains("src.identity= "),
        "plaintext has no identity: {line}"
    );
    assert!(line.contains("dst.workload=server"), "{line}");
    Ok(())
}

async fn fifty_sequential_connections_cost_one_handshake(
    capture: CaptureMode,
    source: Source<'_>,
) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, source).await?;
    let (client, server) = (
        mesh.topology.pod("demo/client"),
        mesh.topology.pod("demo/server"),
    );
    for i in 0..50 {
        let report = probe(
            client,
            SocketAddr::from((server.ip(), 8080)),
            &format!("n{i}"),
        )
        .await?;
        assert!(report.reply.ends_with(&format!("n{i}")));
    }
    let hbone = &mesh.ztunnel("n1").config_dump().await?["hbone"];
    assert_eq!(hbone["handshakes"], 1, "{hbone}");
    assert_eq!(hbone["streams"], 50, "{hbone}");
    assert_eq!(hbone["reused"], 49, "{hbone}");
    Ok(())
}

/// Directory only: demo/fake stands for a node that publishes a pod it does
/// not serve, which a cluster's node agent never does (every pod of an
/// ambient namespace is handed to its ztunnel).
async fn bad_peers_are_refused_with_a_reason(capture: CaptureMode) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, Source::Directory).await?;
    let (server, outsider) = (
        mesh.topology.pod("demo/server"),
        mesh.topology.pod("legacy/outsider"),
    );
    let hbone = SocketAddr::from((server.ip(), 15008));
    let ca = mesh.dir.path().join("state").join("ca");

    // Plaintext to 15008.
    let mut tcp = connect_from(outsider, hbone).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await?
        .unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "plaintext got an answer: {:?}",
        &buf[..n]
    );
    logged(
        &mesh,
        "n2",
        &["refused an HBONE connection", "TLS handshake"],
    )
    .await?;

    // No client certificate.
    let result = forge::tls_exchange(
        connect_from(outsider, hbone).await?,
        forge::client_config(None)?,
    )
    .await;
    assert!(result.is_err(), "served without a client certificate");
    logged(&mesh, "n2", &["refused an HBONE connection", "certificate"]).await?;

    // A certificate of another trust domain, signed by the mesh root.
    let foreign = forge::certificate(
        &ca,
        &Identity::new("evil.example", "demo", "client"),
        -60,
        3600,
    )?;
    let result = forge::tls_exchange(
        connect_from(outsider, hbone).await?,
        forge::client_config(Some(&foreign))?,
    )
    .await;
    assert!(result.is_err(), "served a foreign trust domain");
    logged(
        &mesh,
        "n2",
        &["refused an HBONE connection", "trust domain evil.example"],
    )
    .await?;

    // An expired certificate.
    let expired = forge::certificate(&ca, &id("demo", "client"), -7200, -3600)?;
    let result = forge::tls_exchange(
        connect_from(outsider, hbone).await?,
        forge::client_config(Some(&expired))?,
    )
    .await;
    assert!(result.is_err(), "served an expired certificate");
    logged(&mesh, "n2", &["refused an HBONE connection", "xpired"]).await?;

    // A valid client asking for an address that is not the pod's.
    let valid = forge::certificate(&ca, &id("demo", "client"), -60, 3600)?;
    let tcp = connect_from(outsider, hbone).await?;
    let connection = handshake(tcp, hbone, forge::client_config(Some(&valid))?).await?;
    let stranger = SocketAddr::from(([198, 18, 1, 99], 8080));
    match connect_stream(&connection.send, hbone, stranger, &[]).await {
        Err(HboneError::Status { status, .. }) => assert_eq!(status, StatusCode::BAD_REQUEST),
        other => panic!("expected 400, got {:?}", other.map(|_| "a stream")),
    }
    logged(
        &mesh,
        "n2",
        &["CONNECT authority 198.18.1.99:8080 is not an address of pod demo/server (400)"],
    )
    .await?;
    // …and one for a port nothing listens on: 503.
    let closed = SocketAddr::from((server.ip(), 8081));
    match connect_stream(&connection.send, hbone, closed, &[]).await {
        Err(HboneError::Status { status, .. }) => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| "a stream")),
    }
    logged(&mesh, "n2", &["refused the connection", "(503)"]).await?;

    // A destination that answers with the wrong identity: demo/fake must be
    // spiffe://…/sa/fake, but an impostor there presents …/sa/server.
    let fake = mesh.topology.pod("demo/fake");
    let impostor = Arc::new(forge::certificate(&ca, &id("demo", "server"), -60, 3600)?);
    let listener = fake.enter(|| std::net::TcpListener::bind((fake.ip(), 15008)))??;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let trust = weft_proxy::hbone::tls::TrustBundle::new(&impostor.roots, "cluster.local")?;
    let resolver = Arc::new(WorkloadCertResolver::new(move || Some(impostor.clone())));
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(resolver, &trust)?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, trust) = (acceptor.clone(), trust.clone());
            tokio::spawn(async move {
                let _ = server::serve(tcp, acceptor, &trust, |c| async move {
                    c.reject(StatusCode::OK)
                })
                .await;
            });
        }
    });
    let client = mesh.topology.pod("demo/client");
    let result = probe(
        client,
        SocketAddr::from((fake.ip(), 8080)),
        "to the impostor",
    )
    .await;
    assert!(
        result.is_err() || result.as_ref().is_ok_and(|r| r.reply.is_empty()),
        "the impostor was trusted: {result:?}"
    );
    logged(
        &mesh,
        "n1",
        &["connection failed", "the server is spiffe://cluster.local/ns/demo/sa/server, but the destination must be spiffe://cluster.local/ns/demo/sa/fake"],
    )
    .await?;
    Ok(())
}

async fn the_mesh_keeps_working_while_the_control_service_is_down(
    capture: CaptureMode,
    source: Source<'_>,
) -> anyhow::Result<()> {
    require_privileged();
    let mut mesh = mesh(capture, source).await?;
    let (client, server) = (
        mesh.topology.pod("demo/client"),
        mesh.topology.pod("demo/server"),
    );
    // The mesh has the whole config first: on a cluster the service's VIP
    // reaches ztunnel about a second after both pods are enrolled (with
    // the next API object), and killing the control service before then
    // tests nothing but the race.
    let vip: SocketAddr = "198.19.0.10:80".parse()?;
    eventually(
        "the service VIP to answer",
        Duration::from_secs(20),
        || async { probe(client, vip, "before").await.ok() },
    )
    .await?;
    // An open connection from the client pod (captured).
    let open = HeldProbe::start(
        client,
        SocketAddr::from((server.ip(), 8080)),
        "opened before",
    )
    .await?;

    mesh.control.process.kill().await?;
    eventually("ztunnels to notice", Duration::from_secs(10), || async {
        let dump = mesh.ztunnel("n1").config_dump().await.ok()?;
        (dump["xds"]["connected"] == false).then_some(())
    })
    .await?;

    // The old connection finishes…
    let report = open.finish().await?;
    assert_eq!(
        report.reply,
        format!("server saw {}: opened before", client.ip())
    );
    // …and new ones work, by IP and by VIP.
    let report = probe(client, SocketAddr::from((server.ip(), 8080)), "while down").await?;
    assert!(report.reply.ends_with("while down"));
    let report = probe(client, vip, "vip while down").await?;
    assert!(report.reply.ends_with("vip while down"));

    mesh.restart_control().await?;
    eventually("ztunnels to reconnect", Duration::from_secs(30), || async {
        let dump = mesh.ztunnel("n1").config_dump().await.ok()?;
        (dump["xds"]["connected"] == true).then_some(())
    })
    .await?;
    Ok(())
}

/// Gives `pod` the IPv6 address `fd00:198:18:1::{host}` on its interface.
fn add_ipv6(pod: &Pod, host: u16) -> anyhow::Result<Ipv6Addr> {
    let addr = Ipv6Addr::new(0xfd00, 0x198, 0x18, 1, 0, 0, 0, host);
    pod.netns().ip(&[
        "-6",
        "addr",
        "add",
        &format!("{addr}/64"),
        "dev",
        "eth0",
        "nodad",
    ])?;
    Ok(addr)
}

/// A listener nothing serves: whether a connection ever reached it shows
/// in its accept queue.
fn silent_listener(pod: &Pod, addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let listener = pod.enter(|| std::net::TcpListener::bind(addr))??;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn assert_never_reached(listener: &std::net::TcpListener, what: &str) {
    match listener.accept() {
        Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("{what}: a connection from {peer} got through"),
        Err(err) => panic!("{what}: accept failed: {err}"),
    }
}

/// ztunnel carries IPv4 only, so an enrolled pod's IPv6 TCP is refused both
/// ways instead of slipping past the mesh; unenrolled pods keep IPv6.
async fn ipv6_of_an_enrolled_pod_is_refused_never_let_through(
    capture: CaptureMode,
    source: Source<'_>,
) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, source).await?;
    let client = mesh.topology.pod("demo/client");
    let outsider = mesh.topology.pod("legacy/outsider");
    let neighbor = mesh.topology.pod("legacy/neighbor");
    let client_v6 = add_ipv6(client, 0xc)?;
    let outsider_v6 = add_ipv6(outsider, 0xa)?;
    let neighbor_v6 = add_ipv6(neighbor, 0xb)?;

    // IPv6 works between the unenrolled pods.
    let served = neighbor.enter(|| std::net::TcpListener::bind((neighbor_v6, 7001)))??;
    let _served = apps::spawn_echo(served, "neighbor")?;
    let report = probe(outsider, SocketAddr::from((neighbor_v6, 7001)), "v6").await?;
    assert_eq!(report.reply, format!("neighbor saw {outsider_v6}: v6"));

    // Inbound: the enrolled pod's IPv6 listener is never reached.
    let inbound = SocketAddr::from((client_v6, 7000));
    let client_listener = silent_listener(client, inbound)?;
    let err = probe(outsider, inbound, "in")
        .await
        .expect_err("IPv6 reached the enrolled pod");
    assert!(err.to_string().contains("connecting to"), "{err:#}");
    assert_never_reached(&client_listener, "inbound IPv6");

    // Outbound: the enrolled pod's IPv6 connect is refused.
    let outbound = SocketAddr::from((neighbor_v6, 7000));
    let neighbor_listener = silent_listener(neighbor, outbound)?;
    let err = probe(client, outbound, "out")
        .await
        .expect_err("IPv6 left the enrolled pod");
    assert!(err.to_string().contains("connecting to"), "{err:#}");
    assert_never_reached(&neighbor_listener, "outbound IPv6");

    // IPv4 between the same pods is still captured.
    let report = probe(
        client,
        SocketAddr::from((mesh.topology.pod("demo/server").ip(), 8080)),
        "v4",
    )
    .await?;
    assert_eq!(report.reply, format!("server saw {}: v4", client.ip()));
    Ok(())
}

in_both_capture_modes_and_sources!(
    both: [
        ipv6_of_an_enrolled_pod_is_refused_never_let_through,
        enrolled_pods_talk_across_nodes_by_ip_and_by_service_vip,
        no_payload_crosses_the_wire_in_clear_but_passthrough_does,
        an_unenrolled_client_reaches_an_enrolled_server_in_plaintext,
        fifty_sequential_connections_cost_one_handshake,
        the_mesh_keeps_working_while_the_control_service_is_down,
    ],
    directory_only: [bad_peers_are_refused_with_a_reason],
);
