//! Traffic through ztunnels that are being replaced: an enrolled client and
//! an unenrolled pod that policy refuses keep connecting to a server on the
//! other node while a test restarts or replaces ztunnels, and afterwards
//! nothing may have bypassed the mesh.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use weft_tests::{
    apps,
    capture::{contains, PacketCapture},
    mesh::Mesh,
    topology::{Topology, TopologyBuilder},
};

use super::{probe, traffic};

/// client (enrolled, n1), outsider (not enrolled, n1), server (enrolled,
/// n2), and a policy admitting only the client.
pub const CONFIG: &str = r#"
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

/// The topology [`CONFIG`] describes.
pub fn topology() -> anyhow::Result<Topology> {
    Ok(builder().build()?)
}

/// The topology [`CONFIG`] describes, not built yet (for [`Mesh::launch`]).
pub fn builder() -> TopologyBuilder {
    Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("demo/client", "n1")
        .pod("legacy/outsider", "n1")
        .pod("demo/server", "n2")
}

/// Enrolls client and server, starts the server's echo on 9090 and checks
/// that the mesh works and refuses the outsider; returns the server's
/// address.
pub async fn serve(mesh: &Mesh) -> anyhow::Result<SocketAddr> {
    mesh.enroll("demo/client", "client").await?;
    mesh.enroll("demo/server", "server").await?;
    let server = mesh.topology.pod("demo/server");
    let echo = server.enter(|| std::net::TcpListener::bind((server.ip(), 9090)))??;
    apps::spawn_echo(echo, "server")?;
    let target = SocketAddr::from((server.ip(), 9090));
    check(mesh, target, "first").await?;
    Ok(target)
}

/// One exchange each: the client is served, the outsider refused.
pub async fn check(mesh: &Mesh, target: SocketAddr, text: &str) -> anyhow::Result<()> {
    let client_ip = mesh.topology.pod("demo/client").ip();
    let report = probe(mesh.topology.pod("demo/client"), target, text).await?;
    anyhow::ensure!(
        report.reply == format!("server saw {client_ip}: {text}"),
        "the client got {:?}",
        report.reply
    );
    anyhow::ensure!(
        probe(mesh.topology.pod("legacy/outsider"), target, "refused")
            .await
            .is_err(),
        "the outsider was served"
    );
    Ok(())
}

/// Both pods' connection loops and a capture of n1's fabric link.
pub struct UnderTraffic {
    wire: PacketCapture,
    pcap: std::path::PathBuf,
    client: tokio::process::Child,
    outsider: tokio::process::Child,
    client_ip: Ipv4Addr,
    marker: &'static str,
}

impl UnderTraffic {
    /// Starts capturing and both loops; the client sends `marker`.
    pub async fn start(
        mesh: &Mesh,
        target: SocketAddr,
        marker: &'static str,
    ) -> anyhow::Result<Self> {
        let pcap = mesh.dir.path().join("fabric.pcap");
        let wire = PacketCapture::start(
            mesh.topology.fabric(),
            &mesh.topology.node("n1").fabric_link(),
            pcap.clone(),
        )
        .await?;
        Ok(Self {
            wire,
            pcap,
            client: traffic(mesh.topology.pod("demo/client"), target, marker)?,
            outsider: traffic(mesh.topology.pod("legacy/outsider"), target, "OUTSIDER")?,
            client_ip: mesh.topology.pod("demo/client").ip(),
            marker,
        })
    }

    /// Stops, and checks that nothing bypassed the mesh: the client's
    /// payload never crossed the wire in clear (the tunnel carried it), the
    /// outsider was never served, and the client kept being served.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        self.client.kill().await?;
        self.outsider.kill().await?;
        let bytes = self.wire.stop().await?;
        anyhow::ensure!(
            !contains(&bytes, self.marker.as_bytes()),
            "the enrolled client's payload crossed the wire in clear"
        );
        anyhow::ensure!(
            PacketCapture::count(&self.pcap, "tcp.port == 15008").await? > 0,
            "the tunnel carried nothing"
        );
        let read = |child: &mut tokio::process::Child| {
            let out = child.stdout.take();
            async move {
                let mut text = String::new();
                if let Some(mut out) = out {
                    out.read_to_string(&mut text).await?;
                }
                anyhow::Ok(text)
            }
        };
        let refused = read(&mut self.outsider).await?;
        anyhow::ensure!(
            !refused.contains("server saw"),
            "a refused connection reached the server: {refused}"
        );
        let served = read(&mut self.client).await?;
        anyhow::ensure!(
            served.contains(&format!("server saw {}: {}", self.client_ip, self.marker)),
            "the client's traffic did not flow"
        );
        Ok(())
    }
}
