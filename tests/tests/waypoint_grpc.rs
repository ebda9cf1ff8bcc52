//! gRPC through a real waypoint: unary calls, server streaming, statuses
//! and their trailers passed through untouched; the client's
//! `grpc-timeout` enforced by the waypoint; and the waypoint's own answers
//! (a denial, a timeout, no route) given as gRPC statuses, not HTTP errors.
//!
//! The server is a tonic service in two `web` pods; the client is
//! `weft-probe grpc` (tonic) or `curl --http2-prior-knowledge` in an
//! enrolled pod.

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use anyhow::Context;
use support::shop::{curl, mesh, BASE};
use weft_tests::{
    grpc::{spawn_grpc, CallReport},
    privilege::require_privileged,
    processes::eventually,
    topology::Pod,
};

const ECHO: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  clusterIP: 198.19.0.13
  selector: {app: web}
  ports: [{name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-fail-for-visitors, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules:
  - from: [{source: {namespaces: [other]}}]
    to: [{operation: {paths: ["/weft.test.v1.Echo/Fail"]}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 9090}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /weft.test.v1.Echo}}]
    timeouts: {request: 1s}
    backendRefs: [{name: echo, port: 9090}]
"#;

const ECHO_ADDR: &str = "198.19.0.13:9090";

async fn grpc(pod: &Pod, args: &[&str]) -> anyhow::Result<CallReport> {
    let mut cmd = pod.command(env!("CARGO_BIN_EXE_weft-probe"))?;
    cmd.args(["grpc", ECHO_ADDR]).args(args);
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .context("running weft-probe grpc")?;
    anyhow::ensure!(
        out.status.success(),
        "weft-probe grpc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The waypoint's `istio_requests_total` for gRPC answers with HTTP
/// `code` and `grpc_status`, summed over the other labels.
async fn grpc_requests(
    waypoint: &weft_tests::processes::WaypointProcess,
    code: &str,
    grpc_status: &str,
) -> Option<f64> {
    let text = waypoint.metrics_text().await.ok()?;
    let wanted = [
        "reporter=\"waypoint\"".to_owned(),
        "request_protocol=\"grpc\"".to_owned(),
        format!("response_code=\"{code}\""),
        format!("grpc_response_status=\"{grpc_status}\""),
    ];
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| wanted.iter().all(|w| l.contains(w.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (total > 0.0).then_some(total)
}

async fn start() -> anyhow::Result<(
    weft_tests::mesh::Mesh,
    weft_tests::processes::WaypointProcess,
)> {
    let (mesh, waypoint) = mesh(ECHO).await?;
    for (qualified, name) in [("shop/web-v1", "v1"), ("shop/web-v2", "v2")] {
        let pod = mesh.topology.pod(qualified);
        let listener = pod.enter(|| std::net::TcpListener::bind((pod.ip(), 9090)))??;
        spawn_grpc(listener, name)?;
    }
    Ok((mesh, waypoint))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_streams_and_statuses_pass_through_the_waypoint() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = start().await?;
    let client = mesh.topology.pod("shop/client");
    let said = grpc(client, &["say", "hello"]).await?;
    assert_eq!(said.code, 0, "{said:?}");
    assert!(
        said.replies == ["v1: hello"] || said.replies == ["v2: hello"],
        "{said:?}"
    );
    eventually("the call's log line", Duration::from_secs(5), || async {
        waypoint
            .process
            .lines_with(&[
                "request complete",
                "path=/weft.test.v1.Echo/Say",
                "protocol=HTTP/2",
                "route_name=shop/echo#0",
            ])
            .into_iter()
            .next()
    })
    .await?;
    // Server streaming, every message in order, then OK.
    let counted = grpc(client, &["count", "200"]).await?;
    assert_eq!(counted.code, 0, "{counted:?}");
    assert_eq!(counted.replies.len(), 200);
    let server = counted.replies[0]
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_owned();
    for (i, reply) in counted.replies.iter().enumerate() {
        assert_eq!(reply, &format!("{server} #{}", i + 1));
    }
    // An application's status, message and trailers arrive as sent.
    let failed = grpc(client, &["fail", "5"]).await?;
    assert_eq!(failed.code, 5, "NOT_FOUND: {failed:?}");
    assert!(failed.message.ends_with(" failed as asked"), "{failed:?}");
    let by = failed.metadata.get("x-failed-by").map(String::as_str);
    assert!(matches!(by, Some("v1" | "v2")), "the trailer: {failed:?}");
    // Counted as gRPC, by the status in the upstream's trailers.
    eventually(
        "the failed call counted",
        Duration::from_secs(5),
        || async { grpc_requests(&waypoint, "200", "5").await },
    )
    .await?;
    eventually("the calls counted", Duration::from_secs(5), || async {
        grpc_requests(&waypoint, "200", "0")
            .await
            .filter(|n| *n == 2.0)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waypoint_answers_grpc_clients_in_grpc() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = start().await?;
    let (client, visitor) = (
        mesh.topology.pod("shop/client"),
        mesh.topology.pod("other/visitor"),
    );
    // An L7 denial is PERMISSION_DENIED, for the method the policy names.
    let denied = grpc(visitor, &["fail", "5"]).await?;
    assert_eq!(
        (denied.code, denied.message.as_str()),
        (7, "RBAC: access denied"),
        "{denied:?}"
    );
    assert_eq!(grpc(visitor, &["say", "hi"]).await?.code, 0);
    // The route's timeout is DEADLINE_EXCEEDED.
    let started = Instant::now();
    let slow = grpc(client, &["slow", "5000"]).await?;
    assert_eq!(
        (slow.code, slow.message.as_str()),
        (4, "upstream request timeout"),
        "{slow:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    // The route's timeout covers the whole stream: a stream still going
    // when it passes is ended with DEADLINE_EXCEEDED, after what did
    // arrive in time.
    let started = Instant::now();
    let cut = grpc(client, &["count", "10/300"]).await?;
    assert_eq!(cut.code, 4, "{cut:?}");
    assert!(
        (2..=5).contains(&cut.replies.len()),
        "replies before the cut at 1 s: {cut:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A client's grpc-timeout is enforced by the waypoint: the backend
    // here (plain HTTP/2, not gRPC) would answer after 3 s.
    let mut cmd = client.command("curl")?;
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "--http2-prior-knowledge",
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "content-type: application/grpc",
        "-H",
        "grpc-timeout: 300m",
        "-H",
        "te: trailers",
        "--data-binary",
        "",
        "http://198.19.0.10/delay/3000",
    ]);
    let started = Instant::now();
    let out = tokio::process::Command::from(cmd).output().await?;
    let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("grpc-status: 4"), "{head}");
    let line = eventually(
        "the deadline's log line",
        Duration::from_secs(5),
        || async {
            waypoint
                .process
                .lines_with(&["request complete", "path=/delay/3000", "response_flags=UT"])
                .into_iter()
                .next()
        },
    )
    .await?;
    assert!(line.contains("grpc_status=4"), "{line}");
    for code in ["7", "4"] {
        eventually(
            "the waypoint's answers counted",
            Duration::from_secs(5),
            || async { grpc_requests(&waypoint, "200", code).await },
        )
        .await?;
    }
    Ok(())
}

const GRPC_ROUTES: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  clusterIP: 198.19.0.13
  selector: {app: web}
  ports: [{name: grpc, port: 9090, targetPort: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: shop}
spec:
  clusterIP: 198.19.0.16
  selector: {app: web, version: v1}
  ports: [{name: grpc, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: shop}
spec:
  clusterIP: 198.19.0.17
  selector: {app: web, version: v2}
  ports: [{name: grpc, port: 9090}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 9090}]
  rules:
  - matches: [{method: {service: weft.test.v1.Echo, method: Say}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-routed, value: say}]}
    backendRefs: [{name: echo-v1, port: 9090}]
  - matches: [{method: {type: RegularExpression, method: "F.*"}}]
    backendRefs: [{name: echo-v2, port: 9090}]
  - matches: [{method: {service: weft.test.v1.Other}}]
    backendRefs: [{name: echo-v1, port: 9090}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_routes_choose_backends_by_service_and_method() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh(GRPC_ROUTES).await?;
    for (qualified, name) in [("shop/web-v1", "v1"), ("shop/web-v2", "v2")] {
        let pod = mesh.topology.pod(qualified);
        let listener = pod.enter(|| std::net::TcpListener::bind((pod.ip(), 9090)))??;
        spawn_grpc(listener, name)?;
    }
    let client = mesh.topology.pod("shop/client");
    // Service and method, exactly: always v1, with the rule's filter.
    for _ in 0..6 {
        let said = grpc(client, &["say", "hi"]).await?;
        assert_eq!(
            (said.code, said.replies.as_slice()),
            (0, ["v1: hi".to_owned()].as_slice()),
            "{said:?}"
        );
        assert_eq!(
            said.metadata.get("x-routed").map(String::as_str),
            Some("say")
        );
    }
    // A method by regular expression, on any service.
    let failed = grpc(client, &["fail", "5"]).await?;
    assert_eq!(failed.code, 5, "{failed:?}");
    assert_eq!(
        failed.metadata.get("x-failed-by").map(String::as_str),
        Some("v2")
    );
    // A method no rule names: routes are attached, so it is not found —
    // UNIMPLEMENTED to a gRPC client.
    let counted = grpc(client, &["count", "3"]).await?;
    assert_eq!(counted.code, 12, "{counted:?}");
    eventually(
        "the unrouted call's log line",
        Duration::from_secs(5),
        || async {
            waypoint
                .process
                .lines_with(&["path=/weft.test.v1.Echo/Count", "response_flags=NR"])
                .into_iter()
                .next()
        },
    )
    .await?;
    // A GRPCRoute matches gRPC requests only: the same path, not gRPC.
    let (status, _, _) = curl(
        client,
        &[
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "http://198.19.0.13:9090/weft.test.v1.Echo/Say",
        ],
    )
    .await?;
    assert_eq!(status, 404);

    // A malformed GRPCRoute is refused by name; the others keep serving.
    let broken = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: broken, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{method: {service: "not a service!"}}]
    backendRefs: [{name: echo-v2, port: 9090}]
"#;
    mesh.update_config(&format!("{BASE}{GRPC_ROUTES}{broken}"))?;
    eventually(
        "the control service to name the bad route",
        Duration::from_secs(10),
        || async {
            mesh.control
                .process
                .lines_with(&["GRPCRoute shop/broken", "is not a gRPC service name"])
                .into_iter()
                .next()
        },
    )
    .await?;
    let said = grpc(client, &["say", "still"]).await?;
    assert_eq!(said.replies, ["v1: still"]);
    Ok(())
}
