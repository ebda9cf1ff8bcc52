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
async fn weft(api: &ApiServer, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(WEFT)
        .args(args)
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
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
    let status = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"},{"type":"ContainersReady","status":"True"}],"containerStatuses":[{"name":"control","ready":true,"restartCount":0,"image":"weft/control","imageID":"","state":{"running":{}}}]}}"#;
    for name in &names {
        api.kubectl_ok(
            &[
                "patch",
                "pod",
                "-n",
                "weft-system",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                status,
            ],
            None,
        )
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

    // Uninstall keeps the CRDs (and users' policies) unless --purge.
    let (ok, out, err) = weft(&api, &["uninstall"]).await?;
    assert!(ok, "{err}");
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
    // No local mesh here: the verbs act on the cluster.
    let no_local = dir.path().join("no-local-mesh");
    let waypoint = |args: &[&str]| {
        let mut cmd = Command::new(WEFT);
        cmd.arg("waypoint")
            .args(args)
            .arg("--kubeconfig")
            .arg(&api.kubeconfig)
            .env("WEFT_LOCAL_DIR", &no_local)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        async move {
            let out = cmd.output().await?;
            anyhow::Ok((
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ))
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
