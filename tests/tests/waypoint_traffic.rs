//! Istio's traffic settings at a real waypoint: a VirtualService's faults
//! (aborts and delays, for their share of matching requests) and a
//! DestinationRule's traffic policy (least-request balancing, a cap on
//! requests in flight, outlier ejection within its share of endpoints).

#[macro_use]
mod support;

use std::time::{Duration, Instant};

use anyhow::Context;
use support::shop::{curl, mesh, served_by, BASE};
use weft_tests::{privilege::require_privileged, processes::eventually, topology::Pod};

const FAULTS: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: faults, namespace: shop}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 30}}}
  - match: [{uri: {prefix: /slow}, headers: {x-delay: {exact: "yes"}}}]
    fault: {delay: {fixedDelay: 700ms}}
  - match: [{uri: {exact: /always}}]
    fault: {abort: {httpStatus: 503}}
  - route: [{destination: {host: web}}]
"#;

const TRAFFIC_POLICY: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: shop}
spec:
  host: web.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 4s, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-v1, namespace: shop}
spec:
  host: web-v1
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 1}}
"#;

/// The status of each of the requests one `curl` makes to `url` (with URL
/// globbing, on one keep-alive connection).
async fn statuses(pod: &Pod, url: &str) -> anyhow::Result<Vec<u16>> {
    let mut cmd = pod.command("curl")?;
    cmd.args([
        "-sS",
        "--max-time",
        "60",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}\n",
        url,
    ]);
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .context("running curl")?;
    anyhow::ensure!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().with_context(|| format!("status {l:?}")))
        .collect()
}

/// Who answered each of the requests one `curl` makes to `url`.
async fn answered_by(pod: &Pod, url: &str) -> anyhow::Result<Vec<String>> {
    let mut cmd = pod.command("curl")?;
    cmd.args(["-sS", "--max-time", "60", "-w", "\n", url]);
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .context("running curl")?;
    anyhow::ensure!(out.status.success(), "curl {url}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| served_by(l).to_owned())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_abort_and_delay_their_share_of_matching_requests() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh(FAULTS).await?;
    let client = mesh.topology.pod("shop/client");
    // 30 % of /abort requests are answered 418 by the waypoint.
    let got = statuses(client, "http://198.19.0.10/abort/[1-300]").await?;
    let aborted = got.iter().filter(|s| **s == 418).count();
    let served = got.iter().filter(|s| **s == 200).count();
    println!("abort share over 300 requests: {aborted} aborted, {served} served");
    assert_eq!(aborted + served, 300, "{got:?}");
    assert!(
        (55..=125).contains(&aborted),
        "30 % aborted, within ±4 standard deviations: {aborted}"
    );
    // Every /always request is aborted, with Envoy's body and flag.
    let (status, _, body) = curl(client, &["http://198.19.0.10/always"]).await?;
    assert_eq!((status, body.as_str()), (503, "fault filter abort"));
    eventually("the abort's log line", Duration::from_secs(5), || async {
        waypoint
            .process
            .lines_with(&["request complete", "path=/always", "response_flags=FI"])
            .into_iter()
            .next()
    })
    .await?;
    // The match is the VirtualService's: exact, so /always/else passes.
    let (status, _, _) = curl(client, &["http://198.19.0.10/always/else"]).await?;
    assert_eq!(status, 200);
    // A delay holds matching requests (the header too must match) and
    // then sends them on.
    let started = Instant::now();
    let (status, _, body) =
        curl(client, &["-H", "x-delay: yes", "http://198.19.0.10/slow/1"]).await?;
    assert_eq!(status, 200, "{body}");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    let (status, _, _) = curl(client, &["-H", "x-delay: no", "http://198.19.0.10/slow/2"]).await?;
    assert_eq!(status, 200);
    let delayed = |path: &'static str| {
        let waypoint = &waypoint;
        async move {
            eventually(
                "the delayed request's line",
                Duration::from_secs(5),
                || async {
                    waypoint
                        .process
                        .lines_with(&["request complete", &format!("path={path} ")])
                        .into_iter()
                        .next()
                },
            )
            .await
        }
    };
    assert!(delayed("/slow/1").await?.contains("response_flags=DI"));
    assert!(delayed("/slow/2").await?.contains("response_flags=-"));
    // The VirtualService's routing is not Weft's: the control service says
    // so, and names it.
    assert!(
        !mesh
            .control
            .process
            .lines_with(&[
                "VirtualService shop/faults",
                "spec.http[3].route",
                "not applied"
            ])
            .is_empty(),
        "the unapplied route is reported"
    );
    // A malformed VirtualService is refused by name; the faults in force
    // stay.
    let broken = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: typo, namespace: shop}
