//! `weft-cni` driven as a container runtime drives it — after Debian's real
//! `bridge` and `host-local`, given their result as `prevResult` — with the
//! real node agent deciding from a real API server and a real ztunnel
//! taking the pod over ZDS: an enrolled pod is captured before ADD returns
//! (its first connection goes through ztunnel), a pod outside the mesh is
//! passed through untouched, and each verb and error case of the CNI spec
//! answers as the spec says.

#[macro_use]
mod support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::{json, Value};
use support::probe;
use weft_control::auth::issue_node_token;
use weft_tests::{
    apps,
    kube::ApiServer,
    mesh::cluster::{start_container, CgroupDriver},
    privilege::require_privileged,
    processes::{eventually, ControlProcess, Process, ZtunnelProcess},
    topology::{addressing::CONTROL_PLANE_IP, cni::Chained, PodNetworking, Topology},
};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: app, namespace: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: demo}
spec: {nodeName: n1, serviceAccountName: app, containers: [{name: app, image: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: late, namespace: demo}
spec: {nodeName: n1, containers: [{name: app, image: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: visitor, namespace: legacy}
spec: {nodeName: n1, containers: [{name: app, image: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: walk-in, namespace: legacy}
spec: {nodeName: n1, containers: [{name: app, image: app}]}
"#;

/// Runs the plugin by hand, as a runtime would: `command`, the
/// environment, `stdin`. Returns the exit status's success and stdout as
/// JSON (`Null` when empty).
fn plugin(
    binary: &Path,
    command: Option<&str>,
    env: &[(&str, &str)],
    stdin: &Value,
) -> anyhow::Result<(bool, Value)> {
    let mut cmd = Command::new(binary);
    cmd.env_clear();
    if let Some(command) = command {
        cmd.env("CNI_COMMAND", command);
    }
    cmd.envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn()?;
    let input = match stdin {
        Value::String(raw) => raw.clone().into_bytes(),
        other => serde_json::to_vec(other)?,
    };
    use std::io::Write;
    child.stdin.take().expect("piped").write_all(&input)?;
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)?
    };
    Ok((out.status.success(), json))
}

async fn annotation(api: &ApiServer, namespace: &str, name: &str) -> anyhow::Result<String> {
    api.kubectl_ok(
        &[
            "get",
            "pod",
            "-n",
            namespace,
            name,
            "-o",
            "jsonpath={.metadata.annotations.ambient\\.istio\\.io/redirection}",
        ],
        None,
    )
    .await
}

async fn ztunnel_pods(ztunnel: &ZtunnelProcess) -> anyhow::Result<Vec<(String, Value)>> {
    let dump = ztunnel.config_dump().await?;
    Ok(dump["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().to_owned(),
                p["ips"].clone(),
            )
        })
        .collect())
}

/// One node as a cluster has it: the real API server, the control service
/// (nothing to serve but the CA), the node agent and ztunnel as their
/// DaemonSets would run them, and the node's CNI directories, where the
/// cluster's CNI has written its configuration (the bridge's; the harness
/// runs the real one) and the agent has chained weft-cni.
struct Node {
    // Dropped first: its teardown runs the plugin from `_dir`.
    topology: Topology,
    api: ApiServer,
    _dir: tempfile::TempDir,
    _control: ControlProcess,
    agent: Process,
    ztunnel: ZtunnelProcess,
    zds_socket: PathBuf,
    plugin_socket: PathBuf,
    cni_bin: PathBuf,
    cni_conf: PathBuf,
    primary: PathBuf,
}

impl Node {
    async fn start() -> anyhow::Result<Self> {
        let api = ApiServer::start().await?;
        api.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(OBJECTS))
            .await?;
        let dir = tempfile::tempdir()?;
        let (zds_socket, plugin_socket) =
            (dir.path().join("zds.sock"), dir.path().join("cni.sock"));
        let (cni_bin, cni_conf) = (dir.path().join("opt-cni-bin"), dir.path().join("net.d"));
        std::fs::create_dir_all(&cni_conf)?;
        let primary = cni_conf.join("10-k8s.conflist");
        std::fs::write(
            &primary,
            r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"weft0"}]}"#,
        )?;
        let mut topology = Topology::builder()
            .control_plane()
            .node("n1")
            .networking(PodNetworking::Cni)
            .build()?;
        let (config_dir, state_dir) = (dir.path().join("config"), dir.path().join("state"));
        std::fs::create_dir_all(&config_dir)?;
        issue_node_token(&state_dir.join("nodes"), "n1")?;
        let control = ControlProcess::start(
            Path::new(env!("CARGO_BIN_EXE_wt-control")),
            topology.control_plane().map(|n| n.name()),
            &config_dir,
            &state_dir,
            SocketAddr::from((CONTROL_PLANE_IP, 15012)),
        )
        .await?;
        let agent =
            Self::start_agent(&api, &zds_socket, &plugin_socket, &cni_bin, &cni_conf).await?;
        let ztunnel = ZtunnelProcess::start(
            Path::new(env!("CARGO_BIN_EXE_wt-ztunnel")),
            "n1",
            Some(topology.node("n1").netns().name()),
            &zds_socket,
            &control,
        )
        .await?;
        // The agent installs the plugin and chains it last in the primary
        // configuration; the runtime (the harness) runs what it finds there.
        let entry = eventually("weft-cni chained", Duration::from_secs(10), || async {
            let list: Value = serde_json::from_slice(&std::fs::read(&primary).ok()?).ok()?;
            let plugins = list["plugins"].as_array()?;
            (plugins.len() == 2 && plugins[0]["type"] == "bridge").then(|| plugins[1].clone())
        })
        .await?;
        assert_eq!(entry["type"], "weft-cni");
        assert!(
            cni_bin.join("weft-cni").is_file(),
            "the plugin binary is installed"
        );
        topology.chain_cni(Chained {
            dir: cni_bin.clone(),
            config: entry,
            // Its fallback reads the test API server (on this machine's
            // loopback).
            in_host_netns: true,
        })?;
        let node = Self {
            api,
            _dir: dir,
            topology,
            _control: control,
            agent,
            ztunnel,
            zds_socket,
            plugin_socket,
            cni_bin,
            cni_conf,
            primary,
        };
        node.wait_snapshots(1).await?;
        Ok(node)
    }

    async fn start_agent(
        api: &ApiServer,
        zds_socket: &Path,
        plugin_socket: &Path,
        cni_bin: &Path,
        cni_conf: &Path,
    ) -> anyhow::Result<Process> {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_wt-node-agent"));
        cmd.args(["--node-name", "n1", "--zds-socket"])
            .arg(zds_socket)
            .arg("--plugin-socket")
            .arg(plugin_socket)
            .arg("--cni-conf-dir")
            .arg(cni_conf)
            .arg("--cni-bin-dir")
            .arg(cni_bin)
            .arg("--cni-conf-host-dir")
            .arg(cni_conf)
            .args(["--plugin-binary", env!("CARGO_BIN_EXE_wt-cni")])
            .args(["--proc-root", "/proc"])
            .env("KUBECONFIG", &api.kubeconfig);
        Ok(Process::start("node agent", cmd, "zds=").await?.0)
    }

    /// Kills the agent and starts another, as a restart would.
    async fn restart_agent(&mut self) -> anyhow::Result<()> {
        self.agent.kill().await?;
        self.agent = Self::start_agent(
            &self.api,
            &self.zds_socket,
            &self.plugin_socket,
            &self.cni_bin,
            &self.cni_conf,
        )
        .await?;
        Ok(())
    }

    async fn wait_snapshots(&self, count: u64) -> anyhow::Result<()> {
        eventually(
            "ztunnel to take the agent's snapshot",
            Duration::from_secs(20),
            || async {
                let dump = self.ztunnel.config_dump().await.ok()?;
                (dump["node_agent"]["snapshots"] == count
                    && dump["node_agent"]["connected"] == true)
                    .then_some(())
            },
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_cni_captures_enrolled_pods_before_add_returns() -> anyhow::Result<()> {
    require_privileged();
    let mut node = Node::start().await?;
    let (api, ztunnel, plugin_socket, cni_bin, cni_conf, primary) = (
        &node.api,
        &node.ztunnel,
        node.plugin_socket.clone(),
        node.cni_bin.clone(),
        node.cni_conf.clone(),
        node.primary.clone(),
    );
    let weft_cni = cni_bin.join("weft-cni");
    let topology = &mut node.topology;
    let plugin_env = |socket: &Path| -> Value {
        json!({"cniVersion": "1.0.0", "name": "k8s", "type": "weft-cni", "agentSocket": socket})
    };

    // STATUS: the agent can serve ADDs.
    let (ok, out) = plugin(&weft_cni, Some("STATUS"), &[], &plugin_env(&plugin_socket))?;
    assert!(ok && out.is_null(), "STATUS: {out}");

    // An enrolled pod: bridge, host-local, then weft-cni. When ADD returns,
    // ztunnel already serves the pod at the address the bridge gave it.
    let app = topology.add_pod("demo/app", "n1")?;
    let app_ip = app.ip();
    let served = ztunnel_pods(ztunnel).await?;
    assert_eq!(served, [("app".to_owned(), json!([app_ip.to_string()]))]);
    // The result the runtime got is bridge's, passed through unchanged.
    let result = app.cni_result().expect("a CNI result").clone();
    assert_eq!(
        result["ips"][0]["address"].as_str().unwrap_or_default(),
        format!("{app_ip}/24")
    );
    assert!(result["interfaces"]
        .as_array()
        .is_some_and(|i| !i.is_empty()));
    assert_eq!(annotation(api, "demo", "app").await?, "enabled");

    // A pod outside the mesh: passed through, never handed to ztunnel.
    let visitor = topology.add_pod("legacy/visitor", "n1")?;
    let visitor_ip = visitor.ip();
    assert_eq!(ztunnel_pods(ztunnel).await?.len(), 1);
    assert_eq!(annotation(api, "legacy", "visitor").await?, "");

    // The enrolled pod's first connection goes through ztunnel (outbound,
    // passed through to a destination outside the mesh).
    let visitor = topology.pod("legacy/visitor");
    let listener = visitor.enter(|| std::net::TcpListener::bind((visitor_ip, 8080)))??;
    apps::spawn_echo(listener, "visitor")?;
    let report = probe(
        topology.pod("demo/app"),
        SocketAddr::from((visitor_ip, 8080)),
        "first",
    )
    .await?;
    assert!(report.reply.contains("visitor"), "{report:?}");
    support::logged(ztunnel, &["src.workload=app", &visitor_ip.to_string()]).await?;

    // The other verbs, by hand: CHECK passes for the captured pod.
    let app_netns = topology.pod("demo/app").netns().path();
    let container = topology.pod("demo/app").netns().name().to_owned();
    let cni_args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=app";
    let pod_env = [
        ("CNI_CONTAINERID", container.as_str()),
        ("CNI_NETNS", app_netns.to_str().unwrap_or_default()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", cni_args),
    ];
    let mut check_conf = plugin_env(&plugin_socket);
    check_conf["prevResult"] = result.clone();
    let (ok, out) = plugin(&weft_cni, Some("CHECK"), &pod_env, &check_conf)?;
    assert!(ok && out.is_null(), "CHECK: {out}");
    // VERSION lists both spec versions it speaks.
    let (ok, out) = plugin(
        &weft_cni,
        Some("VERSION"),
        &[],
        &json!({"cniVersion": "1.1.0"}),
    )?;
    assert!(ok, "VERSION: {out}");
    let versions: Vec<&str> = out["supportedVersions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        versions.contains(&"1.0.0") && versions.contains(&"1.1.0"),
        "{out}"
    );

    // Errors in the spec's form, with its codes.
    let mut no_prev = plugin_env(&plugin_socket);
    no_prev["cniVersion"] = "1.1.0".into();
    let mut old = plugin_env(&plugin_socket);
    old["cniVersion"] = "0.1.0".into();
    let errors: Vec<(&str, Option<&str>, Value, u64, &str)> = vec![
        (
            "no command",
            None,
            plugin_env(&plugin_socket),
            4,
            "CNI_COMMAND",
        ),
        (
            "unknown command",
            Some("ATTACH"),
            plugin_env(&plugin_socket),
            4,
            "ATTACH",
        ),
        (
            "not JSON",
            Some("ADD"),
            Value::String("{oops".into()),
            6,
            "not JSON",
        ),
        ("old version", Some("ADD"), old, 1, "not supported"),
        ("unchained", Some("ADD"), no_prev, 7, "chained"),
    ];
    for (what, command, stdin, code, text) in errors {
        let (ok, out) = plugin(&weft_cni, command, &pod_env, &stdin)?;
        assert!(!ok, "{what}: succeeded with {out}");
        assert_eq!(out["code"], code, "{what}: {out}");
        assert!(
            out["msg"].as_str().unwrap_or_default().contains(text),
            "{what}: {out}"
        );
    }

    // GC with the app's sandbox not among the valid ones releases it; a
    // CNI DEL (the pod's teardown, through the whole chain) is then a no-op
    // for Weft, and a second DEL by hand is fine too.
    let mut gc = plugin_env(&plugin_socket);
    gc["cniVersion"] = "1.1.0".into();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "some-other", "ifname": "eth0"}]);
    let (ok, out) = plugin(&weft_cni, Some("GC"), &[], &gc)?;
    assert!(ok, "GC: {out}");
    eventually("GC to release the app", Duration::from_secs(10), || async {
        ztunnel_pods(ztunnel).await.ok()?.is_empty().then_some(())
    })
    .await?;
    topology.remove_pod("demo/app")?;
    let mut del_conf = plugin_env(&plugin_socket);
    del_conf["prevResult"] = result.clone();
    let (ok, out) = plugin(&weft_cni, Some("DEL"), &pod_env, &del_conf)?;
    assert!(ok && out.is_null(), "DEL again: {out}");

    // Without the agent: STATUS says the plugin is not available (50), DEL
    // still succeeds, and an enrolled pod's ADD fails with "try again
    // later" (11) naming the socket, so the runtime retries and the pod's
    // application never starts uncaptured.
    node.agent.kill().await?;
    let (ok, out) = plugin(&weft_cni, Some("STATUS"), &[], &plugin_env(&plugin_socket))?;
    assert!(!ok, "STATUS without the agent: {out}");
    assert_eq!(out["code"], 50, "{out}");
    let (ok, out) = plugin(&weft_cni, Some("DEL"), &pod_env, &del_conf)?;
    assert!(ok, "DEL without the agent: {out}");
    let (ok, out) = plugin(&weft_cni, Some("ADD"), &pod_env, &del_conf)?;
    assert!(!ok, "ADD without the agent: {out}");
    assert_eq!(out["code"], 11, "{out}");
    let socket_name = plugin_socket.display().to_string();
    assert!(
        out["msg"]
            .as_str()
            .unwrap_or_default()
            .contains(&socket_name),
        "{out}"
    );
    // The same through the runtime's whole chain: the sandbox fails.
    let err = topology
        .add_pod("demo/late", "n1")
        .expect_err("ADD without the node agent");
    let text = err.to_string();
    assert!(
        text.contains("unreachable") && text.contains(&socket_name),
        "{text}"
    );
    assert!(ztunnel_pods(ztunnel).await?.is_empty());
    // A pod outside the mesh is not held up: the plugin reads it from the
    // API server with the credentials the agent left beside the config.
    let walk_in = topology.add_pod("legacy/walk-in", "n1")?;
    assert!(walk_in.cni_result().is_some());
    assert!(ztunnel_pods(ztunnel).await?.is_empty());

    // A stopped agent left the plugin chained (new pods wait for it);
    // uninstall takes it out and removes the binary and the credentials.
    let list: Value = serde_json::from_slice(&std::fs::read(&primary)?)?;
    assert_eq!(list["plugins"][1]["type"], "weft-cni");
    let credentials = list["plugins"][1]["kubeconfig"]
        .as_str()
        .map(PathBuf::from)
        .expect("the entry names the plugin's credentials");
    assert!(credentials.is_file());
    // The stopped agent's sockets are still there; uninstall removes them.
    let zds_socket = node.zds_socket.clone();
    assert!(zds_socket.exists() && plugin_socket.exists());
    let out = Command::new(env!("CARGO_BIN_EXE_wt-node-agent"))
        .arg("uninstall")
        .arg("--cni-conf-dir")
        .arg(&cni_conf)
        .arg("--cni-bin-dir")
        .arg(&cni_bin)
        .arg("--zds-socket")
        .arg(&zds_socket)
        .arg("--plugin-socket")
        .arg(&plugin_socket)
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&std::fs::read(&primary)?)?;
    assert_eq!(
        list["plugins"],
        json!([{"type": "bridge", "bridge": "weft0"}])
    );
    assert!(!weft_cni.exists() && !credentials.exists());
    assert!(
        !zds_socket.exists() && !plugin_socket.exists(),
        "sockets left"
    );
    // The runtime reads the conflist without it from now on.
    topology.unchain_cni("weft-cni");
    Ok(())
}

