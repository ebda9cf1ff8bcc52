//! L4 authorization end to end in `weft local`: a policy applied denies, a
//! policy deleted allows again, STRICT mTLS refuses a client outside the
//! mesh, and an open connection is cut when a DENY appears.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::{Duration, Instant},
};

use weft_tests::privilege::require_privileged;

mod support;

use support::{Local, ECHO};

/// Sends a line every 100 ms and prints each echo; prints CUT and exits
/// when the connection breaks.
const TALKER: &str = r#"
import socket, time, sys
s = socket.create_connection(("echo.demo", 7000), timeout=5)
f = s.makefile("rwb")
try:
    while True:
        f.write(b"ping\n"); f.flush()
        line = f.readline()
        if not line:
            break
        print(line.decode().strip(), flush=True)
        time.sleep(0.1)
except Exception as e:
    pass
print("CUT", flush=True)
"#;

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn policies_deny_allow_and_cut_open_connections() {
    require_privileged();
    let local = Local::new();
    local.up_examples();
    let echo = local.file("echo.yaml", ECHO);
    local.ok(&["apply", "-f", &echo]);
    assert_eq!(local.curl("demo/client", "http://web.demo/"), "200");

    // An ALLOW that admits only another identity: the client is denied…
    let allow_other = local.file(
        "allow-other.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only-from-nobody, namespace: demo}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/nobody"]}}]}]
"#,
    );
    local.ok(&["apply", "-f", &allow_other]);
    eventually("the client to be denied", || {
        local.curl("demo/client", "http://web.demo/") == "000"
    });
    let n2 = local.ok(&["logs", "ztunnel-n2"]);
    assert!(
        n2.lines().any(|l| l.contains("connection failed")
            && l.contains("policy=demo/web-only-from-nobody")
            && l.contains("no ALLOW policy matched")
            && l.contains("(401)")),
        "the denial is logged with its policy:\n{n2}"
    );
    // …and allowed again once the policy is deleted.
    local.ok(&["delete", "-f", &allow_other]);
    eventually("the client to be allowed", || {
        local.curl("demo/client", "http://web.demo/") == "200"
    });

    // STRICT mTLS in demo: the unenrolled client is refused, the enrolled
    // one is not.
    assert_eq!(local.curl("legacy/outsider", "http://web.demo/"), "200");
    let strict = local.file(
        "strict.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: demo}
spec: {mtls: {mode: STRICT}}
"#,
    );
    local.ok(&["apply", "-f", &strict]);
    eventually("plaintext to be refused", || {
        local.curl("legacy/outsider", "http://web.demo/") == "000"
    });
    assert_eq!(local.curl("demo/client", "http://web.demo/"), "200");
    let n2 = local.ok(&["logs", "ztunnel-n2"]);
    assert!(
        n2.lines().any(|l| l.contains("connection failed")
            && l.contains("policy=istio-system/istio_converted_static_strict")),
        "the STRICT refusal is logged:\n{n2}"
    );
    local.ok(&["delete", "-f", &strict]);

    // A long-lived connection, cut within a second of a DENY appearing.
    let mut talker = local
        .weft()
        .args([
            "local",
            "exec",
            "demo/client",
            "--",
            "python3",
            "-u",
            "-c",
            TALKER,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(talker.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        assert_eq!(
            lines.next().unwrap().unwrap(),
            "ping",
            "the talker is talking"
        );
    }
    let deny = local.file(
        "deny-echo.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-echo-for-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/demo/sa/client"]}}]}]
"#,
    );
    let applied = Instant::now();
    local.ok(&["apply", "-f", &deny]);
    let applied_in = applied.elapsed();
    let cut = lines.by_ref().map_while(Result::ok).find(|l| l == "CUT");
    assert_eq!(cut.as_deref(), Some("CUT"));
    let cut_after = applied.elapsed() - applied_in;
    assert!(
        cut_after < Duration::from_secs(1),
        "cut {cut_after:?} after the policy was applied"
    );
    let _ = talker.wait();
    let n2 = local.ok(&["logs", "ztunnel-n2"]);
    assert!(
        n2.lines().any(|l| l.contains("closed on a policy change")
            && l.contains("denied by policy demo/no-echo-for-client")),
        "the cut is logged with its reason:\n{n2}"
    );
}
