//! The control service reading a real Kubernetes API server: one YAML
//! through the directory source and through the Kubernetes source gives
//! byte-identical xDS; labels, pods, policies and routes changed with
//! kubectl reach a connected ztunnel; a malformed object is reported (in
//! the log and as an Event on it) and the rest keeps working; the API server restarted under a running control
//! service is relisted and converges.

use std::{collections::BTreeMap, path::Path, time::Duration};

use weft_control::{config::ControlConfig, server::Control, source::KubeConnection, xds::XdsStore};
use weft_tests::{
    kube::ApiServer,
    processes::{eventually, ControlProcess, ZtunnelProcess},
};

const CONTROL: &str = env!("CARGO_BIN_EXE_wt-control");
const ZTUNNEL: &str = env!("CARGO_BIN_EXE_wt-ztunnel");

/// Pods (namespace, name, node, IP): the API server takes their status
/// through `pods/status`, as from a kubelet; the directory has it inline.
const PODS: [(&str, &str, &str, &str); 6] = [
    ("shop", "client", "n1", "198.18.1.2"),
    ("shop", "web-v1", "n2", "198.18.2.2"),
    ("shop", "web-v2", "n2", "198.18.2.3"),
    ("shop", "waypoint-0", "n2", "198.18.2.4"),
    ("shop", "legacy", "n1", "198.18.1.3"),
    ("other", "visitor", "n1", "198.18.1.4"),
];

/// Every kind the control service reads, as a user writes it for a
/// cluster (containers and port protocols included, which the API server
/// requires).
const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec:
  nodeName: n2
  serviceAccountName: waypoint
  automountServiceAccountToken: false
  containers: [{name: istio-proxy-waypoint, image: weft/waypoint}]
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: shop}
spec:
  clusterIP: 198.19.0.20
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008, protocol: TCP}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  nodeName: n1
  serviceAccountName: client
  automountServiceAccountToken: false
  containers: [{name: app, image: client}]
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: shop, labels: {app: legacy}}
spec:
  nodeName: n1
  serviceAccountName: client
  automountServiceAccountToken: false
  containers: [{name: app, image: legacy}, {name: istio-proxy, image: proxyv2}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-v1, namespace: shop, labels: {app: web, version: v1}}
spec:
  nodeName: n2
  serviceAccountName: web
  automountServiceAccountToken: false
  containers: [{name: app, image: web, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-v2, namespace: shop, labels: {app: web, version: v2}}
spec:
  nodeName: n2
  serviceAccountName: web
  automountServiceAccountToken: false
  containers: [{name: app, image: web, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: visitor, namespace: other, labels: {app: visitor}}
spec:
  nodeName: n1
  serviceAccountName: visitor
  automountServiceAccountToken: false
  containers: [{name: app, image: visitor}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.30
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata: {name: web-v1, namespace: shop}
spec:
  clusterIP: 198.19.0.31
  selector: {app: web, version: v1}
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: web-v1, port: 80}]
  - backendRefs: [{name: web, port: 80}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {ports: ["8080"]}}]
"#;

/// The service accounts the pods run as (the API server admits no pod
/// without its service account).
const ACCOUNTS: [(&str, &str); 4] = [
    ("shop", "client"),
    ("shop", "web"),
    ("shop", "waypoint"),
    ("other", "visitor"),
];

/// `MESH` on the API server (started with the CRDs), pods' statuses
/// included.
async fn apply_mesh(api: &ApiServer) -> anyhow::Result<()> {
    // Namespaces first: the service accounts live in them.
    let (namespaces, rest): (Vec<&str>, Vec<&str>) = MESH
        .split("\n---\n")
        .partition(|doc| doc.contains("kind: Namespace"));
    api.kubectl_ok(
        &["apply", "--server-side", "-f", "-"],
        Some(&namespaces.join("\n---\n")),
    )
    .await?;
    for (namespace, name) in ACCOUNTS {
        api.kubectl_ok(&["create", "serviceaccount", "-n", namespace, name], None)
            .await?;
    }
    api.kubectl_ok(
        &["apply", "--server-side", "-f", "-"],
        Some(&rest.join("\n---\n")),
    )
    .await?;
    for (namespace, name, _, ip) in PODS {
        api.set_pod_running(namespace, name, ip).await?;
    }
    Ok(())
}

