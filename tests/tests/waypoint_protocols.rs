//! HTTP/1.1 as clients really speak it, through a real waypoint: WebSocket
//! upgrades carried through, `Expect: 100-continue` and chunked bodies,
//! and the request-smuggling shapes — conflicting framing, bad chunk
//! sizes, oversized headers — refused with 400/431 and never forwarded.

#[macro_use]
mod support;

use std::{net::SocketAddr, time::Duration};

use support::{
    probe,
    shop::{curl, mesh},
};
use weft_tests::{privilege::require_privileged, processes::eventually};

const WEB: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 0, 10)),
    80,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_carried_through() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh("").await?;
    let client = mesh.topology.pod("shop/client");
    let report = probe(
        client,
        WEB,
        "GET /chat HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
         hello over the upgraded connection",
    )
    .await?;
    let (head, rest) = report
        .reply
        .split_once("\r\n\r\n")
        .unwrap_or((&report.reply, ""));
    assert!(head.starts_with("HTTP/1.1 101"), "{:?}", report.reply);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(head.contains("connection: upgrade"), "{head}");
    assert!(
        rest.ends_with(" echo: hello over the upgraded connection"),
        "bytes carried both ways after the switch: {rest:?}"
    );
    eventually("the upgrade's log line", Duration::from_secs(5), || async {
        waypoint
            .process
            .lines_with(&["request complete", "path=/chat", "response_code=101"])
            .into_iter()
            .next()
    })
    .await?;
    // Another upgrade (h2c) is not WebSocket: dropped with the hop-by-hop
    // headers, the request is answered as a plain one.
    let report = probe(
        client,
        WEB,
        "GET /plain HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    )
    .await?;
    assert!(
        report.reply.starts_with("HTTP/1.1 200"),
        "{:?}",
        report.reply
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_whatever_their_framing() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, _waypoint) = mesh("").await?;
    let client = mesh.topology.pod("shop/client");
    let body = tempfile::NamedTempFile::new()?;
    std::fs::write(body.path(), "x".repeat(200_000))?;
    let data = format!("@{}", body.path().display());
    // curl waits for 100 Continue before sending the body (past its
    // 10 s limit: no 100, no answer).
    let (status, _, text) = curl(
        client,
        &[
            "--expect100-timeout",
            "30",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &data,
            "http://198.19.0.10/upload",
        ],
    )
    .await?;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("POST /upload (200000 bytes)"), "{text}");
    // A chunked body, as a client streaming it sends it.
    let report = probe(
        client,
        WEB,
        "POST /chunked HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await?;
    assert!(
        report.reply.starts_with("HTTP/1.1 200"),
        "{:?}",
        report.reply
    );
    assert!(
        report.reply.ends_with("POST /chunked (11 bytes)"),
        "{:?}",
        report.reply
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_and_never_forwarded() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh("").await?;
    let client = mesh.topology.pod("shop/client");
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n";
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "Content-Length and Transfer-Encoding both",
            format!(
                "POST /a HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\
                 Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"
            ),
            400,
        ),
        (
            "two different Content-Lengths",
            format!(
                "POST /b HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc{hidden}"
            ),
            400,
        ),
        (
            "a Transfer-Encoding that does not end in chunked",
            format!("POST /c HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip\r\n\r\n{hidden}"),
            400,
        ),
        (
            "an obfuscated Transfer-Encoding",
            format!(
                "POST /d HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: xchunked\r\n\
                 Content-Length: 4\r\n\r\n0\r\n\r\n{hidden}"
            ),
            400,
        ),
        (
            "a chunk size that is not hexadecimal",
            format!(
                "POST /e HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n{hidden}"
            ),
            400,
        ),
        (
            "headers past 60 KiB",
            format!(
                "GET /f HTTP/1.1\r\nHost: web\r\nX-Big: {}\r\n\r\n",
                "a".repeat(70 * 1024)
            ),
            431,
        ),
        (
            "a space before the colon",
            format!("GET /g HTTP/1.1\r\nHost : web\r\n\r\n{hidden}"),
            400,
        ),
    ];
    let mut failures = Vec::new();
    for (what, request, expected) in &cases {
        let report = probe(client, WEB, request).await?;
        let status: Option<u16> = report
            .reply
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok());
        if status != Some(*expected) {
            failures.push(format!(
                "{what}: expected {expected}, got {:?}",
                report.reply
            ));
        }
    }
    // Nothing hidden in a body ever became a request of its own.
    let (status, _, _) = curl(client, &["http://198.19.0.10/after"]).await?;
    assert_eq!(status, 200);
    eventually(
        "the last request's line",
        Duration::from_secs(5),
        || async {
            waypoint
                .process
                .lines_with(&["request complete", "path=/after"])
                .into_iter()
                .next()
        },
    )
    .await?;
    let smuggled = waypoint.process.lines_with(&["path=/smuggled"]);
    assert!(smuggled.is_empty(), "{smuggled:?}");
    for path in ["/a", "/b", "/c", "/d", "/f", "/g"] {
        let forwarded: Vec<String> = waypoint
            .process
            .lines_with(&["request complete", &format!("path={path} ")])
            .into_iter()
            .filter(|l| !l.contains("upstream_host=-"))
            .collect();
        if !forwarded.is_empty() {
            failures.push(format!("{path} was forwarded: {forwarded:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    Ok(())
}

/// A Service port that declares its protocol is taken at its word:
/// `tcp-*` is carried at L4 from the first byte even when the bytes look
/// like HTTP, and a port declared HTTP never falls back to L4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_port_protocols_are_honoured() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh(
        r#"
---
apiVersion: v1
kind: Service
metadata: {name: raw, namespace: shop}
spec:
  clusterIP: 198.19.0.14
  selector: {app: web}
  ports:
  - {name: tcp-raw, port: 7000}
  - {name: strict, port: 7001, targetPort: 7000, appProtocol: http}
"#,
    )
    .await?;
    for qualified in ["shop/web-v1", "shop/web-v2"] {
        let pod = mesh.topology.pod(qualified);
        let listener = pod.enter(|| std::net::TcpListener::bind((pod.ip(), 7000)))??;
        weft_tests::apps::spawn_echo(listener, qualified)?;
    }
    let client = mesh.topology.pod("shop/client");
    let raw: SocketAddr = "198.19.0.14:7000".parse()?;
    let strict: SocketAddr = "198.19.0.14:7001".parse()?;
    // HTTP-looking bytes on a tcp- port reach the application untouched:
    // the echo shows the very bytes the client wrote, with no header the
    // waypoint would have added.
    let request = "GET /looks-like-http HTTP/1.1\r\nHost: raw\r\n\r\n";
    let report = probe(client, raw, request).await?;
    assert!(
        report.reply.ends_with(&format!(": {request}")),
        "carried at L4, byte for byte: {:?}",
        report.reply
    );
    assert!(
        waypoint
            .process
            .lines_with(&["request complete", "path=/looks-like-http"])
            .is_empty(),
        "a tcp- port is never parsed as HTTP"
    );
    // Bytes that are not HTTP on a port declared HTTP: the tunnel is
    // closed, nothing reaches the application.
    match probe(client, strict, "\x16\x03\x01 not http at all").await {
        Ok(report) => assert_eq!(report.reply, "", "nothing comes back from a refused tunnel"),
        Err(err) => assert!(
            err.to_string().contains("Connection reset"),
            "refused by a reset or a close, nothing else: {err:#}"
        ),
    }
    eventually("the refusal in the log", Duration::from_secs(5), || async {
        waypoint
            .process
            .lines_with(&["not HTTP on a port declared HTTP"])
            .into_iter()
            .next()
    })
    .await?;
    Ok(())
}

/// The waypoint keeps upstream connections; one the server closed without
/// saying so is never used for a request, or the request is sent again
/// when that is safe. Every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_connections_the_server_closed_cost_no_request() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh(
        r#"
---
apiVersion: v1
kind: Service
metadata: {name: rude, namespace: shop}
spec:
  clusterIP: 198.19.0.14
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 7100}]
"#,
    )
    .await?;
    for qualified in ["shop/web-v1", "shop/web-v2"] {
        let pod = mesh.topology.pod(qualified);
        let listener = pod.enter(|| std::net::TcpListener::bind((pod.ip(), 7100)))??;
        weft_tests::apps::spawn_http_closing_silently(listener, qualified)?;
    }
    let client = mesh.topology.pod("shop/client");
    for i in 0..10 {
        let (status, _, body) = curl(client, &["http://198.19.0.14/get"]).await?;
        assert_eq!(status, 200, "GET {i}: {body}");
        let (status, _, body) = curl(client, &["-d", "x", "http://198.19.0.14/post"]).await?;
        assert_eq!(status, 200, "POST {i}: {body}");
    }
    assert!(
        waypoint
            .process
            .lines_with(&[
                "request complete",
                "authority=198.19.0.14",
                "response_code=503"
            ])
            .is_empty(),
        "no request failed"
    );
    Ok(())
}