/// `kubectl label ARGS…`.
async fn label(api: &ApiServer, args: &[&str]) -> anyhow::Result<()> {
    let mut full = vec!["label"];
    full.extend_from_slice(args);
    api.kubectl_ok(&full, None).await.map(drop)
}

/// Waits until ztunnel serves exactly the pods `names`.
async fn serves(ztunnel: &ZtunnelProcess, names: &[&str]) -> anyhow::Result<()> {
    eventually(
        &format!("ztunnel to serve exactly {names:?}"),
        Duration::from_secs(20),
        || async {
            let mut have: Vec<String> = ztunnel_pods(ztunnel)
                .await
                .ok()?
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            have.sort();
            (have == names).then_some(())
        },
    )
    .await
}

async fn uid(api: &ApiServer, namespace: &str, name: &str) -> anyhow::Result<String> {
    Ok(api
        .kubectl_ok(
            &[
                "get",
                "pod",
                "-n",
                namespace,
                name,
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            None,
        )
        .await?
        .trim()
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_pods_follow_their_labels_and_survive_an_agent_restart() -> anyhow::Result<()> {
    require_privileged();
    let mut node = Node::start().await?;
    // Two pods outside the mesh, started and running: their containers'
    // cgroups as each kubelet driver names them.
    let mut containers = Vec::new();
    for (name, driver) in [
        ("visitor", CgroupDriver::Cgroupfs),
        ("walk-in", CgroupDriver::Systemd),
    ] {
        let pod = node.topology.add_pod(&format!("legacy/{name}"), "n1")?;
        let ip = pod.ip().to_string();
        let uid = uid(&node.api, "legacy", name).await?;
        containers.push(start_container(
            node.topology.pod(&format!("legacy/{name}")),
            &uid,
            driver,
        )?);
        node.api.set_pod_running("legacy", name, &ip).await?;
    }
    assert!(ztunnel_pods(&node.ztunnel).await?.is_empty());
    // The pod's own label enrolls it, running, with no restart; its
    // namespace is found through /proc (cgroupfs layout).
    label(
        &node.api,
        &[
            "pod",
            "-n",
            "legacy",
            "visitor",
            "istio.io/dataplane-mode=ambient",
        ],
    )
    .await?;
    serves(&node.ztunnel, &["visitor"]).await?;
    let visitor_ip = node.topology.pod("legacy/visitor").ip().to_string();
    assert_eq!(ztunnel_pods(&node.ztunnel).await?[0].1, json!([visitor_ip]));
    assert_eq!(annotation(&node.api, "legacy", "visitor").await?, "enabled");
    // The namespace's label enrolls the other (systemd layout).
    label(
        &node.api,
        &["namespace", "legacy", "istio.io/dataplane-mode=ambient"],
    )
    .await?;
    serves(&node.ztunnel, &["visitor", "walk-in"]).await?;

    // The agent restarts: it finds both again before ztunnel reconnects, so
    // the new snapshot keeps them and ztunnel releases nothing.
    node.restart_agent().await?;
    node.wait_snapshots(2).await?;
    serves(&node.ztunnel, &["visitor", "walk-in"]).await?;
    assert!(
        node.ztunnel
            .process
            .lines_with(&["pod released"])
            .is_empty(),
        "ztunnel released a pod across the agent's restart"
    );

    // The pod opts out: released, and its annotation goes.
    label(
        &node.api,
        &[
            "pod",
            "-n",
            "legacy",
            "visitor",
            "istio.io/dataplane-mode=none",
            "--overwrite",
        ],
    )
    .await?;
    serves(&node.ztunnel, &["walk-in"]).await?;
    eventually(
        "the annotation removed",
        Duration::from_secs(10),
        || async {
            annotation(&node.api, "legacy", "visitor")
                .await
                .ok()?
                .is_empty()
                .then_some(())
        },
    )
    .await?;
    // The namespace leaves the mesh: the other goes too.
    label(
        &node.api,
        &["namespace", "legacy", "istio.io/dataplane-mode-"],
    )
    .await?;
    serves(&node.ztunnel, &[]).await?;
    // Enrolled again, then deleted from the API server with no CNI DEL (as
    // when a node's runtime lost it): the agent asks the API server and,
    // the pod being gone, releases it.
    label(
        &node.api,
        &["namespace", "legacy", "istio.io/dataplane-mode=ambient"],
    )
    .await?;
    serves(&node.ztunnel, &["walk-in"]).await?;
    node.api
        .kubectl_ok(
            &[
                "delete",
                "pod",
                "-n",
                "legacy",
                "walk-in",
                "--grace-period=0",
                "--force",
            ],
            None,
        )
        .await?;
    serves(&node.ztunnel, &[]).await?;
    drop(containers);
    Ok(())
}