/// The same mesh as a directory: `MESH` with the pods' statuses inline,
/// plus what the API server creates by itself (its namespaces and the
/// `kubernetes` Service), exactly as kubectl reads them back.
async fn mesh_directory(api: &ApiServer, dir: &Path) -> anyhow::Result<()> {
    let mut docs: Vec<String> = Vec::new();
    for doc in MESH.split("\n---\n") {
        let pod = PODS.iter().find(|(namespace, name, _, _)| {
            doc.contains("kind: Pod")
                && (doc.contains(&format!("name: {name}, namespace: {namespace}"))
                    || doc.contains(&format!("  name: {name}\n  namespace: {namespace}\n")))
        });
        match pod {
            Some((_, _, _, ip)) => docs.push(format!(
                "{doc}\nstatus: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}"
            )),
            None => docs.push(doc.to_owned()),
        }
    }
    std::fs::write(dir.join("mesh.yaml"), docs.join("\n---\n"))?;
    let mut builtin = Vec::new();
    for args in [
        ["get", "namespace", "default"],
        ["get", "namespace", "kube-system"],
        ["get", "namespace", "kube-public"],
        ["get", "namespace", "kube-node-lease"],
    ] {
        builtin.push(
            api.kubectl_ok(&[&args[..], &["-o", "yaml"]].concat(), None)
                .await?,
        );
    }
    builtin.push(
        api.kubectl_ok(
            &[
                "get",
                "service",
                "-n",
                "default",
                "kubernetes",
                "-o",
                "yaml",
            ],
            None,
        )
        .await?,
    );
    std::fs::write(dir.join("builtin.yaml"), builtin.join("\n---\n"))?;
    Ok(())
}

