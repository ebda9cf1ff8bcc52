//! A two-node cluster in network namespaces, two pods talking across it.
//! Run by `cargo xtask demo`.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_tests::{
    apps,
    privilege::require_privileged,
    topology::{Topology, NODE_BRIDGE},
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    require_privileged();
    let topo = Topology::builder()
        .node("n1")
        .node("n2")
        .pod("default/client", "n1")
        .pod("default/server", "n2")
        .build()?;
    println!(
        "Weft demo: a two-node cluster made of network namespaces ({})",
        topo.id().as_str()
    );
    let wiring = if topo.uses_cni() {
        "CNI bridge + host-local plugins"
    } else {
        "plain veths (CNI plugins not installed)"
    };
    for node in topo.nodes() {
        println!(
            "  node {:<4} fabric {:<14} pods {} on bridge {NODE_BRIDGE}, wired by {wiring}",
            node.name(),
            node.ip(),
            node.addresses().pod_cidr(),
        );
    }
    for pod in topo.pods() {
        println!(
            "  pod  {:<15} on {}: {}",
            pod.qualified_name(),
            pod.node(),
            pod.ip()
        );
    }

    let client = topo.pod("default/client");
    let server = topo.pod("default/server");
    let listener = server.enter(|| std::net::TcpListener::bind((server.ip(), 8080)))??;
    let _server = apps::spawn_echo(listener, "server")?;
    let target = SocketAddr::from((server.ip(), 8080));
    let request = "hello from the client pod";
    let reply = client
        .spawn(move || async move {
            let mut stream = tokio::net::TcpStream::connect(target).await?;
            stream.write_all(request.as_bytes()).await?;
            stream.shutdown().await?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await?;
            anyhow::Ok(reply)
        })?
        .join()
        .await
        .context("client pod → server pod")?;
    println!();
    println!("  default/client → {target}: {request:?}");
    println!("  default/server replied:   {reply:?}");
    let route = topo
        .node("n1")
        .netns()
        .ip(&["route", "get", &server.ip().to_string()])?;
    println!(
        "  path: {} → bridge {} on n1 → {} → n2 → {}",
        client.ip(),
        topo.node("n1").addresses().pod_gateway,
        route.lines().next().unwrap_or_default().trim(),
        server.ip()
    );
    println!();
    println!("  (the mesh arrives next: ztunnel on each node, HBONE between them)");
    topo.teardown()?;
    println!("torn down: no namespaces, cgroups or state left behind");
    Ok(())
}
