//! `deploy/` against a real API server: `kubectl apply --server-side -k`
//! is accepted (every object validated by the server, Weft's CRDs
//! included), a second apply changes nothing, and the dev overlay swaps
//! in local images.
//!
//! The test server is Kubernetes 1.20, whose DaemonSets cannot surge: it
//! gets the base through `overlays/kubernetes-1.20`, which differs from it
//! in the ztunnel DaemonSet's `rollingUpdate` only (checked here).

use std::path::PathBuf;

use weft_tests::{kube::ApiServer, processes::eventually};

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

async fn get(api: &ApiServer, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["-o", "json"]);
    Ok(serde_json::from_str(&api.kubectl_ok(&all, None).await?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_applies_cleanly_and_idempotently() -> anyhow::Result<()> {
    let api = ApiServer::start().await?;
    let dir = deploy_dir();
    let root = dir.to_str().unwrap();
    let old = format!("{root}/overlays/kubernetes-1.20");
    let base = old.as_str();
    // The overlay changes the surge and nothing else.
    let render = |dir: String| {
        let api = &api;
        async move {
            let yaml = api.kubectl_ok(&["kustomize", &dir], None).await?;
            anyhow::Ok(yaml)
        }
    };
    let (full, patched) = (render(root.to_owned()).await?, render(old.clone()).await?);
    let (before, daemonset) = full
        .split_once("kind: DaemonSet")
        .expect("the base has the ztunnel DaemonSet");
    let without_surge = format!(
        "{before}kind: DaemonSet{}",
        daemonset.replacen(
            "    rollingUpdate:\n      maxSurge: 1\n      maxUnavailable: 0\n",
            "    rollingUpdate:\n      maxUnavailable: 1\n",
            1
        )
    );
    assert!(without_surge != full, "the base surges ztunnel");
    assert!(
        patched == without_surge,
        "overlays/kubernetes-1.20 changes more than the DaemonSet's surge"
    );
    let out = api
        .kubectl_ok(&["apply", "--server-side", "-k", base], None)
        .await?;
    for object in [
        "namespace/weft-system",
        "customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.security.istio.io",
        "clusterrole.rbac.authorization.k8s.io/weft-control",
        "deployment.apps/weft-control",
        "service/weft-control",
        "daemonset.apps/ztunnel",
    ] {
        assert!(
            out.contains(&format!("{object} serverside-applied")),
            "{object}: {out}"
        );
    }
    api.kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd",
            "--all",
        ],
        None,
    )
    .await?;

    // A second apply is a no-op: the server computes no difference.
    let diff = api
        .kubectl(&["diff", "--server-side", "-k", base])
        .output()
        .await?;
    assert_eq!(
        diff.status.code(),
        Some(0),
        "differences after applying: {}{}",
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );

    let control = get(&api, &["deployment", "-n", "weft-system", "weft-control"]).await?;
    assert_eq!(control["spec"]["replicas"], 2);
    let ztunnel = get(&api, &["daemonset", "-n", "weft-system", "ztunnel"]).await?;
    let spec = &ztunnel["spec"]["template"]["spec"];
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert!(spec["hostNetwork"].is_null(), "no host network");
    let security = &spec["containers"][0]["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        ztunnel["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    // Istio's short names work on Weft's CRDs, and objects are stored.
    api.kubectl_ok(
        &["apply", "--server-side", "-f", "-"],
        Some(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {name: deny-all, namespace: default}\nspec: {}\n",
        ),
    )
    .await?;
    let listed = api
        .kubectl_ok(&["get", "ap", "-A", "-o", "name"], None)
        .await?;
    assert_eq!(
        listed.trim(),
        "authorizationpolicy.security.istio.io/deny-all"
    );
    // The security kinds' schemas are typed: the API server itself
    // (kubectl's own checks off) refuses a wrong type and a missing required
    // field, and kubectl explains each field from the descriptions Weft's
    // types carry.
    for (spec, expected) in [
        (
            "{rules: [{to: [{operation: {ports: 8080}}]}]}",
            "spec.rules.to.operation.ports",
        ),
        ("{rules: [{when: [{values: [a]}]}]}", "spec.rules.when.key"),
        ("{targetRefs: [{kind: Service}]}", "spec.targetRefs.name"),
    ] {
        let out = api
            .kubectl_output(
                &["apply", "--server-side", "--validate=false", "-f", "-"],
                Some(&format!(
                    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                     metadata: {{name: bad, namespace: default}}\nspec: {spec}\n"
                )),
            )
            .await?;
        // Servers differ on indices in a field's path ("rules[0]").
        let stderr = String::from_utf8_lossy(&out.stderr).replace("[0]", "");
        assert!(!out.status.success(), "{spec} was accepted");
        assert!(stderr.contains(expected), "{spec}: {stderr}");
    }
    // (The server publishes a CRD's schema a moment after accepting it.)
    let explained = eventually(
        "the schema published",
        std::time::Duration::from_secs(30),
        || async {
            api.kubectl_ok(&["explain", "authorizationpolicies.spec.action"], None)
                .await
                .ok()
        },
    )
    .await?;
    assert!(
        explained.contains("ALLOW (the default), DENY, AUDIT or CUSTOM"),
        "{explained}"
    );

    // The dev overlay: local image names, the same objects otherwise.
    let dev = render(format!("{root}/overlays/dev")).await?;
    assert!(
        dev.contains("image: localhost:5000/weft/control:dev"),
        "{dev}"
    );
    assert!(
        dev.contains("image: localhost:5000/weft/ztunnel:dev"),
        "{dev}"
    );
    assert!(
        dev.contains("- --waypoint-image=localhost:5000/weft/waypoint:dev"),
        "{dev}"
    );
    assert_eq!(
        dev.lines().filter(|l| l.starts_with("kind: ")).count(),
        full.lines().filter(|l| l.starts_with("kind: ")).count()
    );
    Ok(())
}
