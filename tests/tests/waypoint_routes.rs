//! Gateway API HTTPRoutes, as users write them, enforced by a real
//! waypoint between real pods: matches and their precedence, weighted
//! splits, filters, redirects, rewrites, 404 when nothing matches, invalid
//! backends, consumer routes, port-scoped parents and timeouts.
//!
//! The client is an unmodified `curl` in an enrolled pod; its traffic goes
//! through the waypoint because the namespace says so.

#[macro_use]
mod support;

use std::time::Duration;

use support::shop::{curl, mesh, served_by, BASE};
use weft_tests::{privilege::require_privileged, processes::eventually};

const MATCHES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: matches, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api/v2}}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: Exact, value: /api/exact}}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/api/re/[0-9]+"}}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: x-canary, value: "yes"}]
    - path: {type: PathPrefix, value: /api}
      queryParams: [{name: version, value: "2"}]
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /split}}]
    backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}, {name: web-v2, port: 80, weight: 0}]
  - matches: [{path: {type: PathPrefix, value: /broken}}]
    backendRefs: [{name: nowhere, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /half-broken}}]
    backendRefs: [{name: web-v1, port: 80}, {name: nowhere, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: web-v1, port: 80}]
"#;

const FILTERS: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: filters, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-set, value: set-by-route}]
        add: [{name: x-added, value: added}]
        remove: [x-drop-me]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add: [{name: x-route, value: filters}]
        remove: [x-served-by]
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect:
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
        statusCode: 301
  - matches: [{path: {type: PathPrefix, value: /elsewhere}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: example.com}
  - matches: [{path: {type: PathPrefix, value: /v1-api}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        hostname: rewritten.example
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: Exact, value: /replace-all}}]
    filters:
    - type: URLRewrite
      urlRewrite:
        path: {type: ReplaceFullPath, replaceFullPath: /whole}
    backendRefs: [{name: web-v2, port: 80}]
"#;

const CONSUMER: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: producer, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - backendRefs: [{name: web-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: visitors-see-v2, namespace: other}
spec:
  parentRefs: [{group: "", kind: Service, name: web, namespace: shop}]
  rules:
  - backendRefs: [{name: web-v2, port: 80, namespace: shop}]
---
apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: routes-of-other, namespace: shop}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: other}]
  to: [{group: "", kind: Service}]
"#;

const RETRIES: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: retries, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /retried}}]
    retry: {codes: [503], attempts: 3, backoff: 10ms}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /not-retried}}]
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /per-try}}]
    timeouts: {request: 2s, backendRequest: 200ms}
    backendRefs: [{name: web-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /anywhere}}]
    backendRefs: [{name: web, port: 80}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-dead, namespace: shop, labels: {app: web, version: dead}}
