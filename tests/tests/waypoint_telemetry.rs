//! The waypoint's request metrics, read as dashboards read them: through
//! Debian's real Prometheus scraping the waypoint's `/stats/prometheus`.
//! Istio's families and labels, `reporter="waypoint"`, the source from the
//! HBONE peer, the destination from the endpoint that answered. And
//! traces: `traceparent` continued with the waypoint's own span, which an
//! OTLP collector receives.

#[macro_use]
mod support;

use std::{net::SocketAddr, time::Duration};

use support::shop::{curl, mesh, shop, waypoint_bin};
use weft_tests::{
    otlp::spawn_collector, privilege::require_privileged, processes::eventually,
    prometheus::Prometheus,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_sees_each_request_through_the_waypoint() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh("").await?;
    let client = mesh.topology.pod("shop/client");
    for _ in 0..10 {
        let (status, _, _) = curl(client, &["http://198.19.0.10/"]).await?;
        assert_eq!(status, 200);
    }
    for _ in 0..4 {
        let (status, _, _) = curl(client, &["http://198.19.0.10/status/503"]).await?;
        assert_eq!(status, 503);
    }
    let body = "x".repeat(1000);
    let (status, _, _) = curl(client, &["-d", &body, "http://198.19.0.10/upload"]).await?;
    assert_eq!(status, 200);

    let target = SocketAddr::from(([127, 0, 0, 1], waypoint.metrics.port()));
    let prometheus =
        Prometheus::start(Some(&waypoint.netns), &[target], "/stats/prometheus").await?;
    let within = Duration::from_secs(30);

    // Every request counted once, by status, with Istio's labels.
    let by_code = prometheus
        .wait_for(
            "sum by (response_code) (istio_requests_total{reporter=\"waypoint\",\
             source_workload=\"client\",source_workload_namespace=\"shop\",\
             source_principal=\"spiffe://cluster.local/ns/shop/sa/client\",\
             destination_service=\"web.shop.svc.cluster.local\",\
             destination_service_name=\"web\",destination_service_namespace=\"shop\",\
             destination_principal=\"spiffe://cluster.local/ns/shop/sa/web\",\
             request_protocol=\"http\",connection_security_policy=\"mutual_tls\"})",
            within,
            |s| s.len() == 2,
        )
        .await?;
    let count = |code: &str| {
        by_code
            .iter()
            .find(|s| s.label("response_code") == code)
            .map(|s| s.value)
    };
    assert_eq!(count("200"), Some(11.0), "{by_code:#?}");
    assert_eq!(count("503"), Some(4.0), "{by_code:#?}");

    // The destination is the endpoint that answered: both versions.
    let by_workload = prometheus
        .query("sum by (destination_workload) (istio_requests_total{reporter=\"waypoint\"})")
        .await?;
    let workloads: std::collections::BTreeSet<&str> = by_workload
        .iter()
        .map(|s| s.label("destination_workload"))
        .collect();
    assert_eq!(
        workloads,
        ["web-v1", "web-v2"].into(),
        "round robin reached both: {by_workload:#?}"
    );
    assert_eq!(
        by_workload.iter().map(|s| s.value).sum::<f64>(),
        15.0,
        "{by_workload:#?}"
    );

    // Durations: one observation per request, in Envoy's buckets.
    let durations = prometheus
        .query("sum(istio_request_duration_milliseconds_count{reporter=\"waypoint\"})")
        .await?;
    assert_eq!(durations.first().map(|s| s.value), Some(15.0));
    let buckets = prometheus
        .query("count by (le) (istio_request_duration_milliseconds_bucket{reporter=\"waypoint\"})")
        .await?;
    let mut bounds: Vec<f64> = buckets
        .iter()
        .map(|s| s.label("le"))
        .filter(|le| *le != "+Inf")
        .map(|le| le.parse().expect("a number"))
        .collect();
    bounds.sort_by(f64::total_cmp);
    assert_eq!(
        bounds,
        [
            0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
            30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0
        ]
    );

    // Body sizes: the 1000-byte upload, and nothing else sent a body.
    let sent = prometheus
        .query("sum(istio_request_bytes_sum{reporter=\"waypoint\"})")
        .await?;
    assert_eq!(sent.first().map(|s| s.value), Some(1000.0), "{sent:#?}");
    let large = prometheus
        .query("sum(istio_request_bytes_bucket{reporter=\"waypoint\",le=~\"100(\\\\.0)?\"})")
        .await?;
    assert_eq!(
        large.first().map(|s| s.value),
        Some(14.0),
        "14 requests had bodies of at most 100 bytes: {large:#?}"
    );
    let answered = prometheus
        .query("sum(istio_response_bytes_sum{reporter=\"waypoint\",response_code=\"200\"})")
        .await?;
    assert!(
        answered.first().map(|s| s.value).unwrap_or_default() > 0.0,
        "response bodies counted: {answered:#?}"
    );

    // The endpoints' ztunnel names the service the client addressed, from
    // the waypoint's `forwarded`, and the waypoint as its peer.
    let text = mesh.ztunnel("n2").metrics_text().await?;
    let opened: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .filter(|l| l.contains("reporter=\"destination\""))
        .filter(|l| l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/waypoint\""))
        .collect();
    assert!(!opened.is_empty(), "{text}");
    // Fifteen requests from fifteen client connections, carried onward on
    // kept connections: a few, not one per request.
    let upstream_connections: f64 = opened
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        (1.0..=4.0).contains(&upstream_connections),
        "{upstream_connections} connections onward for 15 requests: {opened:#?}"
    );
    for line in opened {
        assert!(
            line.contains("destination_service=\"web.shop.svc.cluster.local\""),
            "{line}"
        );
    }
    Ok(())
}

