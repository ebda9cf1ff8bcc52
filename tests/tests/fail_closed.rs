//! Policy and capture do not fail open: not when a stale pod claims a
//! server's address, not while a pod is enrolled but not yet described by
//! the control service, not when the node agent (or something posing as
//! it) lies about a pod, and not for mesh-wide selector policies.
//!
//! Each test reproduces an attack that once worked: a server under STRICT
//! mTLS, an enrolled client and an unenrolled one. Tests involving capture
//! run in both modes (`iptables::…`, `ebpf::…`).

#[macro_use]
mod support;

use std::{net::SocketAddr, os::fd::AsFd, time::Duration};

use anyhow::Context;
use support::{binaries, probe};
use weft_tests::{
    apps,
    mesh::{Mesh, MeshOptions},
    privilege::require_privileged,
    processes::eventually,
    topology::{Pod, Topology},
};
use ztunnel::{
    capture::CaptureMode,
    nodeagent::client::{AgentClient, Pod as AgentPod},
};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: demo}
spec: {mtls: {mode: STRICT}}
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
"#;

/// A pod of another namespace (without STRICT) still listed with the
/// server's address: a pod that has gone, or an address reused too early.
const STALE: &str = r#"
---
apiVersion: v1
kind: Pod
metadata: {name: stale, namespace: other, labels: {app: stale}}
spec: {nodeName: n1}
status: {podIP: "${demo/server}"}
"#;

const NEWCOMER: &str = r#"
---
apiVersion: v1
kind: Pod
metadata: {name: newcomer, namespace: demo, labels: {app: newcomer}}
spec: {nodeName: n2, serviceAccountName: newcomer}
status: {podIP: "${demo/newcomer}"}
"#;

async fn mesh(capture: CaptureMode, config: &str) -> anyhow::Result<Mesh> {
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("demo/client", "n1")
        .pod("demo/server", "n2")
        .pod("demo/newcomer", "n2")
        .pod("legacy/outsider", "n1")
        .pod("legacy/spare", "n2")
        .build()?;
    let mesh = Mesh::start_with(
        topology,
        config,
        binaries(),
        MeshOptions {
            capture,
            ..MeshOptions::default()
        },
    )
    .await?;
    mesh.enroll("demo/client", "client").await?;
    mesh.enroll("demo/server", "server").await?;
    for (qualified, name) in [("demo/server", "server"), ("demo/newcomer", "newcomer")] {
        let pod = mesh.topology.pod(qualified);
        let listener = pod.enter(|| std::net::TcpListener::bind((pod.ip(), 8080)))??;
        apps::spawn_echo(listener, name)?;
    }
    Ok(mesh)
}

/// Whether a probe from `from` to `to`:8080 got the application's answer.
async fn served(from: &Pod, to: &Pod, text: &str) -> bool {
    let addr = SocketAddr::from((to.ip(), 8080));
    probe(from, addr, text)
        .await
        .is_ok_and(|report| report.reply.ends_with(text))
}

/// Waits until `node`'s ztunnel holds (or no longer holds) workload `name`.
async fn holds_workload(mesh: &Mesh, node: &str, name: &str, held: bool) -> anyhow::Result<()> {
    eventually(
        &format!(
            "ztunnel {node} to {} workload {name}",
            if held { "hold" } else { "drop" }
        ),
        Duration::from_secs(15),
        || async {
            let dump = mesh.ztunnel(node).config_dump().await.ok()?;
            let has = dump["workloads"]
                .as_array()?
                .iter()
                .any(|w| w["name"] == name);
            (has == held).then_some(())
        },
    )
    .await
}

