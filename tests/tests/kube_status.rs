//! Status and waypoints written to a real API server by the leader of the
//! control services: a waypoint Gateway gets its ServiceAccount, Deployment
//! and Service (removed with it) and is Programmed (with its address) once
//! the Service has one, HTTPRoutes get parent statuses, bound Services get
//! `istio.io/WaypointBound`, AuthorizationPolicies `ZtunnelAccepted` or
//! `WaypointAccepted`; the leader killed, the other replica takes the
//! Lease and writes within the lease time.

use std::time::Duration;

use weft_control::{config::ControlConfig, server::Control, source::KubeConnection};
use weft_tests::{kube::ApiServer, processes::eventually};

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.30
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l4, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{source: {namespaces: [shop]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: http-on-ztunnel, namespace: shop}
spec:
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: at-the-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#;

const LEASE: Duration = Duration::from_secs(3);

async fn replica(api: &ApiServer, dir: &std::path::Path, name: &str) -> anyhow::Result<Control> {
    let mut config = ControlConfig::kubernetes(
        KubeConnection {
            kubeconfig: Some(api.kubeconfig.clone()),
            context: None,
        },
        dir.join(name),
    );
    config.listen = "127.0.0.1:0".parse()?;
    config.lease.namespace = "default".into();
    config.lease.identity = name.into();
    config.lease.duration = LEASE;
    config.lease.retry = Duration::from_millis(500);
    Ok(Control::start(config).await?)
}

async fn get(api: &ApiServer, what: &[&str]) -> Option<serde_json::Value> {
    let mut args = vec!["get", "-n", "shop"];
    args.extend(what);
    args.extend(["-o", "json"]);
    serde_json::from_str(&api.kubectl_ok(&args, None).await.ok()?).ok()
}

fn condition<'a>(status: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

async fn holder(api: &ApiServer) -> Option<String> {
    let out = api
        .kubectl_ok(
            &[
                "get",
                "lease",
                "-n",
                "default",
                "weft-control",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        )
        .await
        .ok()?;
    Some(out.trim().to_owned()).filter(|h| !h.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_status_and_a_replica_takes_over() -> anyhow::Result<()> {
    let api = ApiServer::start_with_crds().await?;
    api.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(MESH))
        .await?;
    let dir = tempfile::tempdir()?;
    let a = replica(&api, dir.path(), "replica-a").await?;
    let b = replica(&api, dir.path(), "replica-b").await?;
    // One mesh root for both, kept in the cluster.
    assert_eq!(a.root_pem(), b.root_pem());
    let secret = api
        .kubectl_ok(
            &[
                "get",
                "secret",
                "-n",
                "default",
                "weft-ca",
                "-o",
                "jsonpath={.data.root-cert\\.pem}",
            ],
            None,
        )
        .await?;
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(secret.trim())?,
        a.root_pem().as_bytes()
    );

    // The waypoint controller gives the Gateway its Service; once that
    // has an address, the Gateway is programmed with it.
    let gateway = eventually(
        "the Gateway programmed",
        Duration::from_secs(20),
        || async {
            let gateway = get(&api, &["gateway", "waypoint"]).await?;
            (condition(&gateway["status"], "Programmed")?["status"] == "True").then_some(gateway)
        },
    )
    .await?;
    let vip = get(&api, &["service", "waypoint"]).await.unwrap()["spec"]["clusterIP"].clone();
    assert_eq!(
        gateway["status"]["addresses"],
        serde_json::json!([{"type": "IPAddress", "value": vip}])
    );
    assert_eq!(
        condition(&gateway["status"], "Accepted").unwrap()["status"],
        "True"
    );
    assert!(condition(&gateway["status"], "Programmed").unwrap()["lastTransitionTime"].is_string());
    eventually(
        "web bound to the waypoint",
        Duration::from_secs(20),
        || async {
            let web = get(&api, &["service", "web"]).await?;
            let bound = condition(&web["status"], "istio.io/WaypointBound")?;
            (bound["status"] == "True" && bound["message"] == "bound to waypoint.shop.svc")
                .then_some(())
        },
    )
    .await?;
    let route = eventually(
        "the route's parent status",
        Duration::from_secs(20),
        || async {
            let route = get(&api, &["httproute", "web"]).await?;
            route["status"]["parents"].as_array()?.first().cloned()
        },
    )
    .await?;
    assert_eq!(route["controllerName"], "istio.io/gateway-controller");
    assert_eq!(
        route["parentRef"],
        serde_json::json!({"group": "", "kind": "Service", "namespace": "shop", "name": "web", "port": 80})
    );
    assert_eq!(
        condition(&route, "Accepted").unwrap()["status"],
        "True",
        "{route}"
    );
    assert_eq!(condition(&route, "ResolvedRefs").unwrap()["status"], "True");

    // AuthorizationPolicies: enforced as written, or why not.
    let accepted = |name: &'static str| {
        let api = &api;
        async move {
            eventually(name, Duration::from_secs(20), || async {
                let policy = get(api, &["authorizationpolicy", name]).await?;
                policy["status"]["conditions"].as_array()?.first().cloned()
            })
            .await
        }
    };
    let l4 = accepted("l4").await?;
    assert_eq!(
        (&l4["type"], &l4["status"]),
        (&"ZtunnelAccepted".into(), &"True".into()),
        "{l4}"
    );
    let http = accepted("http-on-ztunnel").await?;
    assert_eq!(http["type"], "ZtunnelAccepted");
    assert_eq!(http["status"], "False", "{http}");
    assert_eq!(http["reason"], "UnsupportedValue");
    assert!(
        http["message"]
            .as_str()
            .unwrap()
            .contains("without a waypoint"),
        "{http}"
    );
    let at_waypoint = accepted("at-the-waypoint").await?;
    assert_eq!(at_waypoint["type"], "WaypointAccepted");
    assert_eq!(at_waypoint["status"], "True", "{at_waypoint}");
    assert_eq!(at_waypoint["message"], "bound to shop/waypoint");

    // One leader; the other only serves. Kill the leader (no goodbye: its
    // Lease simply stops being renewed).
    let first = holder(&api).await.expect("a leader");
    let (survivor, name) = match first.as_str() {
        "replica-a" => {
            drop(a);
            (b, "replica-b")
        }
        "replica-b" => {
            drop(b);
            (a, "replica-a")
        }
        other => panic!("unexpected holder {other}"),
    };
    let killed = std::time::Instant::now();
    api.kubectl_ok(
        &["apply", "--server-side", "-f", "-"],
        Some(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {name: late, namespace: shop}\n\
             spec: {parentRefs: [{group: \"\", kind: Service, name: web}], \
             rules: [{backendRefs: [{name: missing, port: 80}]}]}\n",
        ),
    )
    .await?;
    let late = eventually("the survivor writes", Duration::from_secs(20), || async {
        let route = get(&api, &["httproute", "late"]).await?;
        route["status"]["parents"].as_array()?.first().cloned()
    })
    .await?;
    let took = killed.elapsed();
    assert_eq!(holder(&api).await.as_deref(), Some(name));
    let resolved = condition(&late, "ResolvedRefs").unwrap();
    assert_eq!(resolved["status"], "False", "{late}");
    assert_eq!(resolved["reason"], "BackendNotFound");
    println!("status written by the new leader {took:?} after the old one died (lease {LEASE:?})");
    assert!(
        took < LEASE * 4,
        "took over within the lease time and a few renewal periods: {took:?}"
    );
    drop(survivor);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_gateway_gets_its_objects_and_they_go_with_it() -> anyhow::Result<()> {
    let api = ApiServer::start_with_crds().await?;
    let gateway_only: String = MESH
        .split("\n---\n")
        .filter(|doc| doc.contains("\nkind: Namespace") || doc.contains("\nkind: Gateway"))
        .collect::<Vec<_>>()
        .join("\n---\n");
    api.kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(&gateway_only))
        .await?;
    let dir = tempfile::tempdir()?;
    let control = replica(&api, dir.path(), "solo").await?;

    let gateway_uid = get(&api, &["gateway", "waypoint"]).await.unwrap()["metadata"]["uid"].clone();
    for kind in ["serviceaccount", "deployment", "service"] {
        let object = eventually(kind, Duration::from_secs(20), || async {
            get(&api, &[kind, "waypoint"]).await
        })
        .await?;
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "Gateway", "{kind}: {owner}");
        assert_eq!(owner["uid"], gateway_uid, "{kind}");
        assert_eq!(
            object["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
            "waypoint"
        );
        let fields: serde_json::Value = serde_json::from_str(
            &api.kubectl_ok(
                &[
                    "get",
                    "-n",
                    "shop",
                    kind,
                    "waypoint",
                    "--show-managed-fields",
                    "-o",
                    "json",
                ],
                None,
            )
            .await?,
        )?;
        assert_eq!(
            fields["metadata"]["managedFields"][0]["manager"], "weft-control",
            "{kind}: applied server-side"
        );
    }
    let deployment = get(&api, &["deployment", "waypoint"]).await.unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "waypoint");
    assert_eq!(
        pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "istio-ca"
    );
    let root = get(&api, &["configmap", "istio-ca-root-cert"])
        .await
        .unwrap();
    assert_eq!(root["data"]["root-cert.pem"], control.root_pem());

    // The API server gave the Service its address: the Gateway is
    // programmed with it.
    let service = get(&api, &["service", "waypoint"]).await.unwrap();
    let vip = service["spec"]["clusterIP"].as_str().unwrap().to_owned();
    assert!(vip.starts_with("198.19."), "{vip}");
    eventually(
        "the Gateway programmed",
        Duration::from_secs(20),
        || async {
            let gateway = get(&api, &["gateway", "waypoint"]).await?;
            (condition(&gateway["status"], "Programmed")?["status"] == "True"
                && gateway["status"]["addresses"][0]["value"] == vip.as_str())
            .then_some(())
        },
    )
    .await?;

    // Deleting the Gateway takes its objects with it.
    api.kubectl_ok(&["delete", "gateway", "-n", "shop", "waypoint"], None)
        .await?;
    // Nothing may bring them back (status written to the Service while it
    // was deleted once re-created it, bare).
    for kind in ["deployment", "service", "serviceaccount"] {
        let gone = eventually("garbage-collected", Duration::from_secs(30), || async {
            get(&api, &[kind, "waypoint"]).await.is_none().then_some(())
        })
        .await;
        if gone.is_err() {
            let left = get(&api, &[kind, "waypoint"]).await;
            panic!(
                "{kind} left: {}",
                serde_json::to_string_pretty(&left.unwrap_or_default()["metadata"]).unwrap()
            );
        }
    }
    drop(control);
    Ok(())
}
