//! `weft waypoint` as a user runs it on a local mesh: apply with
//! `--enroll-namespace --wait`, the service's traffic through the waypoint,
//! list and status, `weft status`, delete — by the CLI alone.

use weft_tests::privilege::require_privileged;

mod support;

use support::Local;

#[test]
fn a_waypoint_from_apply_to_delete_by_the_cli_alone() {
    require_privileged();
    let local = Local::new();
    local.up_examples();
    assert_eq!(local.curl("demo/client", "http://web.demo/"), "200");

    // Generate prints what apply writes.
    let generated = local.top(&["waypoint", "generate", "-n", "demo", "--for", "service"]);
    for expected in [
        "kind: Gateway",
        "name: waypoint",
        "namespace: demo",
        "istio.io/waypoint-for: service",
        "gatewayClassName: istio-waypoint",
        "port: 15008",
        "protocol: HBONE",
    ] {
        assert!(generated.contains(expected), "{expected}: {generated}");
    }

    let applied = local.top(&[
        "waypoint",
        "apply",
        "-n",
        "demo",
        "--enroll-namespace",
        "--wait",
    ]);
    assert!(
        applied.contains("waypoint demo/waypoint programmed"),
        "{applied}"
    );
    assert!(applied.contains("namespace demo labelled"), "{applied}");

    let list = local.top(&["waypoint", "list", "-n", "demo"]);
    let row = list.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells, ["waypoint", "default", "service", "True"], "{list}");
    let all = local.top(&["waypoint", "list", "-A"]);
    assert!(all.starts_with("NAMESPACE"), "{all}");
    let status = local.top(&["waypoint", "status", "-n", "demo"]);
    assert!(
        status.contains("waypoint  True    Programmed  Programmed  Resource programmed"),
        "{status}"
    );

    // The service's traffic now goes through the waypoint's pod.
    assert_eq!(local.curl("demo/client", "http://web.demo/through"), "404");
    let waypoint_log = local.ok(&["logs", "waypoint-demo/waypoint-0"]);
    assert!(
        waypoint_log
            .lines()
            .any(|l| l.contains("request complete") && l.contains("path=/through")),
        "{waypoint_log}"
    );
    // What the waypoint holds, by `weft waypoint config`.
    let rules = local.file(
        "web-rules.yaml",
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web-api, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}, method: GET}]
    backendRefs: [{name: web, port: 80}]
    timeouts: {request: 3s}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-readers, namespace: demo}
spec:
  targetRefs: [{group: "", kind: Service, name: web}]
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
"#,
    );
    local.ok(&["apply", "-f", &rules]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let routes = loop {
        let out = local.top(&["waypoint", "config", "routes", "-n", "demo"]);
        if out.contains("demo/web-api") {
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the route never reached the waypoint: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    };
    let row = routes
        .lines()
        .find(|l| l.contains("demo/web-api"))
        .unwrap_or_default();
    for expected in [
        "demo/web.demo.svc.cluster.local",
        "80",
        "Prefix /api method=GET",
        "demo/web.demo.svc.cluster.local:80(1)",
        "3s",
    ] {
        assert!(row.contains(expected), "{expected}: {routes}");
    }
    let policies = local.top(&["waypoint", "config", "policies", "-n", "demo"]);
    assert!(
        policies.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.starts_with(&["demo", "web-readers", "Allow"])
                && l.contains("Service/demo/web.demo.svc.cluster.local")
        }),
        "{policies}"
    );
    let backends = local.top(&["waypoint", "config", "backends", "-n", "demo"]);
    assert!(
        backends
            .lines()
            .any(|l| l.starts_with("demo/web.demo.svc.cluster.local")
                && l.contains("demo/web")
                && l.contains("HEALTHY")
                && l.contains("RoundRobin")),
        "{backends}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &local.top(&["waypoint", "config", "backends", "-n", "demo", "-o", "json"]),
    )
    .expect("-o json prints JSON");
    assert_eq!(json[0]["endpoints"][0]["workload"], "demo/web", "{json:#}");
    let missing = local
        .weft()
        .args(["waypoint", "config", "routes", "-n", "nowhere"])
        .output()
        .unwrap();
    assert!(!missing.status.success(), "no waypoint there");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("waypoint nowhere/waypoint"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let overview = local.top(&["status"]);
    assert!(overview.contains("demo/waypoint"), "{overview}");
    assert!(
        overview.contains("demo/web  True           bound to waypoint demo/waypoint"),
        "{overview}"
    );

    // Re-pointing the namespace at another waypoint needs --overwrite.
    let out = local
        .weft()
        .args([
            "waypoint",
            "apply",
            "-n",
            "demo",
            "--name",
            "other",
            "--enroll-namespace",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("already uses waypoint waypoint; add --overwrite"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deleted = local.top(&["waypoint", "delete", "waypoint", "-n", "demo"]);
    assert!(
        deleted.contains("waypoint demo/waypoint deleted"),
        "{deleted}"
    );
    assert!(local
        .top(&["waypoint", "list", "-n", "demo"])
        .contains("No waypoints found"));
    // The namespace still asks for its waypoint, which is gone: refused,
    // not sent around it (and `weft status` says why).
    assert_eq!(local.curl("demo/client", "http://web.demo/"), "000");
    let overview = local.top(&["status"]);
    assert!(
        overview.contains("its waypoint does not exist"),
        "{overview}"
    );
    let out = local
        .weft()
        .args(["waypoint", "delete", "nothing", "-n", "demo"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "deleting what is not there fails");
}