async fn a_stale_pod_with_the_servers_address_does_not_lift_strict(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, BASE).await?;
    let (client, server, outsider) = (
        mesh.topology.pod("demo/client"),
        mesh.topology.pod("demo/server"),
        mesh.topology.pod("legacy/outsider"),
    );
    assert!(
        served(client, server, "mesh").await,
        "the mesh client is served"
    );
    assert!(
        !served(outsider, server, "plain").await,
        "STRICT refuses plaintext"
    );

    mesh.update_config(&format!("{BASE}{STALE}"))?;
    holds_workload(&mesh, "n2", "stale", true).await?;
    assert!(
        !served(outsider, server, "plain with a stale pod").await,
        "a stale pod's namespace decided the server's connection"
    );
    support::logged(
        mesh.ztunnel("n2"),
        &[
            "connection failed",
            "src.workload=outsider",
            "dst.workload=server",
        ],
    )
    .await?;
    // The client's ztunnel does not guess which of the two the address is.
    assert!(!served(client, server, "mesh with a stale pod").await);
    support::logged(mesh.ztunnel("n1"), &["claimed by several workloads"]).await?;

    mesh.update_config(BASE)?;
    holds_workload(&mesh, "n2", "stale", false).await?;
    assert!(
        !served(outsider, server, "plain after").await,
        "STRICT still holds"
    );
    let back = eventually(
        "the client served again",
        Duration::from_secs(10),
        || async { served(client, server, "mesh after").await.then_some(()) },
    );
    back.await?;
    Ok(())
}

async fn a_pod_not_yet_described_is_denied_until_it_is(capture: CaptureMode) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, BASE).await?;
    let (client, newcomer, outsider) = (
        mesh.topology.pod("demo/client"),
        mesh.topology.pod("demo/newcomer"),
        mesh.topology.pod("legacy/outsider"),
    );
    // Enrolled before the control service knows the pod (its certificate
    // cannot be had yet, so ztunnel is not waited on).
    let agent = mesh.agent("n2").await?;
    mesh.add_pod(&agent, "demo/newcomer", "newcomer").await?;
    assert!(
        !served(outsider, newcomer, "before it is known").await,
        "plaintext reached a pod whose policies are not known yet"
    );
    support::logged(
        mesh.ztunnel("n2"),
        &[
            "connection failed",
            "has not described destination pod demo/newcomer",
        ],
    )
    .await?;

    mesh.update_config(&format!("{BASE}{NEWCOMER}"))?;
    holds_workload(&mesh, "n2", "newcomer", true).await?;
    mesh.wait_ready("n2").await?;
    eventually(
        "the mesh client served",
        Duration::from_secs(10),
        || async { served(client, newcomer, "known").await.then_some(()) },
    )
    .await?;
    assert!(
        !served(outsider, newcomer, "known, in plaintext").await,
        "STRICT applies once it is known"
    );
    Ok(())
}

/// An add for a pod that is not what the agent says is refused.
async fn refused(agent: &AgentClient, pod: &AgentPod<'_>, netns: impl AsFd) -> String {
    match agent.add(pod, netns).await {
        Ok(()) => panic!("ztunnel enrolled {} with a lie", pod.uid),
        Err(err) => err.to_string(),
    }
}

async fn the_node_agent_cannot_lie_about_a_pods_namespace_or_addresses(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, BASE).await?;
    let (server, outsider, spare) = (
        mesh.topology.pod("demo/server"),
        mesh.topology.pod("legacy/outsider"),
        mesh.topology.pod("legacy/spare"),
    );
    let agent = mesh.agent("n2").await?;
    let server_ips = [server.ip().into()];
    let imposter = AgentPod {
        uid: "Kubernetes//Pod/demo/imposter",
        name: "imposter",
        namespace: "demo",
        service_account: "server",
        ips: &server_ips,
    };
    // The server's address, in the server's namespace: another pod's.
    let err = refused(&agent, &imposter, server.netns().file()).await;
    assert!(err.contains("belongs to enrolled pod demo/server"), "{err}");
    // The server's address, claimed for another pod's namespace.
    let err = refused(&agent, &imposter, spare.netns().file()).await;
    assert!(
        err.contains(&format!("does not hold {}", server.ip())),
        "{err}"
    );
    // ztunnel's own namespace.
    let err = refused(&agent, &imposter, mesh.topology.node("n2").netns().file()).await;
    assert!(err.contains("ztunnel's own"), "{err}");
    // Releasing what was never added takes nothing from the server.
    agent.remove(imposter.uid).await?;
    assert!(!served(outsider, server, "after the imposter").await);
    support::logged(
        mesh.ztunnel("n2"),
        &[
            "connection failed",
            "src.workload=outsider",
            "dst.workload=server",
        ],
    )
    .await?;

    if capture == CaptureMode::Ebpf {
        // Damage the server's inbound entries by hand: plaintext now slips
        // past ztunnel to the application…
        let pins = mesh.topology.bpf_pin_dir("n2");
        let key: Vec<String> = server.ip().octets().iter().map(|b| b.to_string()).collect();
        for map in ["map-WEFT_POD_IPS", "map-WEFT_INBOUND"] {
            let path = pins.join(map);
            let mut cmd = tokio::process::Command::new("bpftool");
            cmd.args(["map", "delete", "pinned"])
                .arg(&path)
                .arg("key")
                .args(&key);
            let out = cmd.output().await.context("running bpftool")?;
            anyhow::ensure!(
                out.status.success(),
                "bpftool map delete {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(
            served(outsider, server, "uncaptured").await,
            "the damage took effect"
        );
        // …until the agent names the pod again, which restores them.
        mesh.add_pod(&agent, "demo/server", "server").await?;
        assert!(
            !served(outsider, server, "restored").await,
            "naming the pod again restored its capture"
        );
    }
    Ok(())
}

