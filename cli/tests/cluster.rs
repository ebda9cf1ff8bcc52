//! `weft install`, `enroll`, `unenroll` and `uninstall` against a real API
//! server, seen through kubectl as a user would. The test plays the
//! kubelet where one is needed (pods' readiness).

use std::{process::Stdio, time::Duration};

use anyhow::Context;
use serde_json::Value;
use tokio::process::Command;
use weft_tests::{kube::ApiServer, processes::eventually};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// `weft args` against the test cluster: (success, stdout, stderr).
/// (No local mesh is ever in the way: the verbs that prefer one act on the
/// cluster.)
async fn weft(api: &ApiServer, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(WEFT)
        .args(args)
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .env("WEFT_LOCAL_DIR", "/nonexistent/weft-local")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// YAML documents as JSON, sorted by kind, namespace and name.
fn objects(yaml: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    let key = |v: &Value| {
        (
            v["kind"].as_str().unwrap_or_default().to_owned(),
            v["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            v["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    out.sort_by_key(key);
    Ok(out)
}

/// Marks the control service's pods running and ready, as their kubelet
/// would.
async fn make_control_ready(api: &ApiServer) -> anyhow::Result<usize> {
    let pods: Value = serde_json::from_str(
        &api.kubectl_ok(
            &[
                "get",
                "pods",
                "-n",
                "weft-system",
                "-l",
                "app=weft-control",
                "-o",
                "json",
            ],
            None,
        )
        .await?,
    )?;
    let names: Vec<String> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let status = serde_json::json!({"status": {
        "phase": "Running",
        "conditions": [
            {"type": "Ready", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
        ],
        "containerStatuses": [{
            "name": "control", "ready": true, "restartCount": 0, "image": "weft/control",
            "imageID": "", "state": {"running": {}},
        }],
    }});
    for name in &names {
        api.patch_status("pod", Some("weft-system"), name, &status)
            .await?;
    }
    Ok(names.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_enroll_and_uninstall_on_a_cluster() -> anyhow::Result<()> {
    let api = ApiServer::start().await?;
    // The test server is 1.20: no DaemonSet surge.
    let set = ["--set", "ztunnel.surge=false"];

    // --dry-run prints exactly what kustomize renders for the same overlay.
    let (ok, printed, err) = weft(&api, &[&["install", "--dry-run"][..], &set].concat()).await?;
    assert!(ok, "{err}");
    let deploy = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/overlays/kubernetes-1.20"
    );
    let kustomized = api.kubectl_ok(&["kustomize", deploy], None).await?;
    assert_eq!(objects(&printed)?, objects(&kustomized)?);
    let (ok, plain, _) = weft(&api, &["install", "--dry-run"]).await?;
    assert!(ok);
    let base = api
        .kubectl_ok(
            &[
                "kustomize",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"),
            ],
            None,
        )
        .await?;
    assert_eq!(
        objects(&plain)?,
        objects(&base)?,
        "without --set: deploy/ itself"
    );

    // Install; without a kubelet nothing gets ready, so a short wait fails
    // and says what it waited for.
    let (ok, out, err) = weft(&api, &[&["install", "--timeout", "3s"][..], &set].concat()).await?;
    assert!(!ok, "no pod can be ready yet: {out}");
    assert!(
        out.contains("deployment.apps/weft-control created")
            || out.contains("Deployment/weft-control created"),
        "{out}"
    );
    assert!(
        err.contains("not ready after") && err.contains("control service 0/2 ready"),
        "{err}"
    );

    // A second install changes nothing; with the pods ready it finishes.
    let waiting = tokio::spawn({
        let kubeconfig = api.kubeconfig.clone();
        async move {
            Command::new(WEFT)
                .args([
                    "install",
                    "--timeout",
                    "150s",
                    "--set",
                    "ztunnel.surge=false",
                    "--kubeconfig",
                ])
                .arg(kubeconfig)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
        }
    });
    let ready = eventually(
        "the control service's pods",
        Duration::from_secs(120),
        || async {
            let n = make_control_ready(&api).await.ok()?;
            (n == 2).then_some(n)
        },
    )
    .await?;
    assert_eq!(ready, 2);
    let out = tokio::time::timeout(Duration::from_secs(180), waiting)
        .await
        .context("weft install kept waiting")???;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let changed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.ends_with(" created") || l.ends_with(" configured"))
        .collect();
    assert!(changed.is_empty(), "a second install changed {changed:?}");
    assert!(
        stdout.contains("Deployment/weft-control unchanged"),
        "{stdout}"
    );
    assert!(
        stdout.contains("waiting: control service"),
        "progress shown: {stdout}"
    );
    assert!(stdout.contains("Weft is ready"), "{stdout}");

    // Enrollment, as kubectl shows it.
    api.kubectl_ok(&["create", "namespace", "shop"], None)
        .await?;
    let label = || async {
        api.kubectl_ok(
            &[
                "get",
                "namespace",
                "shop",
                "-o",
                "jsonpath={.metadata.labels.istio\\.io/dataplane-mode}",
            ],
            None,
        )
        .await
    };
    let (ok, out, err) = weft(&api, &["enroll", "shop"]).await?;
    assert!(ok, "{err}");
    assert!(out.contains("namespace shop enrolled"), "{out}");
    assert_eq!(label().await?, "ambient");
    let (ok, _, err) = weft(&api, &["unenroll", "shop"]).await?;
    assert!(ok, "{err}");
    assert_eq!(label().await?, "");
    let (ok, _, err) = weft(&api, &["enroll", "nosuch"]).await?;
    assert!(!ok);
    assert!(err.contains("no such namespace: nosuch"), "{err}");

    // Uninstall first takes ztunnel's pinned eBPF capture off every node:
    // node n1 joins, with real pins in (a test's corner of) its bpffs.
    let bpffs = BpffsDir::create()?;
    let pin = bpffs.path.join("weft").join("map-WEFT_TEST");
    std::fs::create_dir_all(pin.parent().unwrap())?;
    let created = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(&pin)
        .args([
            "type",
            "array",
            "key",
            "4",
            "value",
            "4",
            "entries",
            "1",
            "name",
            "weft_test",
        ])
        .output()?;
    assert!(created.status.success(), "bpftool: {created:?}");
    // ... and weft-cni chained in its CNI configuration, as the node agent
    // left it.
    let node_dirs = tempfile::tempdir()?;
    let (cni_bin, cni_conf) = (node_dirs.path().join("bin"), node_dirs.path().join("net.d"));
    std::fs::create_dir_all(&cni_bin)?;
    std::fs::create_dir_all(&cni_conf)?;
    std::fs::write(cni_bin.join("weft-cni"), b"plugin")?;
    std::fs::write(cni_conf.join("weft-cni.kubeconfig"), b"credentials")?;
    // The sockets the node agent listened on, left behind when it stopped.
    let (zds_dir, weft_dir) = (
        node_dirs.path().join("ztunnel"),
        node_dirs.path().join("weft"),
    );
    std::fs::create_dir_all(&zds_dir)?;
    std::fs::create_dir_all(&weft_dir)?;
    let sockets = [zds_dir.join("ztunnel.sock"), weft_dir.join("cni.sock")];
    for socket in &sockets {
        drop(std::os::unix::net::UnixListener::bind(socket)?);
    }
    let conflist = cni_conf.join("10-k8s.conflist");
    std::fs::write(
        &conflist,
        r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},{"type":"weft-cni"}]}"#,
    )?;
    let kubelet = weft_tests::kubelet::Kubelet::start(&api, "n1").await?;
    let uninstall = tokio::spawn({
        let kubeconfig = api.kubeconfig.clone();
        async move {
            Command::new(WEFT)
                .args(["uninstall", "--timeout", "60s", "--kubeconfig"])
                .arg(kubeconfig)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output()
                .await
        }
    });
    // n1's kubelet runs the cleanup pod the DaemonSet makes for it.
    let cleanup_pod = eventually("the cleanup pod", Duration::from_secs(30), || async {
        let name = api
            .kubectl_ok(
                &[
                    "get",
                    "pods",
                    "-n",
                    "weft-system",
                    "-l",
                    "app=weft-node-cleanup",
                    "-o",
                    "jsonpath={.items[0].metadata.name}",
                ],
                None,
            )
            .await
            .ok()?;
        (!name.is_empty()).then_some(name)
    })
    .await?;
    assert!(pin.exists(), "pins removed before ztunnel stopped");
    kubelet
        .run_init_containers(
            &api,
            "weft-system",
            &cleanup_pod,
            &[
                ("weft/ztunnel", &[WEFT, "ztunnel"]),
                ("weft/node-agent", &[WEFT, "node-agent"]),
            ],
            &[
                ("/sys/fs/bpf", &bpffs.path),
                ("/opt/cni/bin", &cni_bin),
                ("/etc/cni/net.d", &cni_conf),
                ("/var/run/ztunnel", &zds_dir),
                ("/var/run/weft", &weft_dir),
            ],
        )
        .await?;
    let out = uninstall.await??;
    let (ok, out, err) = (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(ok, "{out}{err}");
    assert!(!bpffs.path.join("weft").exists(), "n1's pins left");
    let list: serde_json::Value = serde_json::from_slice(&std::fs::read(&conflist)?)?;
    assert_eq!(
        list["plugins"],
        serde_json::json!([{"type": "bridge"}]),
        "n1's CNI configuration"
    );
    assert!(
        !cni_bin.join("weft-cni").exists() && !cni_conf.join("weft-cni.kubeconfig").exists(),
        "n1's plugin left"
    );
    for socket in &sockets {
        assert!(!socket.exists(), "{} left", socket.display());
    }
    for line in [
        "DaemonSet/ztunnel deleted",
        "DaemonSet/weft-node-agent deleted",
        "waiting: ztunnel's capture removed on 1/1 nodes",
        "DaemonSet/weft-node-cleanup deleted",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    // ... as n1's kubelet confirms the cleanup pod's end.
    api.kubectl_ok(
        &[
            "delete",
            "pods",
            "-n",
            "weft-system",
            "-l",
            "app=weft-node-cleanup",
            "--grace-period=0",
            "--force",
        ],
        None,
    )
    .await?;
    // The rest; the CRDs (and users' policies) are kept unless --purge.
    assert!(out.contains("Deployment/weft-control deleted"), "{out}");
    assert!(
        out.contains("authorizationpolicies.security.istio.io kept"),
        "{out}"
    );
    api.kubectl_ok(
        &["get", "crd", "authorizationpolicies.security.istio.io"],
        None,
    )
    .await?;
    let (ok, out, err) = weft(&api, &["uninstall", "--purge"]).await?;
    assert!(ok, "{err}");
    assert!(
        out.contains("CustomResourceDefinition/authorizationpolicies.security.istio.io deleted"),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waypoint_verbs_on_a_cluster() -> anyhow::Result<()> {
    use weft_control::{config::ControlConfig, server::Control, source::KubeConnection};
    let api = ApiServer::start_with_crds().await?;
    api.kubectl_ok(&["create", "namespace", "shop"], None)
        .await?;
    let dir = tempfile::tempdir()?;
    let mut config = ControlConfig::kubernetes(
        KubeConnection {
            kubeconfig: Some(api.kubeconfig.clone()),
            context: None,
        },
        dir.path().join("control"),
    );
    config.listen = "127.0.0.1:0".parse()?;
    config.lease.namespace = "default".into();
    let control = Control::start(config).await?;
    let waypoint = |args: &[&str]| {
        let args: Vec<String> = std::iter::once("waypoint")
            .chain(args.iter().copied())
            .map(str::to_owned)
            .collect();
        let api = &api;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            weft(api, &args).await
        }
    };

    let (ok, out, err) = waypoint(&[
        "apply",
        "-n",
        "shop",
        "--enroll-namespace",
        "--wait",
        "--timeout",
        "60s",
    ])
    .await?;
    assert!(ok, "{out}{err}");
    assert!(out.contains("waypoint shop/waypoint applied"), "{out}");
    assert!(out.contains("waypoint shop/waypoint programmed"), "{out}");

    // As kubectl shows it.
    let programmed = api
        .kubectl_ok(
            &[
                "get",
                "gateway",
                "-n",
                "shop",
                "waypoint",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Programmed\")].status}",
            ],
            None,
        )
        .await?;
    assert_eq!(programmed, "True");
    let label = api
        .kubectl_ok(
            &[
                "get",
                "namespace",
                "shop",
                "-o",
                "jsonpath={.metadata.labels.istio\\.io/use-waypoint}",
            ],
            None,
        )
        .await?;
    assert_eq!(label, "waypoint");
    api.kubectl_ok(
        &[
            "get",
            "-n",
            "shop",
            "deployment/waypoint",
            "service/waypoint",
        ],
        None,
    )
    .await?;

    let (ok, out, _) = waypoint(&["list", "-n", "shop"]).await?;
    assert!(ok);
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(row, ["waypoint", "default", "service", "True"], "{out}");
    let (ok, out, _) = waypoint(&["status", "-n", "shop"]).await?;
    assert!(ok);
    assert!(
        out.contains("waypoint  True    Programmed  Programmed  Resource programmed"),
        "{out}"
    );

    // Another waypoint cannot take the namespace without --overwrite, and
    // nothing is written when it is refused.
    let (ok, _, err) = waypoint(&[
        "apply",
        "-n",
        "shop",
        "--name",
        "other",
        "--enroll-namespace",
    ])
    .await?;
    assert!(!ok);
    assert!(
        err.contains("already uses waypoint waypoint; add --overwrite"),
        "{err}"
    );
    let (_, out, _) = waypoint(&["list", "-n", "shop"]).await?;
    assert!(!out.contains("other"), "{out}");

    // Deleted: the Gateway, and with it (garbage collection) its objects.
    let (ok, _, err) = waypoint(&["delete", "-n", "shop", "ghost"]).await?;
    assert!(!ok);
    assert!(err.contains("no waypoint shop/ghost"), "{err}");
    let (ok, out, err) = waypoint(&["delete", "-n", "shop", "waypoint"]).await?;
    assert!(ok, "{err}");
    assert!(out.contains("waypoint shop/waypoint deleted"), "{out}");
    eventually("the Deployment gone", Duration::from_secs(30), || async {
        api.kubectl(&["get", "-n", "shop", "deployment/waypoint"])
            .output()
            .await
            .ok()
            .filter(|o| !o.status.success())
            .map(|_| ())
    })
    .await
    .map_err(|err| {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            .args(["get", "-n", "shop", "gateway,deployment", "-o", "yaml"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        anyhow::anyhow!("{err}; left: {out}")
    })?;
    let (_, out, _) = waypoint(&["list", "-n", "shop"]).await?;
    assert_eq!(out.trim(), "No waypoints found.");
    drop(control);
    Ok(())
}

/// A directory of the test's own in the machine's bpffs, removed with
/// whatever is pinned in it.
struct BpffsDir {
    path: std::path::PathBuf,
}

impl BpffsDir {
    fn create() -> anyhow::Result<Self> {
        let path = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/weft-test-cluster-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating {} (bpffs, as root)", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// An executable that runs `weft SUBCOMMAND args…`, for the harness's
/// process starters, which take a binary.
fn weft_as(dir: &std::path::Path, subcommand: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(subcommand);
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexec {WEFT} {subcommand} \"$@\"\n"),
    )?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_ztunnel_config_read_a_clusters_ztunnels_through_port_forwards(
) -> anyhow::Result<()> {
    use weft_tests::{
        kubelet::Kubelet,
        processes::{ControlProcess, ZtunnelProcess},
    };
    let api = ApiServer::start_with_crds().await?;
    // Weft's ztunnel on node n1, as `weft install` runs it; one enrolled
    // workload beside it.
    api.kubectl_ok(
        &["apply", "--server-side", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: weft-system}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: ztunnel, namespace: weft-system}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: ztunnel-n1, namespace: weft-system, labels: {app: ztunnel}}\n\
             spec: {nodeName: n1, serviceAccountName: ztunnel, automountServiceAccountToken: false, \
             containers: [{name: ztunnel, image: ztunnel}]}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: default, namespace: shop}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: shop}\n\
             spec: {nodeName: n1, automountServiceAccountToken: false, containers: [{name: web, image: web}]}\n",
        ),
    )
    .await?;
    api.set_pod_running("weft-system", "ztunnel-n1", "198.18.255.1")
        .await?;
    api.set_pod_running("shop", "web", "198.18.255.2").await?;
    let token = api
        .token("weft-system", "ztunnel", "istio-ca", Some("ztunnel-n1"))
        .await?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    std::fs::create_dir_all(state.join("nodes"))?;
    std::fs::write(state.join("nodes").join("n1.token"), token.trim())?;
    let control = ControlProcess::start_kubernetes_with_lease_in(
        &weft_as(dir.path(), "control")?,
        &api.kubeconfig,
        &state,
        "127.0.0.1:0".parse()?,
        "weft-system",
    )
    .await?;
    // The node agent ztunnel connects to; it has no pods to hand over.
    let _agent = weft_zds::agent::Agent::bind(&dir.path().join("n1.sock"))?;
    let ztunnel = ZtunnelProcess::start(
        &weft_as(dir.path(), "ztunnel")?,
        "n1",
        None,
        &dir.path().join("n1.sock"),
        &control,
    )
    .await?;
    // n1's kubelet: port 15000 of the ztunnel pod is its admin port.
    let kubelet = Kubelet::start(&api, "n1").await?;
    kubelet.forward("weft-system", "ztunnel-n1", 15000, ztunnel.admin);

    // What ztunnel holds, through the API server's port-forward: the
    // enrolled pod, HBONE.
    let workloads = eventually("web in n1's ztunnel", Duration::from_secs(30), || async {
        let (ok, out, _) = weft(&api, &["ztunnel-config", "workloads"]).await.ok()?;
        (ok && out.contains("web")).then_some(out)
    })
    .await?;
    let web = workloads
        .lines()
        .find(|l| l.contains("web"))
        .unwrap_or_default();
    assert!(
        web.contains("shop") && web.contains("198.18.255.2") && web.contains("HBONE"),
        "{workloads}"
    );
    let (ok, out, err) = weft(
        &api,
        &["ztunnel-config", "workloads", "-o", "json", "--node", "n1"],
    )
    .await?;
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out)?;
    let web = listed
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["name"] == "web")
        .cloned()
        .unwrap_or_default();
    assert_eq!(web["node"], "n1", "{out}");
    assert_eq!(
        web["identity"], "spiffe://cluster.local/ns/shop/sa/default",
        "{web}"
    );
    let (ok, _, err) = weft(&api, &["ztunnel-config", "workloads", "--node", "n2"]).await?;
    assert!(!ok);
    assert!(err.contains("no running ztunnel on node n2"), "{err}");

    // `weft status`: the leader, n1's ztunnel connected, the namespace.
    let (ok, out, err) = weft(&api, &["status"]).await?;
    assert!(ok, "{err}");
    assert!(out.contains("leader: "), "{out}");
    assert!(!out.contains("leader: none"), "{out}");
    let n1 = out
        .lines()
        .find(|l| l.starts_with("n1 "))
        .unwrap_or_default();
    assert!(
        n1.contains("connected") && !n1.contains("disconnected"),
        "{out}"
    );
    assert!(out.contains("namespaces in the mesh: shop"), "{out}");

    // ztunnel gone: status says so for its node and still answers.
    drop(ztunnel);
    let (ok, out, err) = weft(&api, &["status"]).await?;
    assert!(ok, "{err}");
    let n1 = out
        .lines()
        .find(|l| l.starts_with("n1 "))
        .unwrap_or_default();
    assert!(n1.contains("unreachable"), "{out}");
    drop(control);
    Ok(())
}

/// The cleanup DaemonSet's main container: it checks once more, then holds
/// the pod until the kubelet stops it (as PID 1 it must catch SIGTERM).
#[tokio::test]
async fn the_cleanup_container_holds_until_terminated() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut child = Command::new(WEFT)
        .args(["ztunnel", "uninstall", "--hold"])
        .env("WEFT_BPF_PIN_DIR", dir.path().join("weft"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(child.try_wait()?.is_none(), "it held");
    let pid = child.id().context("running")?.to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await?;
    assert!(killed.success());
    let out = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output()).await??;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("nothing to remove"),
        "{out:?}"
    );
    Ok(())
}
