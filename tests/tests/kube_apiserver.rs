//! The tests' Kubernetes API server is a real one: it validates what it is
//! given and names the field it refuses, stores and serves objects back
//! (server-side apply included), allocates ClusterIPs from Weft's service
//! range, and its controllers run — a new namespace gets its default
//! ServiceAccount, a deleted one goes away.

use std::time::Duration;

use weft_tests::{kube::ApiServer, processes::eventually};

const NAMESPACE: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  # Server-side apply on 1.20 needs `protocol` (a key of the list) spelled
  # out; later servers default it.
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
"#;

const BAD_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: shop}
spec:
  ports: [{name: http, port: 70000, protocol: TCP}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_validates_stores_and_runs_its_controllers() -> anyhow::Result<()> {
    let server = ApiServer::start().await?;
    let version: serde_json::Value =
        serde_json::from_str(&server.kubectl_ok(&["version", "-o", "json"], None).await?)?;
    let git = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or("");
    assert!(git.starts_with("v1."), "server version {version}");

    server
        .kubectl_ok(
            &[
                "apply",
                "--server-side",
                "--field-manager=weft-test",
                "-f",
                "-",
            ],
            Some(NAMESPACE),
        )
        .await?;
    let label = server
        .kubectl_ok(
            &[
                "get",
                "namespace",
                "shop",
                "-o",
                r"jsonpath={.metadata.labels.istio\.io/dataplane-mode}",
            ],
            None,
        )
        .await?;
    assert_eq!(label, "ambient");
    let ip: std::net::Ipv4Addr = server
        .kubectl_ok(
            &[
                "get",
                "service",
                "web",
                "-n",
                "shop",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
            None,
        )
        .await?
        .parse()?;
    let range: ipnet::Ipv4Net = weft_tests::kube::SERVICE_RANGE.parse()?;
    assert!(range.contains(&ip), "ClusterIP {ip} outside {range}");

    // Refused by the server's own validation, naming the field.
    let refused = server
        .kubectl_ok(&["apply", "--server-side", "-f", "-"], Some(BAD_SERVICE))
        .await
        .expect_err("a port above 65535 is refused");
    assert!(
        format!("{refused:#}").contains("spec.ports[0].port"),
        "{refused:#}"
    );

    // The controller manager runs: service accounts and namespace deletion.
    eventually(
        "the namespace's default ServiceAccount",
        Duration::from_secs(60),
        || async {
            server
                .kubectl_ok(&["get", "serviceaccount", "default", "-n", "shop"], None)
                .await
                .ok()
        },
    )
    .await?;
    server
        .kubectl_ok(&["delete", "namespace", "shop", "--wait=false"], None)
        .await?;
    eventually("the namespace deleted", Duration::from_secs(60), || async {
        let out = server
            .kubectl(&["get", "namespace", "shop"])
            .output()
            .await
            .ok()?;
        (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound"))
            .then_some(())
    })
    .await?;
    Ok(())
}