/// The header `name` in a `/headers` answer.
fn header<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traces_are_continued_and_each_request_is_a_span() -> anyhow::Result<()> {
    require_privileged();
    let mesh = shop("").await?;
    // The collector listens in the waypoint's pod, as a node-local agent
    // would; the waypoint sends it every sampled request's span.
    let pod = mesh.topology.pod("shop/waypoint-0");
    let listener = pod.enter(|| std::net::TcpListener::bind("127.0.0.1:4317"))??;
    let (collector, _served) = spawn_collector(listener)?;
    let _waypoint = mesh
        .start_waypoint_with(
            "shop/waypoint-0",
            "waypoint",
            waypoint_bin(),
            &[
                "--otlp-endpoint",
                "http://127.0.0.1:4317",
                "--trace-sampling",
                "100",
            ],
        )
        .await?;
    let client = mesh.topology.pod("shop/client");
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    // A caller's sampled trace: the backend sees the same trace with the
    // waypoint's span as its parent, and tracestate as sent.
    let (status, _, body) = curl(
        client,
        &[
            "-H",
            &format!("traceparent: 00-{TRACE}-{PARENT}-01"),
            "-H",
            "tracestate: vendor=opaque",
            "http://198.19.0.10/headers",
        ],
    )
    .await?;
    assert_eq!(status, 200);
    let seen = header(&body, "traceparent").unwrap_or_default().to_owned();
    let parts: Vec<&str> = seen.split('-').collect();
    assert_eq!(parts.len(), 4, "{body}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE, "01"),
        "{seen}"
    );
    let waypoint_span = parts[2].to_owned();
    assert_ne!(
        waypoint_span, PARENT,
        "the waypoint's own span is the parent"
    );
    assert_eq!(header(&body, "tracestate"), Some("vendor=opaque"));

    // A request without a trace starts one (sampling 100%).
    let (_, _, body) = curl(client, &["http://198.19.0.10/headers"]).await?;
    let started = header(&body, "traceparent").unwrap_or_default().to_owned();
    assert!(
        started.starts_with("00-") && started.ends_with("-01"),
        "{body}"
    );
    let started_trace = started.split('-').nth(1).unwrap_or_default().to_owned();

    // An unsampled trace is carried on, and never exported.
    const QUIET: &str = "11111111111111111111111111111111";
    let (_, _, body) = curl(
        client,
        &[
            "-H",
            &format!("traceparent: 00-{QUIET}-{PARENT}-00"),
            "http://198.19.0.10/status/404",
        ],
    )
    .await?;
    assert!(body.contains("answered 404"), "{body}");

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let spans = eventually(
        "both spans at the collector",
        Duration::from_secs(10),
        || {
            let spans = collector.spans();
            async move { (spans.len() >= 2).then_some(spans) }
        },
    )
    .await?;
    let continued = spans
        .iter()
        .find(|s| hex(&s.span.trace_id) == TRACE)
        .unwrap_or_else(|| panic!("the caller's trace: {spans:#?}"));
    assert_eq!(hex(&continued.span.parent_span_id), PARENT);
    assert_eq!(hex(&continued.span.span_id), waypoint_span);
    assert_eq!(continued.span.trace_state, "vendor=opaque");
    assert_eq!(continued.span.name, "web.shop.svc.cluster.local:80/*");
    assert_eq!(continued.span.kind, 2, "a server span");
    assert_eq!(continued.service, "waypoint.shop");
    assert_eq!(continued.attribute("http.method").as_deref(), Some("GET"));
    assert_eq!(
        continued.attribute("http.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        continued.attribute("downstream_principal").as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/client")
    );
    assert!(
        continued.span.end_time_unix_nano >= continued.span.start_time_unix_nano
            && continued.span.start_time_unix_nano > 0
    );
    let root = spans
        .iter()
        .find(|s| hex(&s.span.trace_id) == started_trace)
        .unwrap_or_else(|| panic!("the started trace: {spans:#?}"));
    assert!(root.span.parent_span_id.is_empty(), "a root span");
    // Batches leave within a second; the unsampled request's never comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spans = collector.spans();
    assert!(
        spans.iter().all(|s| hex(&s.span.trace_id) != QUIET),
        "{spans:#?}"
    );
    assert_eq!(spans.len(), 2, "{spans:#?}");
    Ok(())
}