/// Every resource a store serves: type URL and name → encoded bytes.
fn served(store: &XdsStore) -> BTreeMap<(String, String), Vec<u8>> {
    let snapshot = store.current();
    let mut out = BTreeMap::new();
    for (type_url, resources) in &snapshot.types {
        for (name, versioned) in resources {
            out.insert(
                (type_url.clone(), name.clone()),
                versioned.resource.value.clone(),
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_yaml_through_either_source_gives_identical_xds() -> anyhow::Result<()> {
    let api = ApiServer::start_with_crds().await?;
    apply_mesh(&api).await?;
    let dir = tempfile::tempdir()?;
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir)?;
    mesh_directory(&api, &config_dir).await?;

    let mut local = ControlConfig::new(&config_dir, dir.path().join("local-state"));
    local.listen = "127.0.0.1:0".parse()?;
    let local = Control::start(local).await?;
    let snapshot = local.snapshot();
    assert!(
        snapshot.errors.is_empty(),
        "directory: {:?}",
        snapshot.errors
    );

    let mut kube = ControlConfig::kubernetes(
        KubeConnection {
            kubeconfig: Some(api.kubeconfig.clone()),
            context: None,
        },
        dir.path().join("kube-state"),
    );
    kube.listen = "127.0.0.1:0".parse()?;
    kube.lease.namespace = "default".into();
    let kube = Control::start(kube).await?;
    let snapshot = kube.snapshot();
    assert!(
        snapshot.errors.is_empty(),
        "kubernetes: {:?}",
        snapshot.errors
    );

    let (from_dir, from_kube) = (served(local.store()), served(kube.store()));
    assert!(
        from_dir
            .keys()
            .any(|(_, name)| name.contains("Pod/shop/web-v1")),
        "the directory's xDS has the pods: {:?}",
        from_dir.keys().collect::<Vec<_>>()
    );
    let only = |a: &BTreeMap<(String, String), Vec<u8>>,
                b: &BTreeMap<(String, String), Vec<u8>>| {
        a.iter()
            .filter(|(key, bytes)| b.get(*key) != Some(*bytes))
            .map(|(key, _)| format!("{} {}", key.0, key.1))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        (only(&from_dir, &from_kube), only(&from_kube, &from_dir)),
        (vec![], vec![]),
        "resources that differ (directory only / Kubernetes only)"
    );
    assert_eq!(from_dir, from_kube);
    Ok(())
}

fn workload<'a>(dump: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    dump["workloads"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_changes_reach_ztunnel_across_an_api_server_restart() -> anyhow::Result<()> {
    let mut api = ApiServer::start_with_crds().await?;
    apply_mesh(&api).await?;
    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");
    // ztunnel proves its node as on a cluster: a token of its service
    // account, bound to its pod on n1, where its token file is.
    api.kubectl_ok(
        &["apply", "--server-side", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---\n\
             apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: ztunnel, namespace: istio-system}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: ztunnel-n1, namespace: istio-system}\n\
             spec: {nodeName: n1, serviceAccountName: ztunnel, automountServiceAccountToken: false, \
             containers: [{name: ztunnel, image: ztunnel}]}\n",
        ),
    )
    .await?;
    api.set_pod_running("istio-system", "ztunnel-n1", "198.18.255.1")
        .await?;
    let token = api
        .token("istio-system", "ztunnel", "istio-ca", Some("ztunnel-n1"))
        .await?;
    std::fs::create_dir_all(state_dir.join("nodes"))?;
    std::fs::write(state_dir.join("nodes").join("n1.token"), token.trim())?;
    let control = ControlProcess::start_kubernetes(
        Path::new(CONTROL),
        &api.kubeconfig,
        &state_dir,
        "127.0.0.1:0".parse()?,
    )
    .await?;
    // The node agent ztunnel connects to; it has no pods to hand over.
    let _agent = weft_zds::agent::Agent::bind(&dir.path().join("n1.sock"))?;
    let ztunnel = ZtunnelProcess::start(
        Path::new(ZTUNNEL),
        "n1",
        None,
        &dir.path().join("n1.sock"),
        &control,
    )
    .await?;
    // Addresses and policies are separate xDS types, delivered apart.
    let policies = |dump: &serde_json::Value| -> Vec<String> {
        dump["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["namespace"] == "shop")
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect()
    };
    let dump = eventually("ztunnel synced", Duration::from_secs(30), || async {
        let dump = ztunnel.config_dump().await.ok()?;
        (dump["xds"]["connected"] == true
            && workload(&dump, "visitor").is_some()
            && !policies(&dump).is_empty())
        .then_some(dump)
    })
    .await?;
    // Enrollment from labels: the namespace's label; never a pod with a
    // sidecar; a namespace without the label stays out.
    assert_eq!(workload(&dump, "client").unwrap()["protocol"], "Hbone");
    assert_eq!(workload(&dump, "legacy").unwrap()["protocol"], "None");
    assert_eq!(workload(&dump, "visitor").unwrap()["protocol"], "None");
    // The namespace's use-waypoint label: its services go through the
    // waypoint (a waypoint is for service traffic unless it says otherwise).
    let web = dump["services"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["hostname"] == "web.shop.svc.cluster.local")
        .cloned()
        .unwrap_or_default();
    assert!(!web["waypoint"].is_null(), "web's waypoint: {web}");
    assert!(workload(&dump, "client").unwrap()["waypoint"].is_null());

    // A label on the namespace enrolls its pods; the pod's own label opts
    // one out.
    api.kubectl_ok(
        &[
            "label",
            "namespace",
            "other",
            "istio.io/dataplane-mode=ambient",
        ],
        None,
    )
    .await?;
    eventually("visitor enrolled", Duration::from_secs(20), || async {
        let dump = ztunnel.config_dump().await.ok()?;
        (workload(&dump, "visitor")?["protocol"] == "Hbone").then_some(())
    })
    .await?;
    api.kubectl_ok(
        &[
            "label",
            "pod",
            "-n",
            "other",
            "visitor",
            "istio.io/dataplane-mode=none",
        ],
        None,
    )
    .await?;
    eventually("visitor opted out", Duration::from_secs(20), || async {
        let dump = ztunnel.config_dump().await.ok()?;
        (workload(&dump, "visitor")?["protocol"] == "None").then_some(())
    })
    .await?;

    // A policy deleted (the STRICT PeerAuthentication's own policy lives in
    // istio-system), then malformed ones.
    assert_eq!(policies(&dump), ["web"], "{}", dump["policies"]);
    api.kubectl_ok(
        &["delete", "authorizationpolicy", "-n", "shop", "web"],
        None,
    )
    .await?;
    eventually("the policy gone", Duration::from_secs(20), || async {
        let dump = ztunnel.config_dump().await.ok()?;
        policies(&dump).is_empty().then_some(())
    })
    .await?;
    // The API server itself refuses what the CRD's schema (derived from
    // the control service's own types) rules out, naming the field; kubectl
    // applies the other documents and exits non-zero.
    let out = api
        .kubectl_output(
            &["apply", "--server-side", "-f", "-"],
            Some(
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {name: refused, namespace: shop}\n\
                 spec: {action: PERMIT}\n\
                 ---\n\
                 apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {name: broken, namespace: shop}\n\
                 spec: {rules: [{from: [{source: {ipBlocks: [not-an-address]}}]}]}\n\
                 ---\n\
                 apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {name: deny-visitor, namespace: shop}\n\
                 spec: {action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}\n",
            ),
        )
        .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kubectl accepted action PERMIT");
    assert!(
        stderr.contains("refused") && stderr.contains("spec.action") && stderr.contains("PERMIT"),
        "{stderr}"
    );
    let stored = api
        .kubectl_ok(
            &["get", "authorizationpolicies", "-n", "shop", "-o", "name"],
            None,
        )
        .await?;
    assert!(!stored.contains("/refused"), "{stored}");
    assert!(
        stored.contains("/broken") && stored.contains("/deny-visitor"),
        "{stored}"
    );
    // What a schema cannot say (an address that is not one) the control
    // service refuses: named in its log and on the object, and the rest
    // keeps being served.
    eventually(
        "the good policy served",
        Duration::from_secs(20),
        || async {
            let dump = ztunnel.config_dump().await.ok()?;
            (policies(&dump) == ["deny-visitor"]).then_some(())
        },
    )
    .await?;
    eventually("the bad policy named", Duration::from_secs(10), || async {
        (!control
            .process
            .lines_with(&["AuthorizationPolicy shop/broken", "not-an-address"])
            .is_empty())
        .then_some(())
    })
    .await?;

    // ... and on the object itself, where `kubectl describe` shows it.
    let event = eventually(
        "an Event on the bad policy",
        Duration::from_secs(20),
        || async {
            let events = api
                .kubectl_ok(&["get", "events", "-n", "shop", "-o", "json"], None)
                .await
                .ok()?;
            let events: serde_json::Value = serde_json::from_str(&events).ok()?;
            events["items"]
                .as_array()?
                .iter()
                .find(|e| e["involvedObject"]["name"] == "broken")
                .cloned()
        },
    )
    .await?;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "Rejected");
    assert_eq!(event["involvedObject"]["kind"], "AuthorizationPolicy");
    assert!(
        event["message"]
            .as_str()
            .unwrap_or("")
            .contains("\"not-an-address\" is not an IP address or CIDR block"),
        "{event}"
    );

    // The API server goes away and comes back: the control service keeps
    // serving, relists, and sees changes made after the restart.
    api.restart_apiserver(Duration::from_secs(3)).await?;
    let dump = ztunnel.config_dump().await?;
    assert_eq!(dump["xds"]["connected"], true);
    assert!(workload(&dump, "client").is_some());
    api.kubectl_ok(
        &[
            "delete",
            "pod",
            "-n",
            "shop",
            "web-v2",
            "--force",
            "--grace-period=0",
        ],
        None,
    )
    .await?;
    api.kubectl_ok(
        &["apply", "--server-side", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: shop}\n\
             spec: {nodeName: n1, serviceAccountName: client, automountServiceAccountToken: false, \
             containers: [{name: app, image: late}]}\n",
        ),
    )
    .await?;
    api.set_pod_running("shop", "late", "198.18.1.9").await?;
    eventually(
        "changes after the restart",
        Duration::from_secs(60),
        || async {
            let dump = ztunnel.config_dump().await.ok()?;
            (workload(&dump, "late").is_some() && workload(&dump, "web-v2").is_none()).then_some(())
        },
    )
    .await?;
    assert_eq!(ztunnel.config_dump().await?["xds"]["nacks"], 0);
    drop(ztunnel);
    drop(control);
    Ok(())
}
