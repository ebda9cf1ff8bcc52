//! The CA on Kubernetes: ztunnel proves its node with a projected
//! service-account token that the API server reviews. A token bound to the
//! ztunnel pod on n1 gets n1's identities and is refused n2's; a waypoint's
//! pod gets its own identity only; an expired
//! token, a token for another audience, a token of another service account
//! and a token bound to no pod are refused, each saying why.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weft_control::{config::ControlConfig, server::Control, source::KubeConnection};
use weft_proxy::{
    control::ControlPlane,
    identity::{ca_client::CaClient, Identity},
};
use weft_tests::{
    kube::{ApiServer, ISSUER},
    processes::eventually,
};

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#;

/// Pods: namespace, name, node, service account, IP.
const PODS: [(&str, &str, &str, &str, &str); 6] = [
    (
        "istio-system",
        "ztunnel-n1",
        "n1",
        "ztunnel",
        "198.18.255.1",
    ),
    (
        "istio-system",
        "ztunnel-n2",
        "n2",
        "ztunnel",
        "198.18.255.2",
    ),
    ("demo", "app-a", "n1", "app-a", "198.18.1.2"),
    ("demo", "app-b", "n2", "app-b", "198.18.2.2"),
    ("demo", "intruder", "n1", "intruder", "198.18.1.3"),
    ("demo", "waypoint-0", "n2", "waypoint", "198.18.2.9"),
];

async fn cluster() -> anyhow::Result<ApiServer> {
    let api = ApiServer::start_with_crds().await?;
    api.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(CLUSTER))
        .await?;
    for (namespace, name, node, account, ip) in PODS {
        // The waypoint's pod says whose it is, as its Deployment's would.
        let gateway = if account == "waypoint" {
            "waypoint"
        } else {
            "none"
        };
        // Each account once.
        let _ = api
            .kubectl_ok(
                &["create", "serviceaccount", "-n", namespace, account],
                None,
            )
            .await;
        api.kubectl_ok(
            &["apply", "--server-side", "-f", "-"],
            Some(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, \
                 labels: {{gateway.networking.k8s.io/gateway-name: {gateway}}}}}\n\
                 spec: {{nodeName: {node}, serviceAccountName: {account}, \
                 automountServiceAccountToken: false, containers: [{{name: app, image: app}}]}}\n"
            )),
        )
        .await?;
        api.set_pod_running(namespace, name, ip).await?;
    }
    Ok(api)
}

async fn uid(api: &ApiServer, what: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["get"];
    args.extend(what);
    args.extend(["-o", "jsonpath={.metadata.uid}"]);
    Ok(api.kubectl_ok(&args, None).await?.trim().to_owned())
}

