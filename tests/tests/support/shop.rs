//! A shop namespace behind a waypoint, for the waypoint's L7 stories:
//! a client and a visitor on node n1; two versions of `web` (and a pod
//! `web-dead` with no application), the waypoint, on n2. `curl` in a pod
//! is the client.

use std::path::Path;

use anyhow::Context;
use weft_tests::{
    apps,
    mesh::{Mesh, MeshOptions},
    processes::WaypointProcess,
    topology::{Pod, Topology},
};

use super::binaries;

/// Namespaces, the waypoint, the pods and services `web` (ports 80 and
/// 8081), `web-v1` and `web-v2`, each at port 80.
pub const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio.io/dataplane-mode: ambient}}
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
metadata: {name: visitor, namespace: other, labels: {app: visitor}}
spec: {nodeName: n1, serviceAccountName: visitor}
status: {podIP: "${other/visitor}"}
---
apiVersion: v1
kind: Pod
metadata: {name: web-v1, namespace: shop, labels: {app: web, version: v1}}
spec: {nodeName: n2, serviceAccountName: web}
status: {podIP: "${shop/web-v1}"}
---
apiVersion: v1
kind: Pod
metadata: {name: web-v2, namespace: shop, labels: {app: web, version: v2}}
spec: {nodeName: n2, serviceAccountName: web}
status: {podIP: "${shop/web-v2}"}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: alt, port: 8081, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: shop}
spec:
  clusterIP: 198.19.0.11
  selector: {app: web, version: v1}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v2, namespace: shop}
spec:
  clusterIP: 198.19.0.12
  selector: {app: web, version: v2}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// The path to the waypoint binary built from this checkout.
pub fn waypoint_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wt-waypoint"))
}

/// Starts the shop with `extra` YAML appended to [`BASE`]: the control
/// service, both nodes, the enrolled pods, `web`'s servers and the waypoint.
pub async fn mesh(extra: &str) -> anyhow::Result<(Mesh, WaypointProcess)> {
    let mesh = shop(extra).await?;
    let waypoint = mesh
        .start_waypoint("shop/waypoint-0", "waypoint", waypoint_bin())
        .await?;
    Ok((mesh, waypoint))
}

/// As [`mesh`], without starting the waypoint.
pub async fn shop(extra: &str) -> anyhow::Result<Mesh> {
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("shop/client", "n1")
        .pod("other/visitor", "n1")
        .pod("shop/web-v1", "n2")
        .pod("shop/web-v2", "n2")
        .pod("shop/waypoint-0", "n2")
        .pod("shop/web-dead", "n2")
        .build()?;
    let mesh = Mesh::start_with(
        topology,
        &format!("{BASE}{extra}"),
        binaries(),
        MeshOptions::default(),
    )
    .await?;
    for (pod, sa) in [
        ("shop/client", "client"),
        ("other/visitor", "visitor"),
        ("shop/web-v1", "web"),
        ("shop/web-v2", "web"),
    ] {
        mesh.enroll(pod, sa).await?;
    }
    for (qualified, name) in [("shop/web-v1", "v1"), ("shop/web-v2", "v2")] {
        let pod = mesh.topology.pod(qualified);
        let listener = pod.enter(|| std::net::TcpListener::bind((pod.ip(), 8080)))??;
        apps::spawn_web(listener, name)?;
    }
    Ok(mesh)
}

/// Runs `curl -sS ARGS…` as a process of `pod`: (status code, headers,
/// body) of the last response.
pub async fn curl(pod: &Pod, args: &[&str]) -> anyhow::Result<(u16, String, String)> {
    let mut cmd = pod.command("curl")?;
    cmd.args(["-sS", "--max-time", "10", "-D", "-"]).args(args);
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .context("running curl")?;
    anyhow::ensure!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text
        .rsplit_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .context("a response")?;
    let last_head = head.rsplit("\r\n\r\n").next().unwrap_or(&head).to_owned();
    let status = last_head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("a status")?;
    Ok((status, last_head, body))
}

/// The name of the version that answered (`v1 saw …` → `v1`).
pub fn served_by(body: &str) -> &str {
    body.split_whitespace().next().unwrap_or_default()
}
