//! Observability of a `weft local` mesh: a real Prometheus (Debian's)
//! scrapes every ztunnel and PromQL reports exactly the bytes sent between
//! two named workloads; `/config_dump` and `weft ztunnel-config` agree with
//! the YAML applied; `weft status` summarises the mesh.

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use weft_tests::{privilege::require_privileged, processes::http_get, topology::NetNs};

mod support;

use support::{Local, ECHO};

/// Sends exactly N bytes (in lines) to echo.demo and reads them back.
const SEND: &str = r#"
import socket, sys
n = int(sys.argv[1])
s = socket.create_connection(("echo.demo", 7000), timeout=10)
line = b"x" * 99 + b"\n"
s.sendall(line * (n // 100))
got = 0
while got < n:
    data = s.recv(65536)
    if not data:
        break
    got += len(data)
s.close()
print(got)
"#;

/// Runs PromQL `query` against the Prometheus in `netns`; the scalar value.
async fn query(netns: &str, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = http_get(
        Some(netns),
        SocketAddr::from(([198, 19, 255, 254], 9090)),
        &format!("/api/v1/query?query={encoded}"),
    )
    .await
    .ok()?;
    if status != 200 {
        return None;
    }
    let json: Value = serde_json::from_str(&body).ok()?;
    json["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_the_bytes_between_two_workloads() {
    require_privileged();
    let local = Local::new();
    local.up_examples();
    let echo = local.file("echo.yaml", ECHO);
    local.ok(&["apply", "-f", &echo]);
    let layout: Value = serde_json::from_str(&local.ok(&["status", "-o", "json"])).unwrap();
    let control_netns = layout["control"]["netns"].as_str().unwrap().to_owned();
    let targets: Vec<String> = layout["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| format!("'{}:15020'", n["ip"].as_str().unwrap()))
        .collect();

    // A real Prometheus in the control-plane namespace, scraping every
    // ztunnel over the fabric each second.
    let config = local.file(
        "prometheus.yml",
        &format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: ztunnel\n  static_configs:\n  - targets: [{}]\n",
            targets.join(", ")
        ),
    );
    let data = local.dir.path().join("prometheus-data");
    let mut prometheus =
        tokio::process::Command::from(NetNs::open(&control_netns).unwrap().command("prometheus"));
    prometheus
        .arg(format!("--config.file={config}"))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg("--web.listen-address=198.19.255.254:9090")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let _prometheus = prometheus
        .spawn()
        .expect("starting prometheus (cargo xtask setup installs it)");

    let n = 25_000;
    let out = local
        .weft()
        .args([
            "local",
            "exec",
            "demo/client",
            "--",
            "python3",
            "-c",
            SEND,
            &n.to_string(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        n.to_string(),
        "the echo came back whole"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    for (reporter, family) in [
        ("destination", "istio_tcp_received_bytes_total"),
        ("destination", "istio_tcp_sent_bytes_total"),
        ("source", "istio_tcp_received_bytes_total"),
        ("source", "istio_tcp_sent_bytes_total"),
    ] {
        // Both ends name the service the client addressed: the source
        // from its own lookup, the destination from the CONNECT's
        // `forwarded` host.
        let promql = format!(
            "sum({family}{{reporter=\"{reporter}\",source_workload=\"client\",destination_workload=\"echo\",\
             destination_service=\"echo.demo.svc.cluster.local\",connection_security_policy=\"mutual_tls\"}})"
        );
        loop {
            let value = query(&control_netns, &promql).await;
            if value == Some(f64::from(n)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} = {value:?}, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let opened = query(
        &control_netns,
        "sum(istio_tcp_connections_closed_total{reporter=\"destination\",source_workload=\"client\",destination_workload=\"echo\"})",
    )
    .await;
    assert_eq!(opened, Some(1.0), "one connection, opened and closed");
    let connected = query(&control_netns, "min(weft_ztunnel_xds_connected)").await;
    assert_eq!(connected, Some(1.0));
}

#[test]
fn config_dump_and_ztunnel_config_agree_with_the_yaml() {
    require_privileged();
    let local = Local::new();
    local.up_examples();
    let policy = local.file(
        "policy.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-readers, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{from: [{source: {namespaces: ["demo"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: watch-all, namespace: demo}
spec: {action: AUDIT, rules: [{}]}
"#,
    );
    local.ok(&["apply", "-f", &policy]);
    let layout: Value = serde_json::from_str(&local.ok(&["status", "-o", "json"])).unwrap();
    let ip_of = |pod: &str| {
        layout["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == pod)
            .map(|p| p["ip"].as_str().unwrap().to_owned())
            .unwrap()
    };

    let workloads: Value =
        serde_json::from_str(&local.top(&["ztunnel-config", "workloads", "-o", "json"])).unwrap();
    let find = |name: &str| {
        workloads
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .cloned()
            .unwrap()
    };
    let web = find("web");
    assert_eq!(web["ips"][0], ip_of("demo/web"));
    assert_eq!(web["identity"], "spiffe://cluster.local/ns/demo/sa/web");
    assert_eq!(web["node"], "n2");
    assert_eq!(web["protocol"], "Hbone");
    assert_eq!(
        web["authorization_policies"],
        serde_json::json!(["demo/web-readers"])
    );
    assert_eq!(
        find("outsider")["protocol"],
        "None",
        "legacy is outside the mesh"
    );

    let table = local.top(&["ztunnel-config", "workloads"]);
    assert!(table.starts_with("NAMESPACE  POD NAME  ADDRESS"), "{table}");
    assert!(
        table.lines().any(|l| l.split_whitespace().eq([
            "demo",
            "web",
            &ip_of("demo/web"),
            "n2",
            "None",
            "HBONE"
        ])),
        "{table}"
    );

    let services = local.top(&["ztunnel-config", "services"]);
    assert!(
        services
            .lines()
            .any(|l| l.starts_with("demo") && l.contains("web") && l.trim_end().ends_with('1')),
        "{services}"
    );
    let policies = local.top(&["ztunnel-config", "policies", "-o", "yaml"]);
    let policies: Value = serde_yaml::from_str(&policies).unwrap();
    let names: Vec<&str> = policies
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["watch-all", "web-readers"]);
    let table = local.top(&["ztunnel-config", "policies"]);
    assert!(
        table.lines().any(|l| l
            .split_whitespace()
            .eq(["demo", "watch-all", "Audit", "Namespace"])),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.split_whitespace().eq([
            "demo",
            "web-readers",
            "Allow",
            "WorkloadSelector"
        ])),
        "{table}"
    );

    let certificates = local.top(&["ztunnel-config", "certificates"]);
    for identity in [
        "spiffe://cluster.local/ns/demo/sa/client",
        "spiffe://cluster.local/ns/demo/sa/web",
    ] {
        assert!(
            certificates
                .lines()
                .any(|l| l.starts_with(identity) && l.contains("Available")),
            "{certificates}"
        );
    }
    let n1_only = local.top(&["ztunnel-config", "certificates", "--node", "n1"]);
    assert!(
        !n1_only.contains("sa/web"),
        "web's certificate lives on n2:\n{n1_only}"
    );

    let status = local.top(&["status"]);
    assert!(
        status.contains("reachable") && status.contains("namespaces in the mesh: demo"),
        "{status}"
    );
    assert!(
        status
            .lines()
            .filter(|l| l.contains("connected") && l.contains("ebpf"))
            .count()
            == 2,
        "{status}"
    );
}