spec:
  hosts: [web]
  http: [{fault: {abort: {httpStatus: 503, percentage: {value: 250}}}}]
"#;
    mesh.update_config(&format!("{BASE}{FAULTS}{broken}"))?;
    eventually(
        "the bad VirtualService named",
        Duration::from_secs(10),
        || async {
            mesh.control
                .process
                .lines_with(&["VirtualService shop/typo", "250"])
                .into_iter()
                .next()
        },
    )
    .await?;
    let (status, _, _) = curl(client, &["http://198.19.0.10/always"]).await?;
    assert_eq!(status, 503);
    let (status, _, _) = curl(client, &["http://198.19.0.10/else"]).await?;
    assert_eq!(status, 200, "the broken VirtualService aborts nothing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_rules_balance_cap_and_eject() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh(TRAFFIC_POLICY).await?;
    let client = mesh.topology.pod("shop/client");
    // One request held at v1 fills web-v1's cap of one in flight. (A
    // probe that takes the place first makes the held request the one
    // refused: it is sent again.)
    let spawn_hold = || -> anyhow::Result<_> {
        let mut cmd = client.command("curl")?;
        cmd.args([
            "-sS",
            "--max-time",
            "30",
            "http://198.19.0.11/hold/delay/6000",
        ]);
        Ok(tokio::spawn(
            tokio::process::Command::from(cmd)
                .kill_on_drop(true)
                .output(),
        ))
    };
    let mut hold = spawn_hold()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if hold.is_finished() {
            hold = spawn_hold()?;
            continue;
        }
        let (status, _, _) = curl(client, &["http://198.19.0.11/over"]).await?;
        if status == 503 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "web-v1's cap never filled");
    }
    let overflow =
        waypoint
            .process
            .lines_with(&["request complete", "path=/over", "response_flags=UO"]);
    assert!(!overflow.is_empty(), "the overflow is logged as UO");
    // With v1 busy, least-request balancing favours v2: the power of two
    // choices sends it three requests in four (round robin: one in two).
    let by = answered_by(client, "http://198.19.0.10/spread/[1-100]").await?;
    let v2 = by.iter().filter(|b| *b == "v2").count();
    println!("least request with v1 busy, 100 requests: v2 answered {v2}");
    assert_eq!(by.len(), 100);
    assert!(v2 >= 60, "v2 favoured: {v2} of 100");
    // The held request is answered, and the cap has room again.
    let held = hold.await??;
    assert!(
        String::from_utf8_lossy(&held.stdout).starts_with("v1 saw"),
        "{}",
        String::from_utf8_lossy(&held.stderr)
    );
    let (status, _, _) = curl(client, &["http://198.19.0.11/again"]).await?;
    assert_eq!(status, 200);
    // v1 answers 500 to /fail-on/v1: two in a row eject it for 4 s, and
    // every later request goes to v2.
    let got = statuses(client, "http://198.19.0.10/fail-on/v1/[1-30]").await?;
    let ejected_at = Instant::now();
    println!("outlier detection, 30 requests: {got:?}");
    assert_eq!(got.iter().filter(|s| **s == 500).count(), 2, "{got:?}");
    assert!(got[20..].iter().all(|s| *s == 200), "{got:?}");
    assert!(!waypoint
        .process
        .lines_with(&["endpoint ejected (outlier detection)"])
        .is_empty());
    // At most half the endpoints are ejected: v2 failing too stays in
    // service (and answers its 500s) rather than leaving web with none.
    let by = answered_by(client, "http://198.19.0.10/fail-on/v2/[1-10]").await?;
    assert_eq!(by, vec!["v2"; 10]);
    let got = statuses(client, "http://198.19.0.10/fail-on/v2/[1-4]").await?;
    assert_eq!(got, [500; 4]);
    anyhow::ensure!(
        ejected_at.elapsed() < Duration::from_secs(3),
        "too slow to see the ejection in force; the check above proves nothing"
    );
    // Its ejection over, v1 is sent requests again.
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(ejected_at.elapsed())).await;
    let by = answered_by(client, "http://198.19.0.10/back/[1-20]").await?;
    assert!(by.iter().any(|b| b == "v1"), "v1 back in service: {by:?}");
    Ok(())
}
