//! Small applications tests run inside pods: stand-ins for user workloads.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};

/// Serves `listener` forever: for each connection, reads until the client
/// half-closes, then answers `"<name> saw <peer>: <request>"` and closes. The
/// reply lets a test check both that it reached the right server and which
/// source address the server saw.
pub fn spawn_echo(listener: std::net::TcpListener, name: &str) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let name = name.to_owned();
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, peer)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                if stream.read_to_end(&mut request).await.is_ok() {
                    let reply = echo_reply(&name, peer, &String::from_utf8_lossy(&request));
                    let _ = stream.write_all(reply.as_bytes()).await;
                }
            });
        }
    }))
}

/// Serves `listener` forever as a minimal HTTP/1.1 server: every request
/// gets `200` with the body `"<name> saw <peer>: <method> <path>"`, and the
/// connection closes.
pub fn spawn_http(listener: std::net::TcpListener, name: &str) -> std::io::Result<JoinHandle<()>> {
    serve_http_once(listener, name, true)
}

/// As [`spawn_http`], but the answer does not say `connection: close`
/// before the connection closes: a server whose keep-alive ends without
/// warning, as an idle timeout ends it.
pub fn spawn_http_closing_silently(
    listener: std::net::TcpListener,
    name: &str,
) -> std::io::Result<JoinHandle<()>> {
    serve_http_once(listener, name, false)
}

fn serve_http_once(
    listener: std::net::TcpListener,
    name: &str,
    say_close: bool,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let name = name.to_owned();
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, peer)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let request_line = head.lines().next().unwrap_or_default();
                let target: Vec<&str> = request_line.split_whitespace().take(2).collect();
                let body = echo_reply(&name, peer, &target.join(" "));
                let close = if say_close {
                    "connection: close\r\n"
                } else {
                    ""
                };
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{close}\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    }))
}

/// The reply [`spawn_echo`] gives.
pub fn echo_reply(name: &str, peer: SocketAddr, request: &str) -> String {
    format!("{name} saw {}: {request}", peer.ip())
}

/// The JSON line `weft-probe` prints.
#[derive(Debug, serde::Deserialize)]
pub struct ProbeReport {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub socket_cookie: u64,
    pub reply: String,
}

impl ProbeReport {
    /// Parses the probe's stdout.
    pub fn parse(stdout: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(stdout)
    }
}

/// Serves `listener` forever as an HTTP server speaking HTTP/1.1 and
/// HTTP/2 (prior knowledge), keep-alive: every request gets `200` with the
/// body `"<name> saw <peer>: <method> <path>"`, except `/status/NNN`, which
/// answers NNN, `/headers`, whose body lists the request's headers
/// (`name: value` lines, as received), `…/flaky/KEY/…`, answered 503 the
/// first two times for each KEY, a WebSocket upgrade (101, then an echo:
/// see [`websocket_echo`]), `…/fail-on/NAME…`, answered 500 by the
/// server called NAME (200 by the others), and `…/delay/MS`, answered after
/// MS milliseconds.
pub fn spawn_web(listener: std::net::TcpListener, name: &str) -> std::io::Result<JoinHandle<()>> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let name = name.to_owned();
    // Requests seen per `/flaky/KEY/…` key.
    let flaky: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>> =
        Default::default();
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let (name, flaky) = (name.clone(), flaky.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (name, flaky) = (name.clone(), flaky.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            web_answer(&name, peer, &flaky, req).await,
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}

/// One answer of [`spawn_web`]'s server.
async fn web_answer(
    name: &str,
    peer: SocketAddr,
    flaky: &std::sync::Mutex<std::collections::HashMap<String, u32>>,
    mut req: http::Request<hyper::body::Incoming>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    let path = req.uri().path().to_owned();
    let segment_after = |marker: &str| {
        path.split(marker)
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .map(str::to_owned)
    };
    if req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        return websocket_echo(name, &mut req);
    }
    let mut reply = web_reply(name, peer, &req);
    if let Some(key) = segment_after("/flaky/") {
        let mut seen = flaky.lock().expect("flaky lock");
        let n = seen.entry(key).or_insert(0);
        *n += 1;
        if *n <= 2 {
            *reply.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    if segment_after("/fail-on/").as_deref() == Some(name) {
        *reply.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    }
    // The body is read whole, as a real application would.
    let received = match req.into_body().collect().await {
        Ok(body) => body.to_bytes().len(),
        Err(_) => {
            return http::Response::builder()
                .status(http::StatusCode::BAD_REQUEST)
                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                    b"bad body",
                )))
                .expect("a response")
        }
    };
    if received > 0 {
        let (parts, body) = reply.into_parts();
        let text = format!(
            "{} ({received} bytes)",
            String::from_utf8_lossy(
                &body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default()
            )
        );
        reply = http::Response::from_parts(parts, http_body_util::Full::new(text.into()));
    }
    if let Some(ms) = path
        .rsplit_once("/delay/")
        .and_then(|(_, ms)| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    reply
}

/// Answers a WebSocket upgrade with 101 and then, on the upgraded
/// connection, writes `<name> echo: ` and every byte it reads back until
/// the client is done (no WebSocket framing: proxies carry bytes).
fn websocket_echo<B>(
    name: &str,
    req: &mut http::Request<B>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let on_upgrade = hyper::upgrade::on(req);
    let name = name.to_owned();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut received = Vec::new();
        let _ = io.read_to_end(&mut received).await;
        let _ = io.write_all(format!("{name} echo: ").as_bytes()).await;
        let _ = io.write_all(&received).await;
        let _ = io.shutdown().await;
    });
    http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, "websocket")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("a 101 response")
}

fn web_reply<B>(
    name: &str,
    peer: SocketAddr,
    req: &http::Request<B>,
) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let (status, body) = if let Some(code) = req.uri().path().strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| http::StatusCode::from_u16(c).ok())
            .unwrap_or(http::StatusCode::BAD_REQUEST);
        (status, format!("{name} answered {}", status.as_u16()))
    } else if req.uri().path() == "/headers" {
        let lines: String = req
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        (http::StatusCode::OK, lines)
    } else {
        (
            http::StatusCode::OK,
            echo_reply(name, peer, &format!("{} {path}", req.method())),
        )
    };
    http::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("x-served-by", name)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .expect("a valid response")
}

/// What a [`spawn_recorder`] server has been sent, one line per request:
/// `METHOD PATH host=HOST body=BODY`.
pub type Recorded = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// Serves `listener` (HTTP/1.1 and HTTP/2) answering every request 200
/// `recorded`, and keeps what each request was.
pub fn spawn_recorder(
    listener: std::net::TcpListener,
) -> std::io::Result<(Recorded, JoinHandle<()>)> {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let recorded = Recorded::default();
    let sink = recorded.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let sink = sink.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let sink = sink.clone();
                        async move {
                            let host = req
                                .headers()
                                .get(http::header::HOST)
                                .and_then(|h| h.to_str().ok())
                                .map(str::to_owned)
                                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                                .unwrap_or_default();
                            let line = format!("{} {} host={host}", req.method(), req.uri().path());
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            let body =
                                String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
                            sink.lock()
                                .expect("recorder lock")
                                .push(format!("{line} body={body}"));
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"recorded")),
                            ))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((recorded, task))
}
