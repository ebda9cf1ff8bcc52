//! The waypoint on real namespaces with real processes: a namespace
//! labelled `istio.io/use-waypoint` sends its service-addressed traffic
//! through the waypoint (HBONE in, HBONE out), which proxies HTTP/1.1 and
//! HTTP/2 request by request and anything else at L4; pod-addressed
//! traffic does not take a service waypoint; a waypoint that is not there
//! refuses the traffic instead of being bypassed; and the waypoint serves
//! only what is bound to it.

#[macro_use]
mod support;

use std::{net::SocketAddr, path::Path, time::Duration};

use http::StatusCode;
use support::{binaries, curl, logged, probe};
use weft_tests::{
    apps,
    mesh::{Mesh, MeshOptions},
    privilege::require_privileged,
    processes::{eventually, WaypointProcess},
    topology::Topology,
};
use ztunnel::capture::CaptureMode;

const CONFIG: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {nodeName: n2, serviceAccountName: waypoint}
status: {podIP: "${shop/waypoint-0}"}
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: shop}
spec:
  clusterIP: 198.19.0.20
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: n1, serviceAccountName: client}
status: {podIP: "${shop/client}"}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
spec: {nodeName: n2, serviceAccountName: server}
status: {podIP: "${shop/server}"}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  selector: {app: server}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: echo, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: direct, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec:
  clusterIP: 198.19.0.11
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
"#;

fn waypoint_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wt-waypoint"))
}

async fn mesh(capture: CaptureMode) -> anyhow::Result<(Mesh, WaypointProcess)> {
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("shop/client", "n1")
        .pod("shop/server", "n2")
        .pod("shop/waypoint-0", "n2")
        .build()?;
    let mesh = Mesh::start_with(
        topology,
        CONFIG,
        binaries(),
        MeshOptions {
            capture,
            ..MeshOptions::default()
        },
    )
    .await?;
    mesh.enroll("shop/client", "client").await?;
    mesh.enroll("shop/server", "server").await?;
    let server = mesh.topology.pod("shop/server");
    let http = server.enter(|| std::net::TcpListener::bind((server.ip(), 8080)))??;
    apps::spawn_web(http, "server")?;
    let echo = server.enter(|| std::net::TcpListener::bind((server.ip(), 9090)))??;
    apps::spawn_echo(echo, "echo")?;
    let waypoint = mesh
        .start_waypoint("shop/waypoint-0", "waypoint", waypoint_bin())
        .await?;
    Ok((mesh, waypoint))
}

async fn waypoint_logged(waypoint: &WaypointProcess, needles: &[&str]) -> anyhow::Result<String> {
    eventually(
        &format!("a waypoint log line with {needles:?}"),
        Duration::from_secs(10),
        || async { waypoint.process.lines_with(needles).into_iter().next() },
    )
    .await
}

async fn service_traffic_goes_through_the_waypoint_and_pod_traffic_does_not(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh(capture).await?;
    let client = mesh.topology.pod("shop/client");
    let server = mesh.topology.pod("shop/server");
    let waypoint_ip = mesh.topology.pod("shop/waypoint-0").ip();

    // HTTP/1.1 to the service: the server sees the waypoint, which logs the
    // request.
    let body = curl(client, "http://198.19.0.10/hello").await?;
    assert_eq!(body, format!("server saw {waypoint_ip}: GET /hello"));
    let line = waypoint_logged(
        &waypoint,
        &[
            "request complete",
            "method=GET",
            "path=/hello",
            "response_code=200",
        ],
    )
    .await?;
    assert!(line.contains("protocol=HTTP/1.1"), "{line}");
    assert!(
        line.contains("src.identity=spiffe://cluster.local/ns/shop/sa/client"),
        "the waypoint knows the client by its identity: {line}"
    );
    assert!(
        line.contains(&format!("upstream_host={}:8080", server.ip())),
        "{line}"
    );
    logged(
        mesh.ztunnel("n1"),
        &[
            "connection complete",
            "outbound",
            "dst.addr=198.19.0.10:80",
            "dst.workload=waypoint-0",
            "waypoint=true",
        ],
    )
    .await?;
    // The destination's ztunnel took the waypoint's tunnel, by identity
    // (the waypoint keeps that connection for its next requests, so it is
    // seen opened, not closed).
    eventually(
        "an inbound connection from the waypoint",
        Duration::from_secs(10),
        || async {
            let text = mesh.ztunnel("n2").metrics_text().await.ok()?;
            text.lines()
                .find(|l| {
                    l.starts_with("istio_tcp_connections_opened_total{")
                        && l.contains("reporter=\"destination\"")
                        && l.contains(
                            "source_principal=\"spiffe://cluster.local/ns/shop/sa/waypoint\"",
                        )
                })
                .map(str::to_owned)
        },
    )
    .await?;

    // HTTP/2 with prior knowledge, kept as HTTP/2 on both legs.
    let mut cmd = client.command("curl")?;
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "--http2-prior-knowledge",
        "http://198.19.0.10/h2",
    ]);
    let out = tokio::process::Command::from(cmd).output().await?;
    anyhow::ensure!(
        out.status.success(),
        "curl --http2-prior-knowledge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("server saw {waypoint_ip}: GET /h2")
    );
    waypoint_logged(
        &waypoint,
        &["request complete", "path=/h2", "protocol=HTTP/2"],
    )
    .await?;

    // Keep-alive: several requests on one client connection.
    let mut cmd = client.command("curl")?;
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "http://198.19.0.10/a",
        "http://198.19.0.10/b",
    ]);
    let out = tokio::process::Command::from(cmd).output().await?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("server saw {waypoint_ip}: GET /aserver saw {waypoint_ip}: GET /b")
    );

    // Not HTTP: carried at L4, still through the waypoint.
    let report = probe(client, "198.19.0.10:9090".parse()?, "not http").await?;
    assert_eq!(report.reply, format!("echo saw {waypoint_ip}: not http"));
    waypoint_logged(&waypoint, &["connection complete", "protocol=tcp"]).await?;

    // Addressed to the pod, the traffic does not take the service's
    // waypoint; nor does a service that opts out.
    let body = curl(client, &format!("http://{}:8080/pod", server.ip())).await?;
    assert_eq!(body, format!("server saw {}: GET /pod", client.ip()));
    let body = curl(client, "http://198.19.0.11/opted-out").await?;
    assert_eq!(body, format!("server saw {}: GET /opted-out", client.ip()));
    assert!(waypoint.process.lines_with(&["path=/pod"]).is_empty());
    assert!(waypoint.process.lines_with(&["path=/opted-out"]).is_empty());
    Ok(())
}