fn id(namespace: &str, account: &str) -> Identity {
    Identity::new("cluster.local", namespace, account)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ztunnel_tokens_are_reviewed_and_scoped_to_their_pods_node() -> anyhow::Result<()> {
    let api = cluster().await?;
    let dir = tempfile::tempdir()?;
    let mut config = ControlConfig::kubernetes(
        KubeConnection {
            kubeconfig: Some(api.kubeconfig.clone()),
            context: None,
        },
        dir.path(),
    );
    config.listen = "127.0.0.1:0".parse()?;
    config.lease.namespace = "default".into();
    let control = Control::start(config).await?;
    let plane = |token: &str| ControlPlane {
        address: control.addr().to_string(),
        server_name: "weft-control".into(),
        root_pem: control.root_pem().to_owned(),
        token: token.into(),
    };
    let sign = |token: String, identity: Identity| {
        let ca = CaClient::new(plane(&token));
        async move { ca.sign(&identity).await.map_err(|err| err.to_string()) }
    };

    // ztunnel on n1: n1's workloads, not n2's.
    let n1 = api
        .token("istio-system", "ztunnel", "istio-ca", Some("ztunnel-n1"))
        .await?;
    let cert = sign(n1.clone(), id("demo", "app-a")).await;
    assert_eq!(cert.map(|c| c.identity), Ok(id("demo", "app-a")));
    let err = sign(n1.clone(), id("demo", "app-b")).await.unwrap_err();
    assert!(
        err.contains("refusing to sign spiffe://cluster.local/ns/demo/sa/app-b for node n1"),
        "{err}"
    );
    // ztunnel on n2: the other way round.
    let n2 = api
        .token("istio-system", "ztunnel", "istio-ca", Some("ztunnel-n2"))
        .await?;
    assert!(sign(n2.clone(), id("demo", "app-b")).await.is_ok());
    assert!(sign(n2.clone(), id("demo", "app-a")).await.is_err());
    // A pod just bound to n1, its sandbox being set up: no address yet, so
    // not a workload, but ztunnel asks for its certificate at CNI ADD.
    api.kubectl_ok(&["create", "serviceaccount", "-n", "demo", "fresh"], None)
        .await?;
    api.kubectl_ok(
        &["apply", "--server-side", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: fresh, namespace: demo}\n\
             spec: {nodeName: n1, serviceAccountName: fresh, automountServiceAccountToken: false, \
             containers: [{name: app, image: app}]}\n",
        ),
    )
    .await?;
    let cert = eventually(
        "n1 to get the fresh pod's certificate",
        Duration::from_secs(10),
        || {
            let sign = sign(n1.clone(), id("demo", "fresh"));
            async move { sign.await.ok() }
        },
    )
    .await?;
    assert_eq!(cert.identity, id("demo", "fresh"));
    let err = sign(n2, id("demo", "fresh")).await.unwrap_err();
    assert!(err.contains("for node n2"), "{err}");

    // Refusals, each with its reason.
    let other_audience = api
        .token("istio-system", "ztunnel", "other", Some("ztunnel-n1"))
        .await?;
    let err = sign(other_audience, id("demo", "app-a")).await.unwrap_err();
    assert!(
        err.contains("Unauthenticated") && err.contains("audience"),
        "{err}"
    );
    let intruder = api
        .token("demo", "intruder", "istio-ca", Some("intruder"))
        .await?;
    let err = sign(intruder, id("demo", "intruder")).await.unwrap_err();
    assert!(
        err.contains("PermissionDenied")
            && err.contains("service account demo/intruder is not a ztunnel service account"),
        "{err}"
    );
    let unbound = api
        .token("istio-system", "ztunnel", "istio-ca", None)
        .await?;
    let err = sign(unbound, id("demo", "app-a")).await.unwrap_err();
    assert!(err.contains("is not bound to a pod"), "{err}");
    // A waypoint's pod: its own identity, nothing else.
    let waypoint = api
        .token("demo", "waypoint", "istio-ca", Some("waypoint-0"))
        .await?;
    let cert = sign(waypoint.clone(), id("demo", "waypoint")).await;
    assert_eq!(cert.map(|c| c.identity), Ok(id("demo", "waypoint")));
    let err = sign(waypoint, id("demo", "app-b")).await.unwrap_err();
    assert!(
        err.contains("PermissionDenied") && err.contains("a waypoint gets its own identity only"),
        "{err}"
    );
    let err = sign("not-a-token".into(), id("demo", "app-a"))
        .await
        .unwrap_err();
    assert!(
        err.contains("Unauthenticated") && err.contains("refused the token"),
        "{err}"
    );

    // Tokens the test signs with the server's key: valid ones pass (so the
    // forging is right), expired ones are refused as expired.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let pod_uid = uid(&api, &["pod", "-n", "istio-system", "ztunnel-n1"]).await?;
    let account_uid = uid(&api, &["serviceaccount", "-n", "istio-system", "ztunnel"]).await?;
    let claims = |issued: u64, expires: u64| {
        serde_json::json!({
            "iss": ISSUER,
            "aud": ["istio-ca"],
            "sub": "system:serviceaccount:istio-system:ztunnel",
            "iat": issued, "nbf": issued, "exp": expires,
            "kubernetes.io": {
                "namespace": "istio-system",
                "pod": {"name": "ztunnel-n1", "uid": pod_uid},
                "serviceaccount": {"name": "ztunnel", "uid": account_uid},
            },
        })
    };
    let fresh = api.sign_token(&claims(now - 60, now + 3600))?;
    assert!(
        sign(fresh, id("demo", "app-a")).await.is_ok(),
        "a token the test signs is valid when not expired"
    );
    let expired = api.sign_token(&claims(now - 7200, now - 3600))?;
    let err = sign(expired, id("demo", "app-a")).await.unwrap_err();
    assert!(
        err.contains("Unauthenticated") && err.contains("expired"),
        "{err}"
    );

    // A ztunnel whose pod is gone: its token is refused (the API server
    // invalidates tokens bound to a deleted pod; the cache holds a review
    // for at most 30 s).
    api.kubectl_ok(
        &[
            "delete",
            "pod",
            "-n",
            "istio-system",
            "ztunnel-n1",
            "--force",
            "--grace-period=0",
        ],
        None,
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(31)).await;
    let err = sign(n1, id("demo", "app-a")).await.unwrap_err();
    assert!(err.contains("Unauthenticated"), "{err}");
    Ok(())
}
