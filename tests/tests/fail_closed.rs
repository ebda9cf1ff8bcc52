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

use std::{fs::File, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use support::{binaries, probe};
use weft_tests::{
    apps,
    mesh::{Mesh, MeshOptions},
    privilege::require_privileged,
    processes::eventually,
    topology::{Pod, Topology},
};
use weft_zds::{
    agent::{Agent, AgentPod},
    messages::Workload,
    wire::DatagramListener,
};
use ztunnel::capture::CaptureMode;

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
    mesh.add_pod(mesh.agent("n2"), "demo/newcomer", "newcomer")
        .await?;
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

/// An add for a pod whose namespace is not what the agent says is refused.
async fn refused(agent: &Agent, workload: &Workload, netns: &File) -> anyhow::Result<String> {
    let pod = AgentPod {
        workload: workload.clone(),
        netns: Arc::new(netns.try_clone()?.into()),
    };
    match agent.add(pod).await {
        Ok(()) => panic!("ztunnel enrolled {} with a lie", workload.uid),
        Err(err) => Ok(err.to_string()),
    }
}

async fn the_node_agent_cannot_lie_about_a_pods_namespace(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    require_privileged();
    let mesh = mesh(capture, &format!("{BASE}{NEWCOMER}")).await?;
    let (server, outsider, spare) = (
        mesh.topology.pod("demo/server"),
        mesh.topology.pod("legacy/outsider"),
        mesh.topology.pod("legacy/spare"),
    );
    let agent = mesh.agent("n2");
    let imposter = Workload {
        uid: "Kubernetes//Pod/demo/imposter".into(),
        name: "imposter".into(),
        namespace: "demo".into(),
        service_account: "server".into(),
    };
    // The server's namespace, for another pod: its address is the server's.
    let err = refused(agent, &imposter, server.netns().file()).await?;
    assert!(err.contains("belongs to enrolled pod demo/server"), "{err}");
    // The server itself, with another pod's namespace: the control service
    // gives the server an address that namespace does not hold.
    let server_workload = Workload {
        uid: weft_tests::mesh::pod_uid("demo", "server"),
        name: "server".into(),
        namespace: "demo".into(),
        service_account: "server".into(),
    };
    let err = refused(agent, &server_workload, spare.netns().file()).await?;
    assert!(
        err.contains(&format!("does not hold {}", server.ip())),
        "{err}"
    );
    // A pod not running yet, whose description names an address its
    // namespace does not hold (stale, as after its sandbox was recreated,
    // or a lie): taken and captured, but it never speaks as that pod, and
    // nothing reaches it, until the description agrees.
    let newcomer = mesh.topology.pod("demo/newcomer");
    let held = Workload {
        uid: weft_tests::mesh::pod_uid("demo", "newcomer"),
        name: "newcomer".into(),
        namespace: "demo".into(),
        service_account: "newcomer".into(),
    };
    agent
        .add(AgentPod {
            workload: held.clone(),
            netns: Arc::new(spare.netns().file().try_clone()?.into()),
        })
        .await?;
    assert!(
        !served(spare, server, "as the newcomer").await,
        "a pod held for its description spoke with the newcomer's identity"
    );
    support::logged(
        mesh.ztunnel("n2"),
        &[
            "connection failed",
            &format!(
                "the control service gives this pod {}, which its network namespace does not hold",
                newcomer.ip()
            ),
        ],
    )
    .await?;
    let spare_app = spare.enter(|| std::net::TcpListener::bind((spare.ip(), 8080)))??;
    let _spare_app = apps::spawn_echo(spare_app, "spare")?;
    assert!(
        !served(mesh.topology.pod("demo/client"), spare, "to the held pod").await,
        "a connection reached a pod held for its description"
    );
    support::logged(
        mesh.ztunnel("n2"),
        &["has not described destination pod demo/newcomer yet (or not at an address its namespace holds)"],
    )
    .await?;
    agent.remove(&held.uid).await;
    // ztunnel's own namespace.
    let err = refused(agent, &imposter, mesh.topology.node("n2").netns().file()).await?;
    assert!(err.contains("ztunnel's own"), "{err}");
    // Releasing what was never added takes nothing from the server, and the
    // refused replacement left the server as it was.
    agent.remove(&imposter.uid).await;
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
        mesh.add_pod(agent, "demo/server", "server").await?;
        assert!(
            !served(outsider, server, "restored").await,
            "naming the pod again restored its capture"
        );
    }
    Ok(())
}

