//! `weft local` as a user runs it: up from the example directory, requests
//! by service name through the mesh, apply and delete, status, down.

use std::path::Path;

use weft_tests::{privilege::require_privileged, topology::leftovers};

mod support;

use support::Local;

#[test]
fn a_local_mesh_from_up_to_down() {
    require_privileged();
    let local = Local::new();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/local");
    let summary = local.ok(&["up", "-f", examples.to_str().unwrap()]);
    assert!(
        summary.contains("n1") && summary.contains("ready"),
        "{summary}"
    );
    assert!(summary.contains("web.demo.svc.cluster.local"), "{summary}");

    // By name, through the mesh: the service VIP from the pod's hosts file.
    let hosts = local.ok(&["exec", "demo/client", "--", "cat", "/etc/hosts"]);
    assert!(
        hosts.contains("web.demo.svc.cluster.local\tweb.demo\tweb"),
        "{hosts}"
    );
    for url in [
        "http://web.demo.svc.cluster.local/",
        "http://web.demo/",
        "http://web/",
    ] {
        let code = local.ok(&[
            "exec",
            "demo/client",
            "--",
            "curl",
            "-s",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ]);
        assert_eq!(code, "200", "{url}");
    }
    // The server saw the client pod's own address.
    let web_log = local.ok(&["logs", "demo/web"]);
    assert!(web_log.contains("198.18.1.2 - -"), "{web_log}");
    let n1 = local.ok(&["logs", "ztunnel-n1"]);
    assert!(
        n1.lines().any(|l| l.contains("connection complete")
            && l.contains("dst.service=demo/web.demo.svc.cluster.local")
            && l.contains("dst.identity=spiffe://cluster.local/ns/demo/sa/web")),
        "no outbound HBONE access log on n1:\n{n1}"
    );

    // Unenrolled → enrolled, plaintext: still served.
    let code = local.ok(&[
        "exec",
        "legacy/outsider",
        "--",
        "curl",
        "-s",
        "-m",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://web.demo/",
    ]);
    assert_eq!(code, "200");

    // Apply a new pod and service; every pod resolves the new name.
    let extra = local.dir.path().join("extra.yaml");
    std::fs::write(
        &extra,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: extra, namespace: demo, labels: {app: extra}}
spec:
  nodeName: n2
  serviceAccountName: extra
  containers:
  - name: http
    command: ["python3", "-m", "http.server", "9000", "--bind", "0.0.0.0", "--directory", "/usr/share/doc/curl"]
    ports: [{containerPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: extra, namespace: demo}
spec:
  selector: {app: extra}
  ports: [{port: 80, targetPort: 9000}]
"#,
    )
    .unwrap();
    let applied = local.ok(&["apply", "-f", extra.to_str().unwrap()]);
    assert!(applied.contains("pod/demo/extra created"), "{applied}");
    let code = local.ok(&[
        "exec",
        "demo/client",
        "--",
        "curl",
        "-s",
        "-m",
        "10",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://extra.demo/",
    ]);
    assert_eq!(code, "200");
    let status = local.ok(&["status"]);
    assert!(
        status.contains("demo/extra") && status.contains("extra.demo.svc.cluster.local"),
        "{status}"
    );

    // Like kubectl apply: a rejected document fails the command, and the
    // valid ones beside it are applied.
    let mixed = local.file(
        "mixed.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: demo}
spec: {action: PERMIT}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-extra, namespace: demo}
spec:
  action: AUDIT
  selector: {matchLabels: {app: extra}}
  rules: [{}]
"#,
    );
    let (ok, _, err) = local.run(&["apply", "-f", &mixed]);
    assert!(!ok, "a rejected document fails apply: {err}");
    assert!(
        err.contains("AuthorizationPolicy demo/broken") && err.contains("1 document(s)"),
        "{err}"
    );
    let policies = local.top(&["ztunnel-config", "policies"]);
    assert!(
        policies.contains("audit-extra"),
        "the valid one is applied: {policies}"
    );
    local.ok(&["delete", "-f", &mixed]);

    // Delete it again: gone from the mesh and from every hosts file.
    local.ok(&["delete", "-f", extra.to_str().unwrap()]);
    let status = local.ok(&["status"]);
    assert!(!status.contains("demo/extra"), "{status}");
    let hosts = local.ok(&["exec", "demo/client", "--", "cat", "/etc/hosts"]);
    assert!(!hosts.contains("extra"), "{hosts}");

    // A second `up` is refused while one runs.
    let (ok, _, stderr) = local.run(&["up", "-f", examples.to_str().unwrap()]);
    assert!(!ok && stderr.contains("already running"), "{stderr}");

    // This mesh's names (other tests run meshes of their own meanwhile).
    let layout: serde_json::Value =
        serde_json::from_str(&local.ok(&["status", "-o", "json"])).unwrap();
    let stem = layout["control"]["netns"]
        .as_str()
        .unwrap()
        .trim_end_matches("-control")
        .to_owned();
    let down = local.ok(&["down"]);
    assert!(down.contains("nothing left behind"), "{down}");
    let left: Vec<String> = leftovers()
        .into_iter()
        .filter(|l| l.contains(&stem))
        .collect();
    assert!(left.is_empty(), "down left {left:?}");
    assert!(!local.dir.path().join("state.json").exists());
}