/// One connection's requests, pipelined: the waypoint reads the bodiless
/// ones itself and hands the connection to hyper at the first with a
/// body; every request is answered once, in order, across the hand-over,
/// and a HEAD's answer carries no body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_requests_are_answered_in_order_across_the_hand_over() -> anyhow::Result<()> {
    require_privileged();
    let (mesh, waypoint) = mesh("").await?;
    let client = mesh.topology.pod("shop/client");
    let report = probe(
        client,
        WEB,
        "GET /one HTTP/1.1\r\nHost: web\r\n\r\n\
         GET /two?x=1 HTTP/1.1\r\nHost: web\r\n\r\n\
         HEAD /three HTTP/1.1\r\nHost: web\r\n\r\n\
         POST /four HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello\
         GET /five HTTP/1.1\r\nHost: web\r\n\r\n",
    )
    .await?;
    let reply = &report.reply;
    assert_eq!(
        reply.matches("HTTP/1.1 200 OK\r\n").count(),
        5,
        "five answers: {reply:?}"
    );
    let at = |needle: &str| {
        reply
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} is not in {reply:?}"))
    };
    assert!(at("GET /one") < at("GET /two?x=1"), "{reply:?}");
    assert!(at("GET /two?x=1") < at("POST /four (5 bytes)"), "{reply:?}");
    assert!(at("POST /four (5 bytes)") < at("GET /five"), "{reply:?}");
    assert!(
        !reply.contains("HEAD /three"),
        "a HEAD answer has no body: {reply:?}"
    );
    eventually(
        "every request's log line",
        Duration::from_secs(5),
        || async {
            let lines = ["/one", "/two?x=1", "/three", "/four", "/five"]
                .iter()
                .filter(|path| {
                    !waypoint
                        .process
                        .lines_with(&["request complete", &format!("path={path} ")])
                        .is_empty()
                })
                .count();
            (lines == 5).then_some(())
        },
    )
    .await?;
    Ok(())
}
