//! The topology harness itself: nodes and pods on real network namespaces,
//! pod networking by the real CNI plugins, and cleanup in every case.

mod support;

use std::net::SocketAddr;

use support::{probe, tx_bytes};
use weft_tests::{
    apps,
    privilege::require_privileged,
    topology::{self, PodNetworking, Topology, TopologyId},
};

/// Everything the harness made for `id`, as far as the system shows.
fn resources_of(id: &TopologyId) -> Vec<String> {
    let stem = format!("{}-", id.as_str());
    topology::leftovers()
        .into_iter()
        .filter(|item| item.contains(&stem) || item.ends_with(id.as_str()))
        .collect()
}

async fn two_pods_talk_across_nodes(networking: PodNetworking) -> anyhow::Result<()> {
    let topo = Topology::builder()
        .node("n1")
        .node("n2")
        .pod("default/client", "n1")
        .pod("default/server", "n2")
        .networking(networking)
        .build()?;
    let client = topo.pod("default/client");
    let server = topo.pod("default/server");
    assert_eq!(
        client.ip().octets()[..3],
        [198, 18, 1],
        "client gets an address of n1's pod subnet"
    );
    assert_eq!(
        server.ip().octets()[..3],
        [198, 18, 2],
        "server gets an address of n2's pod subnet"
    );

    let listener = server.enter(|| std::net::TcpListener::bind((server.ip(), 8080)))??;
    let _server_task = apps::spawn_echo(listener, "server")?;

    let fabric = topo.fabric();
    let (n1_before, n2_before) = (
        tx_bytes(fabric, &topo.node("n1").fabric_link()),
        tx_bytes(fabric, &topo.node("n2").fabric_link()),
    );
    let report = probe(client, SocketAddr::from((server.ip(), 8080)), "hello").await?;
    assert_eq!(
        report.reply,
        apps::echo_reply(
            "server",
            SocketAddr::from((client.ip(), report.local.port())),
            "hello"
        ),
        "the server must see the client pod's own address (no NAT between pods)"
    );
    assert_eq!(report.local.ip(), std::net::IpAddr::from(client.ip()));
    // The fabric bridge forwarded the exchange both ways: each node's link
    // transmitted towards it (tx on the fabric side = traffic to the node).
    assert!(
        tx_bytes(fabric, &topo.node("n1").fabric_link()) > n1_before,
        "reply reached n1 over the fabric"
    );
    assert!(
        tx_bytes(fabric, &topo.node("n2").fabric_link()) > n2_before,
        "request reached n2 over the fabric"
    );

    let id = topo.id().clone();
    assert!(
        !resources_of(&id).is_empty(),
        "the topology's namespaces are visible while it runs"
    );
    topo.teardown()?;
    assert_eq!(
        resources_of(&id),
        Vec::<String>::new(),
        "teardown removes everything"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_networked_by_the_cni_bridge_plugin_talk_across_nodes() -> anyhow::Result<()> {
    require_privileged();
    // Prove the pods really came from the plugins, not the fallback.
    let topo = Topology::builder()
        .node("n1")
        .pod("default/a", "n1")
        .networking(PodNetworking::Cni)
        .build()?;
    assert!(topo.uses_cni());
    let pod = topo.pod("default/a");
    let result = pod.cni_result().expect("a CNI result is kept for DEL");
    assert_eq!(result["cniVersion"], topology::cni::CNI_VERSION);
    let interfaces: Vec<&str> = result["interfaces"]
        .as_array()
        .expect("the bridge plugin reports interfaces")
        .iter()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert!(
        interfaces.contains(&topology::NODE_BRIDGE),
        "bridge plugin made {interfaces:?}"
    );
    assert!(
        interfaces.contains(&"eth0"),
        "bridge plugin made {interfaces:?}"
    );
    let ipam_dir = topo
        .id()
        .state_dir()
        .join("ipam")
        .join(topo.id().child("n1"));
    let reserved = std::fs::read_dir(&ipam_dir)?
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy() == pod.ip().to_string());
    assert!(
        reserved,
        "host-local recorded {} in {}",
        pod.ip(),
        ipam_dir.display()
    );
    drop(topo);

    two_pods_talk_across_nodes(PodNetworking::Cni).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_on_plain_veths_talk_across_nodes() -> anyhow::Result<()> {
    require_privileged();
    two_pods_talk_across_nodes(PodNetworking::Veth).await
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    require_privileged();
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::panic::catch_unwind(move || {
        let topo = Topology::builder()
            .node("n1")
            .pod("default/a", "n1")
            .build()
            .expect("building");
        let mut cmd = topo.pod("default/a").command("sleep").expect("command");
        let child = cmd.arg("600").spawn().expect("sleep in the pod");
        tx.send((topo.id().clone(), child)).unwrap();
        panic!("deliberate panic with a topology and a pod process alive");
    });
    assert!(outcome.is_err());
    let (id, mut child) = rx.recv().unwrap();
    assert_eq!(resources_of(&id), Vec::<String>::new());
    // Already dead (killed with its cgroup), so this returns at once.
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the pod's process was killed with the pod"
    );
}

#[test]
fn leftovers_of_a_killed_run_are_reaped() {
    require_privileged();
    // A run whose process is gone: a pid that has exited.
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let id = TopologyId::for_process(dead_pid);
    let topo = Topology::builder()
        .id(id.clone())
        .node("n1")
        .pod("default/a", "n1")
        .build()
        .expect("building");
    let mut cmd = topo.pod("default/a").command("sleep").unwrap();
    let mut orphan = cmd.arg("600").spawn().unwrap();
    // The "killed" run never tears down.
    std::mem::forget(topo);
    assert!(!resources_of(&id).is_empty());

    topology::reap_orphans();
    assert_eq!(resources_of(&id), Vec::<String>::new());
    // The sleep was SIGKILLed by the reaper; collecting it must not block.
    let status = orphan.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "the orphan's process was killed, not left running"
    );
}