spec: {nodeName: n2, serviceAccountName: web}
status: {podIP: "${shop/web-dead}"}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matches_follow_the_gateway_api_precedence() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, _waypoint) = mesh(MATCHES).await?;
    let client = mesh.topology.pod("shop/client");
    let cases: &[(&[&str], &str)] = &[
        (&["http://198.19.0.10/api/x"], "v1"),
        // The longest prefix wins, by segment.
        (&["http://198.19.0.10/api/v2/x"], "v2"),
        (&["http://198.19.0.10/api/v2x"], "v1"),
        // Exact beats any prefix.
        (&["http://198.19.0.10/api/exact"], "v2"),
        (&["http://198.19.0.10/api/exact/more"], "v1"),
        // A regular expression over the whole path.
        (&["http://198.19.0.10/api/re/42"], "v2"),
        (&["http://198.19.0.10/api/re/4x"], "v1"),
        // A method match beats a bare prefix of the same length.
        (&["-X", "POST", "http://198.19.0.10/api/x"], "v2"),
        // Header and query matches.
        (&["-H", "x-canary: yes", "http://198.19.0.10/api/x"], "v2"),
        (&["-H", "x-canary: no", "http://198.19.0.10/api/x"], "v1"),
        (&["http://198.19.0.10/api/x?version=2"], "v2"),
        (&["http://198.19.0.10/api/x?version=3"], "v1"),
    ];
    for (args, expected) in cases {
        let (status, _, body) = curl(client, args).await?;
        assert_eq!(
            (status, served_by(&body)),
            (200, *expected),
            "{args:?}: {body}"
        );
    }
    // Routes attached to port 80 and nothing matches: 404.
    let (status, _, _) = curl(client, &["http://198.19.0.10/nothing"]).await?;
    assert_eq!(status, 404);
    // Port 8081 has no route: the service itself answers.
    let (status, _, body) = curl(client, &["http://198.19.0.10:8081/nothing"]).await?;
    assert_eq!(status, 200, "{body}");
    // An invalid backend answers 500 — for its share only.
    let (status, _, _) = curl(client, &["http://198.19.0.10/broken"]).await?;
    assert_eq!(status, 500);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..40 {
        let (status, _, _) = curl(client, &["http://198.19.0.10/half-broken"]).await?;
        *statuses.entry(status).or_insert(0) += 1;
    }
    assert!(
        statuses.get(&200).is_some_and(|n| *n > 5) && statuses.get(&500).is_some_and(|n| *n > 5),
        "half the requests 500: {statuses:?}"
    );
    // A request timeout answers 504 in time.
    let started = std::time::Instant::now();
    let (status, _, body) = curl(client, &["http://198.19.0.10/slow/delay/3000"]).await?;
    assert_eq!(status, 504, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let (status, _, _) = curl(client, &["http://198.19.0.10/slow/delay/10"]).await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_holds_over_a_thousand_requests() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, _waypoint) = mesh(MATCHES).await?;
    let client = mesh.topology.pod("shop/client");
    // One curl, a thousand requests on keep-alive (URL globbing).
    let mut cmd = client.command("curl")?;
    cmd.args([
        "-sS",
        "--max-time",
        "60",
        "http://198.19.0.10/split/[1-1000]",
    ]);
    let out = tokio::process::Command::from(cmd).output().await?;
    anyhow::ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v1 = text.matches("v1 saw").count();
    let v2 = text.matches("v2 saw").count();
    println!("split over 1000 requests: v1 {v1}, v2 {v2}");
    assert_eq!(v1 + v2, 1000, "every request answered");
    assert!(
        (870..=930).contains(&v1),
        "90/10 within ±3 points: v1 got {v1}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_change_requests_and_responses_as_written() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, _waypoint) = mesh(FILTERS).await?;
    let client = mesh.topology.pod("shop/client");
    // Header modifiers, both ways.
    let (status, head, body) = curl(
        client,
        &[
            "-H",
            "x-drop-me: 1",
            "-H",
            "x-set: from-client",
            "http://198.19.0.10/headers",
        ],
    )
    .await?;
    assert_eq!(status, 200);
    assert!(body.contains("x-set: set-by-route\n"), "{body}");
    assert!(!body.contains("from-client"), "{body}");
    assert!(body.contains("x-added: added\n"), "{body}");
    assert!(!body.contains("x-drop-me"), "{body}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("x-route: filters"), "{head}");
    assert!(!head.contains("x-served-by"), "{head}");
    // Redirects, with their Location.
    let (status, head, _) = curl(client, &["http://198.19.0.10/old/page?q=1"]).await?;
    assert_eq!(status, 301);
    assert!(
        head.contains("location: http://198.19.0.10/new/page?q=1"),
        "{head}"
    );
    let (status, head, _) = curl(client, &["http://198.19.0.10/elsewhere"]).await?;
    assert_eq!(status, 302);
    assert!(
        head.contains("location: https://example.com/elsewhere"),
        "{head}"
    );
    // Rewrites, as the backend sees them.
    let (_, _, body) = curl(client, &["http://198.19.0.10/v1-api/items?x=1"]).await?;
    assert!(body.ends_with("GET /items?x=1"), "{body}");
    let (_, _, body) = curl(client, &["http://198.19.0.10/v1-api/headers"]).await?;
    assert!(body.contains("host: rewritten.example"), "{body}");
    let (_, _, body) = curl(client, &["http://198.19.0.10/replace-all?k=v"]).await?;
    assert!(
        body.starts_with("v2 saw") && body.ends_with("GET /whole?k=v"),
        "{body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_route_applies_to_its_own_namespace_only() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, _waypoint) = mesh(CONSUMER).await?;
    let (client, visitor) = (
        mesh.topology.pod("shop/client"),
        mesh.topology.pod("other/visitor"),
    );
    for _ in 0..5 {
        let (_, _, body) = curl(client, &["http://198.19.0.10/"]).await?;
        assert_eq!(served_by(&body), "v1", "the producer route: {body}");
        let (_, _, body) = curl(visitor, &["http://198.19.0.10/"]).await?;
        assert_eq!(served_by(&body), "v2", "the visitors' own route: {body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_route_is_refused_by_name_while_the_others_keep_serving() -> anyhow::Result<()>
{
    require_privileged();
    let (mesh, _waypoint) = mesh(MATCHES).await?;
    let client = mesh.topology.pod("shop/client");
    let broken = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: typo, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {type: Prefix, value: /typo}}]
    backendRefs: [{name: web-v2, port: 80}]
"#;
    mesh.update_config(&format!("{BASE}{MATCHES}{broken}"))?;
    eventually(
        "the control service to name the bad route",
        Duration::from_secs(10),
        || async {
            mesh.control
                .process
                .lines_with(&["HTTPRoute shop/typo", "path type \"Prefix\""])
                .into_iter()
                .next()
        },
    )
    .await?;
    let (status, _, body) = curl(client, &["http://198.19.0.10/api/v2/x"]).await?;
    assert_eq!((status, served_by(&body)), (200, "v2"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_turn_failures_into_answers_and_timeouts_bound_each_attempt() -> anyhow::Result<()>
{
    require_privileged();
    let (mesh, waypoint) = mesh(RETRIES).await?;
    mesh.enroll("shop/web-dead", "web").await?;
    let client = mesh.topology.pod("shop/client");
    // A flaky upstream answers 503 twice, then 200: retried, the client
    // sees the 200.
    let (status, _, body) = curl(client, &["http://198.19.0.10/retried/flaky/a"]).await?;
    assert_eq!((status, served_by(&body)), (200, "v1"), "{body}");
    let line = eventually(
        "the retried request's log line",
        Duration::from_secs(5),
        || async {
            waypoint
                .process
                .lines_with(&["request complete", "path=/retried/flaky/a"])
                .into_iter()
                .next()
        },
    )
    .await?;
    assert!(line.contains("attempts=3"), "{line}");
    // Without a retry policy a 503 answer is the answer.
    let (status, _, _) = curl(client, &["http://198.19.0.10/not-retried/flaky/b"]).await?;
    assert_eq!(status, 503);
    // A per-attempt timeout answers 504 long before the overall one.
    let started = std::time::Instant::now();
    let (status, _, _) = curl(client, &["http://198.19.0.10/per-try/delay/1500"]).await?;
    assert_eq!(status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    // An endpoint whose application is gone fails at connect: Istio's
    // default retries another endpoint, so no request fails.
    for i in 0..30 {
        let (status, _, body) =
            curl(client, &[&format!("http://198.19.0.10/anywhere/{i}")]).await?;
        assert_eq!(status, 200, "request {i}: {body}");
    }
    let retried = waypoint
        .process
        .lines_with(&["request complete", "path=/anywhere/"])
        .iter()
        .filter(|l| l.contains("attempts=2"))
        .count();
    assert!(
        retried > 0,
        "some requests met the dead endpoint and were retried"
    );
    Ok(())
}

const ON_THE_WAYPOINT: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: everything, namespace: shop}
spec:
  parentRefs: [{name: waypoint}]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-route, value: waypoint}]}
    backendRefs: [{name: web-v2, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: own, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web-v1}]
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-route, value: own}]}
    backendRefs: [{name: web-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: intruder, namespace: other}
spec:
  parentRefs: [{name: waypoint, namespace: shop}]
  rules:
  - backendRefs: [{name: web-v1, namespace: shop, port: 80}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_on_the_waypoint_serves_every_service_without_its_own() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, _waypoint) = mesh(ON_THE_WAYPOINT).await?;
    let client = mesh.topology.pod("shop/client");
    let x_route = |head: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("x-route: "))
            .map(|v| v.trim().to_owned())
    };
    // web and web-v2 have no routes of their own: the waypoint's applies.
    for url in ["http://198.19.0.10/a", "http://198.19.0.12/b"] {
        for _ in 0..4 {
            let (status, head, body) = curl(client, &[url]).await?;
            assert_eq!((status, served_by(&body)), (200, "v2"), "{url}: {body}");
            assert_eq!(x_route(&head).as_deref(), Some("waypoint"), "{head}");
        }
    }
    // web-v1 has its own route, which wins.
    let (status, head, body) = curl(client, &["http://198.19.0.11/c"]).await?;
    assert_eq!((status, served_by(&body)), (200, "v1"));
    assert_eq!(x_route(&head).as_deref(), Some("own"), "{head}");
    // A route from another namespace is not allowed on the waypoint.
    eventually("the refusal", Duration::from_secs(10), || async {
        mesh.control
            .process
            .lines_with(&[
                "HTTPRoute other/intruder",
                "takes routes from namespace shop only",
            ])
            .into_iter()
            .next()
    })
    .await?;
    Ok(())
}