async fn a_second_agent_session_cannot_unenroll_the_agents_pods(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, BASE).await?;
    let (server, outsider) = (
        mesh.topology.pod("demo/server"),
        mesh.topology.pod("legacy/outsider"),
    );
    // The node agent's own session, held open, names the server.
    let agent = mesh.agent("n2").await?;
    mesh.add_pod(&agent, "demo/server", "server").await?;

    // Another root client says hello and sends an empty snapshot.
    let intruder = mesh.agent("n2").await?;
    intruder.snapshot_done().await?;
    let dump = mesh.ztunnel("n2").config_dump().await?;
    let pods: Vec<&str> = dump["pods"]
        .as_array()
        .context("pods")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(
        pods.contains(&"server"),
        "the intruder's snapshot released {pods:?}"
    );
    assert!(
        !served(outsider, server, "after the intruder").await,
        "still captured"
    );

    // Adds go to the newest session only; the older one may still remove.
    let err = mesh
        .add_pod(&agent, "demo/server", "server")
        .await
        .expect_err("an add from the older session");
    assert!(
        format!("{err:#}").contains("a newer node-agent session"),
        "{err:#}"
    );
    drop(intruder);
    eventually(
        "the agent's session to be the newest again",
        Duration::from_secs(5),
        || async { mesh.add_pod(&agent, "demo/server", "server").await.ok() },
    )
    .await?;

    // A process that is neither root nor the agent is refused outright,
    // even where the socket's mode would let it connect.
    let socket = mesh.ztunnel("n2").socket.clone();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))?;
    let answer = std::thread::spawn(move || {
        // Credentials are per thread to the kernel: only this one drops root.
        // SAFETY: a plain syscall with integer arguments.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async { AgentClient::connect(&socket).await.map(drop) })
    })
    .join()
    .expect("the unprivileged client does not panic");
    let err = answer.expect_err("an unprivileged process enrolled pods");
    assert!(err.to_string().contains("uid 65534; only root"), "{err}");
    Ok(())
}

const ROOT_DENY: &str = r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-client-to-servers, namespace: istio-system}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]
"#;

/// Not about capture: one mode is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_namespace_selector_policy_applies_in_every_namespace() -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(CaptureMode::Ebpf, &format!("{BASE}{ROOT_DENY}")).await?;
    let (client, server) = (
        mesh.topology.pod("demo/client"),
        mesh.topology.pod("demo/server"),
    );
    assert!(
        !served(client, server, "denied mesh-wide").await,
        "the mesh-wide DENY was not enforced"
    );
    support::logged(
        mesh.ztunnel("n2"),
        &[
            "connection failed",
            "denied by policy istio-system/no-client-to-servers",
        ],
    )
    .await?;
    // Without the policy the same connection is served.
    mesh.update_config(BASE)?;
    eventually(
        "the client served once the policy is gone",
        Duration::from_secs(10),
        || async { served(client, server, "allowed").await.then_some(()) },
    )
    .await?;
    Ok(())
}

in_both_capture_modes!(
    a_stale_pod_with_the_servers_address_does_not_lift_strict,
    a_pod_not_yet_described_is_denied_until_it_is,
    the_node_agent_cannot_lie_about_a_pods_namespace_or_addresses,
    a_second_agent_session_cannot_unenroll_the_agents_pods,
);
