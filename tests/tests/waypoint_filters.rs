//! HTTPRoute filters that act beside the request: `RequestMirror` (a
//! copy to another service, its answer dropped) and `CORS` (preflights
//! answered at the waypoint, allowed origins told so on the response).

#[macro_use]
mod support;

use std::time::Duration;

use support::shop::{curl, mesh, served_by};
use weft_tests::{apps::spawn_recorder, privilege::require_privileged, processes::eventually};

const MIRRORED: &str = r#"
---
apiVersion: v1
kind: Pod
metadata: {name: web-dead, namespace: shop, labels: {app: sink}}
spec: {nodeName: n2, serviceAccountName: web}
status: {podIP: "${shop/web-dead}"}
---
apiVersion: v1
kind: Service
metadata: {name: sink, namespace: shop}
spec:
  clusterIP: 198.19.0.15
  selector: {app: sink}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /mirrored}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: sink, port: 80}}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /half}}]
    filters:
    - type: RequestMirror
      requestMirror:
        backendRef: {name: sink, port: 80}
        fraction: {numerator: 1, denominator: 2}
    backendRefs: [{name: web, port: 80}]
  - backendRefs: [{name: web, port: 80}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_requests_reach_the_mirror_and_never_the_client() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, _waypoint) = mesh(MIRRORED).await?;
    mesh.enroll("shop/web-dead", "web").await?;
    let sink = mesh.topology.pod("shop/web-dead");
    let listener = sink.enter(|| std::net::TcpListener::bind((sink.ip(), 8080)))??;
    let (recorded, _served) = spawn_recorder(listener)?;
    let client = mesh.topology.pod("shop/client");

    // Every request is answered by the route's backend, and a copy, body
    // and all, with the `-shadow` host, reaches the mirror.
    for i in 0..10 {
        let body = format!("copy-{i}");
        let (status, _, answer) =
            curl(client, &["-d", &body, "http://198.19.0.10/mirrored/x"]).await?;
        assert_eq!(status, 200, "{answer}");
        assert!(matches!(served_by(&answer), "v1" | "v2"), "{answer}");
        assert!(
            !answer.contains("recorded"),
            "the mirror's answer is dropped"
        );
    }
    let copies = eventually("ten copies", Duration::from_secs(10), || async {
        let lines = recorded.lock().unwrap().clone();
        (lines.len() >= 10).then_some(lines)
    })
    .await?;
    for i in 0..10 {
        let expected = format!("POST /mirrored/x host=198.19.0.10-shadow body=copy-{i}");
        assert!(copies.contains(&expected), "{expected} in {copies:#?}");
    }

    // A fraction of 1/2 mirrors about half.
    recorded.lock().unwrap().clear();
    for _ in 0..200 {
        let (status, _, _) = curl(client, &["http://198.19.0.10/half"]).await?;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let halves = recorded.lock().unwrap().len();
    assert!(
        (70..=130).contains(&halves),
        "about 100 of 200 mirrored: {halves}"
    );

    // A body too large to copy goes to the backend whole, and not to the
    // mirror; unrouted paths are not mirrored.
    recorded.lock().unwrap().clear();
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), "y".repeat(100_000))?;
    let data = format!("@{}", file.path().display());
    let (status, _, answer) = curl(
        client,
        &["--data-binary", &data, "http://198.19.0.10/mirrored/big"],
    )
    .await?;
    assert_eq!(status, 200);
    assert!(answer.ends_with("(100000 bytes)"), "{answer}");
    let (status, _, _) = curl(client, &["http://198.19.0.10/other"]).await?;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(*recorded.lock().unwrap(), Vec::<String>::new());
    Ok(())
}

const CORS: &str = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://*.example.com", "https://shop.test"]
        allowCredentials: true
        allowMethods: [GET, POST]
        allowHeaders: [x-token]
        exposeHeaders: [x-served-by]
        maxAge: 600
    backendRefs: [{name: web, port: 80}]
"#;

/// The value of header `name` in a response head, lower-cased.
fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_for_allowed_origins_only() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh(CORS).await?;
    let client = mesh.topology.pod("shop/client");
    let preflight = |origin: &'static str| {
        vec![
            "-X",
            "OPTIONS",
            "-H",
            origin,
            "-H",
            "Access-Control-Request-Method: POST",
            "-H",
            "Access-Control-Request-Headers: x-token",
            "http://198.19.0.10/api/items",
        ]
    };

    // An allowed origin's preflight is answered by the waypoint.
    let (status, head, body) = curl(client, &preflight("Origin: https://a.example.com")).await?;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, "", "answered, not forwarded");
    for (name, value) in [
        ("access-control-allow-origin", "https://a.example.com"),
        ("access-control-allow-methods", "GET, POST"),
        ("access-control-allow-headers", "x-token"),
        ("access-control-max-age", "600"),
        ("access-control-allow-credentials", "true"),
        ("vary", "Origin"),
    ] {
        assert_eq!(
            header_value(&head, name).as_deref(),
            Some(value),
            "{name}: {head}"
        );
    }
    let line = eventually(
        "the preflight's log line",
        Duration::from_secs(5),
        || async {
            waypoint
                .process
                .lines_with(&["request complete", "method=OPTIONS", "path=/api/items"])
                .into_iter()
                .next()
        },
    )
    .await?;
    assert!(
        line.contains("upstream_host=-"),
        "never sent upstream: {line}"
    );

    // The allowed origin's request is forwarded and its answer says so.
    let (status, head, body) = curl(
        client,
        &[
            "-H",
            "Origin: https://shop.test",
            "http://198.19.0.10/api/items",
        ],
    )
    .await?;
    assert_eq!(status, 200);
    assert!(matches!(served_by(&body), "v1" | "v2"), "{body}");
    assert_eq!(
        header_value(&head, "access-control-allow-origin").as_deref(),
        Some("https://shop.test")
    );
    assert_eq!(
        header_value(&head, "access-control-expose-headers").as_deref(),
        Some("x-served-by")
    );

    // Another origin gets nothing: its preflight goes to the backend like
    // any request, and no answer carries CORS headers.
    for args in [
        preflight("Origin: https://evil.test"),
        vec![
            "-H",
            "Origin: https://example.com",
            "http://198.19.0.10/api/items",
        ],
    ] {
        let (status, head, body) = curl(client, &args).await?;
        assert_eq!(status, 200);
        assert!(matches!(served_by(&body), "v1" | "v2"), "{body}");
        assert!(
            !head.to_ascii_lowercase().contains("access-control-"),
            "{head}"
        );
    }
    Ok(())
}
