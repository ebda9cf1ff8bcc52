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