/// Whether plaintext from outside the mesh reaches the STRICT server (it
/// does not while ztunnel captures the server).
async fn plaintext_served(mesh: &Mesh, what: &str) -> bool {
    let (outsider, server) = (
        mesh.topology.pod("legacy/outsider"),
        mesh.topology.pod("demo/server"),
    );
    served(outsider, server, what).await
}

/// The pods ztunnel serves, by name.
async fn served_pods(mesh: &Mesh, node: &str) -> anyhow::Result<Vec<String>> {
    let dump = mesh.ztunnel(node).config_dump().await?;
    Ok(dump["pods"]
        .as_array()
        .context("pods")?
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect())
}

async fn a_node_agent_ztunnel_does_not_trust_cannot_unenroll_pods(
    capture: CaptureMode,
) -> anyhow::Result<()> {
    require_privileged();
    let mut mesh = mesh(capture, BASE).await?;
    mesh.add_pod(mesh.agent("n2"), "demo/server", "server")
        .await?;

    // The node agent dies: ztunnel keeps serving what it was given.
    mesh.stop_agent("n2").await?;
    eventually(
        "ztunnel to notice the agent is gone",
        Duration::from_secs(10),
        || async {
            let dump = mesh.ztunnel("n2").config_dump().await.ok()?;
            (dump["node_agent"]["connected"] == false).then_some(())
        },
    )
    .await?;
    assert_eq!(served_pods(&mesh, "n2").await?, ["server"]);
    assert!(
        !plaintext_served(&mesh, "without the agent").await,
        "still captured"
    );

    // A process that is neither root nor the agent's uid takes the socket
    // path (where the directory's mode would let it) and waits for ztunnel.
    let socket = mesh.agent_socket("n2");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        socket.parent().expect("a directory"),
        std::fs::Permissions::from_mode(0o777),
    )?;
    let intruder_socket = socket.clone();
    let intruder = std::thread::spawn(move || -> anyhow::Result<Option<Vec<u8>>> {
        // Credentials are per thread to the kernel: only this one drops root.
        // SAFETY: a plain syscall with integer arguments.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        anyhow::ensure!(rc == 0, "setresuid: {}", std::io::Error::last_os_error());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let listener = DatagramListener::bind(&intruder_socket)?;
            let ztunnel = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                .await
                .context("ztunnel never connected to the intruder")??;
            // ztunnel hangs up without a hello; an empty snapshot sent anyway
            // reaches nobody.
            let hello = tokio::time::timeout(Duration::from_secs(5), ztunnel.recv())
                .await
                .context("ztunnel neither spoke nor hung up")??;
            let _ = ztunnel
                .send(&weft_zds::messages::encode_snapshot_sent(), &[])
                .await;
            Ok(hello.map(|d| d.bytes))
        })
    })
    .join()
    .expect("the intruder thread does not panic")?;
    assert_eq!(intruder, None, "ztunnel said hello to an untrusted agent");
    support::logged(
        mesh.ztunnel("n2"),
        &["refused the node agent", "uid 65534; only root"],
    )
    .await?;
    assert_eq!(served_pods(&mesh, "n2").await?, ["server"]);
    assert!(
        !plaintext_served(&mesh, "after the intruder").await,
        "still captured"
    );

    // The agent comes back, having rebuilt its state: ztunnel reconnects,
    // and the snapshot keeps the server.
    mesh.start_agent("n2", &[("demo/server", "server")]).await?;
    anyhow::ensure!(
        mesh.agent("n2")
            .wait_connected(1, Duration::from_secs(10))
            .await,
        "ztunnel did not reconnect to the restarted agent"
    );
    let dump = mesh.ztunnel("n2").config_dump().await?;
    assert_eq!(dump["node_agent"]["snapshots"], 2, "{}", dump["node_agent"]);
    assert_eq!(served_pods(&mesh, "n2").await?, ["server"]);
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
    the_node_agent_cannot_lie_about_a_pods_namespace,
    a_node_agent_ztunnel_does_not_trust_cannot_unenroll_pods,
);
