//! L7 authorization at a real waypoint: AuthorizationPolicies bound with
//! `targetRefs` (the waypoint Gateway, a Service) decide each request; a
//! denial answers 403 `RBAC: access denied`. Paths are made canonical first,
//! so none of the classic walks around a path rule gets through, and every
//! value of a repeated header is judged on its own.

#[macro_use]
mod support;

use std::{net::SocketAddr, path::Path};

use anyhow::Context;
use support::{binaries, probe};
use weft_tests::{
    apps,
    mesh::{Mesh, MeshOptions},
    privilege::require_privileged,
    processes::WaypointProcess,
    topology::{Pod, Topology},
};

const CONFIG: &str = r#"
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
kind: Pod
metadata:
  name: waypoint-0
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {nodeName: n2, serviceAccountName: waypoint}
status: {podIP: "${shop/waypoint-0}"}
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: shop}
spec:
  clusterIP: 198.19.0.20
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{name: mesh, port: 15008}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {nodeName: n1, serviceAccountName: client}
status: {podIP: "${shop/client}"}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {nodeName: n2, serviceAccountName: web}
status: {podIP: "${shop/web}"}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reads-only, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules:
  - from: [{source: {namespaces: [shop]}}]
    to: [{operation: {methods: [GET], paths: ["/public/*", "/admin", "/admin/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
  - when: [{key: "request.headers[x-evil]", values: ["1"]}]
"#;

fn waypoint_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_wt-waypoint"))
}

async fn mesh() -> anyhow::Result<(Mesh, WaypointProcess)> {
    let topology = Topology::builder()
        .control_plane()
        .node("n1")
        .node("n2")
        .pod("shop/client", "n1")
        .pod("shop/web", "n2")
        .pod("shop/waypoint-0", "n2")
        .build()?;
    let mesh = Mesh::start_with(topology, CONFIG, binaries(), MeshOptions::default()).await?;
    mesh.enroll("shop/client", "client").await?;
    mesh.enroll("shop/web", "web").await?;
    let web = mesh.topology.pod("shop/web");
    let listener = web.enter(|| std::net::TcpListener::bind((web.ip(), 8080)))??;
    apps::spawn_web(listener, "web")?;
    let waypoint = mesh
        .start_waypoint("shop/waypoint-0", "waypoint", waypoint_bin())
        .await?;
    Ok((mesh, waypoint))
}

/// `curl --path-as-is` (so curl itself tidies nothing): the status code.
async fn status(pod: &Pod, extra: &[&str], url: &str) -> anyhow::Result<u16> {
    let mut cmd = pod.command("curl")?;
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
        "--path-as-is",
    ])
    .args(extra)
    .arg(url);
    let out = tokio::process::Command::from(cmd)
        .output()
        .await
        .context("curl")?;
    anyhow::ensure!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// A request written byte for byte (what curl would not send): the status
/// line's code.
async fn raw_status(pod: &Pod, request: &str) -> anyhow::Result<u16> {
    let report = probe(pod, SocketAddr::from(([198, 19, 0, 10], 80)), request).await?;
    report
        .reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {:?}", report.reply))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_decided_by_l7_policy_and_no_path_trick_walks_around_it() -> anyhow::Result<()>
{
    require_privileged();
    let (mesh, waypoint) = mesh().await?;
    let client = mesh.topology.pod("shop/client");
    let url = |path: &str| format!("http://198.19.0.10{path}");

    let cases: &[(&str, &[&str], &str, u16)] = &[
        ("GET is allowed", &[], "/public/x", 200),
        ("POST is not", &["-X", "POST"], "/public/x", 403),
        ("the DENY on /admin", &[], "/admin", 403),
        ("…and below it", &[], "/admin/users", 403),
        ("dot segments", &[], "/public/../admin", 403),
        ("encoded dot segments", &[], "/public/%2e%2e/admin", 403),
        ("an encoded unreserved letter", &[], "/%61dmin", 403),
        ("a mixed-case escape", &[], "/public/%2E%2e/admin/x", 403),
        (
            "an encoded slash stays a different path",
            &[],
            "/admin%2Fusers",
            403,
        ),
        (
            "a query is not part of the path",
            &[],
            "/admin?x=/public/",
            403,
        ),
        (
            "a fragment-looking query",
            &[],
            "/public/x?y=%23/../../admin",
            200,
        ),
        ("the header DENY", &["-H", "x-evil: 1"], "/public/x", 403),
        (
            "a header value that only contains 1",
            &["-H", "x-evil: 10"],
            "/public/x",
            200,
        ),
        (
            "one of two repeated values",
            &["-H", "x-evil: 0", "-H", "x-evil: 1"],
            "/public/x",
            403,
        ),
        (
            "a joined value is not the value",
            &["-H", "x-evil: 0,1"],
            "/public/x",
            200,
        ),
    ];
    for (what, extra, path, expected) in cases {
        let got = status(client, extra, &url(path)).await?;
        assert_eq!(got, *expected, "{what}: {path} {extra:?}");
    }
    // What curl would not send: backslashes, a lower-case method, NUL.
    let raw: &[(&str, &str, u16)] = &[
        (
            "backslashes",
            "GET /public\\..\\admin HTTP/1.1\r\nHost: web\r\n\r\n",
            403,
        ),
        (
            "a lower-case method",
            "get /public/x HTTP/1.1\r\nHost: web\r\n\r\n",
            400,
        ),
        (
            "an encoded NUL",
            "GET /public/x%00 HTTP/1.1\r\nHost: web\r\n\r\n",
            400,
        ),
        (
            "a broken escape",
            "GET /public/%zz HTTP/1.1\r\nHost: web\r\n\r\n",
            400,
        ),
    ];
    for (what, request, expected) in raw {
        let got = raw_status(client, request).await?;
        assert_eq!(got, *expected, "{what}");
    }
    // Not HTTP at all: carried at L4, where the GET-only ALLOW can allow
    // nothing (its rules are about requests): refused.
    let opaque = probe(
        client,
        SocketAddr::from(([198, 19, 0, 10], 80)),
        "\x16\x03 not http",
    )
    .await;
    assert!(
        opaque.is_err() || opaque.as_ref().is_ok_and(|r| r.reply.is_empty()),
        "opaque bytes reached the service past L7 policy: {opaque:?}"
    );
    // Denials say so, and name the policy.
    let mut cmd = client.command("curl")?;
    cmd.args(["-sS", "--max-time", "10", &url("/admin")]);
    let out = tokio::process::Command::from(cmd).output().await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "RBAC: access denied");
    let denial =
        waypoint
            .process
            .lines_with(&["request complete", "path=/admin", "response_code=403"]);
    assert!(
        denial
            .iter()
            .any(|l| l.contains("policy=shop/no-admin") && l.contains("response_flags=RBAC")),
        "{denial:#?}"
    );
    Ok(())
}