async fn a_waypoint_that_is_not_running_refuses_rather_than_being_bypassed(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    require_privileged();
    let (mesh, mut waypoint) = mesh(capture).await?;
    let client = mesh.topology.pod("shop/client");
    waypoint.process.kill().await?;
    let result = curl(client, "http://198.19.0.10/bypass?").await;
    assert!(result.is_err(), "served without its waypoint: {result:?}");
    // Once the waypoint's Service has no pod behind it, ztunnel says why.
    mesh.update_config(&CONFIG.replace(
        "  name: waypoint-0\n  namespace: shop\n  labels: {gateway.networking.k8s.io/gateway-name: waypoint}",
        "  name: waypoint-0\n  namespace: shop\n  labels: {app: stopped}",
    ))?;
    eventually(
        "ztunnel to refuse for want of a waypoint",
        Duration::from_secs(15),
        || async {
            let _ = curl(client, "http://198.19.0.10/bypass?").await;
            mesh.ztunnel("n1")
                .process
                .lines_with(&[
                    "connection failed",
                    "waypoint shop/waypoint.shop.svc.cluster.local is not ready",
                ])
                .into_iter()
                .next()
        },
    )
    .await?;
    Ok(())
}

/// A client with a valid identity asks the waypoint for a destination not
/// bound to it: refused, so the waypoint is no open proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waypoint_serves_only_what_is_bound_to_it() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh(CaptureMode::Ebpf).await?;
    let client = mesh.topology.pod("shop/client");
    let ca = mesh.dir.path().join("state").join("ca");
    let cert = weft_tests::forge::certificate(
        &ca,
        &weft_proto::spiffe::Identity::new("cluster.local", "shop", "client"),
        -60,
        3600,
    )?;
    let hbone = SocketAddr::from((mesh.topology.pod("shop/waypoint-0").ip(), 15008));
    let tcp =
        client.enter(|| std::net::TcpStream::connect_timeout(&hbone, Duration::from_secs(5)))??;
    tcp.set_nonblocking(true)?;
    let connection = weft_proxy::hbone::client::handshake(
        tokio::net::TcpStream::from_std(tcp)?,
        hbone,
        weft_tests::forge::client_config(Some(&cert))?,
    )
    .await?;
    for unbound in ["198.19.0.11:80", "198.18.9.9:80"] {
        let authority: SocketAddr = unbound.parse()?;
        match weft_proxy::hbone::client::connect_stream(&connection.send, hbone, authority, &[])
            .await
        {
            Err(weft_proxy::hbone::client::HboneError::Status { status, .. }) => {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{unbound}")
            }
            other => panic!(
                "{unbound}: expected 400, got {:?}",
                other.map(|_| "a stream")
            ),
        }
    }
    waypoint_logged(
        &waypoint,
        &[
            "refused a tunnel (400)",
            "does not use waypoint shop/waypoint",
        ],
    )
    .await?;
    Ok(())
}

in_both_capture_modes!(
    service_traffic_goes_through_the_waypoint_and_pod_traffic_does_not,
    a_waypoint_that_is_not_running_refuses_rather_than_being_bypassed,
);
