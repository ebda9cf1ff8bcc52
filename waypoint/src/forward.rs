//! Sending a request upstream, with retries and timeouts.
//!
//! Each attempt chooses an endpoint afresh, connects (HBONE or plain TCP,
//! [`crate::upstream`]) and speaks the client's HTTP version over the new
//! stream. A connection that fails before the request is sent is always
//! retried (Istio's default: twice), since the request is still whole;
//! a response whose status the route's `retry.codes` names is retried too,
//! when the request body was small enough to keep (64 KiB). Attempts wait
//! an exponential backoff from the route's `retry.backoff`. A per-attempt
//! timeout (`timeouts.backendRequest`) bounds each attempt, an overall one
//! (`timeouts.request`) all of them.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_proxy::balance::Endpoint;

use crate::{
    backends::InFlight,
    h1,
    http::Version,
    http_pool::{HttpPool, PoolKey, Sender},
    proxy::{Tunnel, Waypoint},
    upstream,
};

/// The largest request body kept for replaying on a status retry.
const REPLAY_LIMIT: usize = 64 * 1024;

/// A request body as sent upstream.
pub type RequestBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub attempts: u32,
    /// Statuses that are retried (connection failures always are).
    pub codes: Vec<u16>,
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    /// Istio's default: connection failures, twice.
    fn default() -> Self {
        Self {
            attempts: 2,
            codes: Vec::new(),
            backoff: Duration::from_millis(25),
        }
    }
}

/// How hard a request is tried.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    pub retry: RetryPolicy,
    /// Per attempt (`timeouts.backendRequest`).
    pub per_try: Option<Duration>,
    /// For all attempts (`timeouts.request`).
    pub overall: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Connect(#[from] upstream::UpstreamError),
    #[error("HTTP with the upstream: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP/1.1 with the upstream: {0}")]
    Own(#[from] h1::client::ClientError),
    #[error("{0}")]
    NoEndpoint(String),
}

/// A response body from the upstream: hyper's, or the waypoint's own
/// HTTP/1.1 client's.
pub enum UpstreamBody {
    Hyper(Incoming),
    Own(h1::client::ResponseBody),
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = crate::http::BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(body) => {
                std::pin::Pin::new(body).poll_frame(cx).map_err(Into::into)
            }
            UpstreamBody::Own(body) => std::pin::Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(body) => body.is_end_stream(),
            UpstreamBody::Own(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            UpstreamBody::Hyper(body) => body.size_hint(),
            UpstreamBody::Own(body) => body.size_hint(),
        }
    }
}

/// How a request fared.
pub enum Sent {
    Response {
        response: Response<UpstreamBody>,
        upstream: Endpoint,
        attempts: u32,
        /// Counts the request on its endpoint while the body streams.
        held: Option<InFlight>,
    },
    Failed {
        error: ForwardError,
        upstream: Option<Endpoint>,
        attempts: u32,
    },
    /// The per-attempt or overall timeout ran out.
    TimedOut {
        upstream: Option<Endpoint>,
        attempts: u32,
    },
}

/// Chooses the endpoint for one attempt; the guard (if any) counts the
/// attempt on it until the attempt is over.
pub trait Pick: Fn() -> Result<(Endpoint, Option<InFlight>), String> {}
impl<F: Fn() -> Result<(Endpoint, Option<InFlight>), String>> Pick for F {}

/// Sends `req`, choosing endpoints with `pick` and telling `record` how
/// each attempt went (an answer below 500, or not).
pub async fn send(
    wp: &Waypoint,
    version: Version,
    req: Request<RequestBody>,
    pick: impl Pick,
    record: impl Fn(&Endpoint, bool),
    budget: &Budget,
    tunnel: &Tunnel,
) -> Sent {
    let attempts_made = std::sync::atomic::AtomicU32::new(0);
    let last = std::sync::Mutex::new(None::<Endpoint>);
    let all = attempt_all(
        wp,
        version,
        req,
        &pick,
        &record,
        budget,
        tunnel,
        &attempts_made,
        &last,
    );
    let outcome = match budget.overall {
        Some(limit) => tokio::time::timeout(limit, all).await.ok(),
        None => Some(all.await),
    };
    outcome.unwrap_or_else(|| Sent::TimedOut {
        upstream: last.lock().expect("last lock").clone(),
        attempts: attempts_made.load(std::sync::atomic::Ordering::Relaxed),
    })
}

#[allow(clippy::too_many_arguments)]
async fn attempt_all(
    wp: &Waypoint,
    version: Version,
    req: Request<RequestBody>,
    pick: &impl Pick,
    record: &impl Fn(&Endpoint, bool),
    budget: &Budget,
    tunnel: &Tunnel,
    attempts_made: &std::sync::atomic::AtomicU32,
    last: &std::sync::Mutex<Option<Endpoint>>,
) -> Sent {
    let (retry, per_try) = (&budget.retry, budget.per_try);
    let (mut parts, body) = req.into_parts();
    let upgrade = (version == Version::Http1 && crate::http::websocket_upgrade(&parts.headers))
        .then(|| parts.headers.get(header::UPGRADE).cloned())
        .flatten();
    prepare_headers(&mut parts.headers, version);
    // Upgraded connections are the client's alone; others are pooled.
    let reusable = upgrade.is_none();
    if let Some(protocol) = upgrade {
        parts.headers.insert(header::UPGRADE, protocol);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    // Keep a small body so a retried status can be sent again; a large
    // one streams through once.
    let mut streaming = None;
    let mut kept = None;
    // A request without a body can be sent again after a pooled
    // connection turns out to have been closed under it.
    let bodiless = http_body::Body::is_end_stream(&body);
    let mut stale_retried = false;
    if retry.codes.is_empty() || too_large(&parts.headers) {
        streaming = Some(body);
    } else {
        match Limited::new(body, REPLAY_LIMIT).collect().await {
            Ok(collected) => kept = Some(collected.to_bytes()),
            Err(err) => {
                return Sent::Failed {
                    error: ForwardError::NoEndpoint(format!("reading the request body: {err}")),
                    upstream: None,
                    attempts: 0,
                }
            }
        }
    }
    let mut attempt = 0u32;
    loop {
        attempts_made.store(attempt + 1, std::sync::atomic::Ordering::Relaxed);
        let (endpoint, load) = match pick() {
            Ok(picked) => picked,
            Err(reason) => {
                return Sent::Failed {
                    error: ForwardError::NoEndpoint(reason),
                    upstream: None,
                    attempts: attempt + 1,
                }
            }
        };
        *last.lock().expect("last lock") = Some(endpoint.clone());
        let retries_left = attempt < retry.attempts;
        let backoff = retry.backoff * 2u32.saturating_pow(attempt.min(4));
        let pool_key = PoolKey::new(endpoint.addr, version, tunnel.key.clone());
        // A whole body (none, or one kept for retries) on a kept-alive
        // HTTP/1.1 connection goes through the waypoint's own client, in
        // this task; a streaming body or an upgrade through hyper's.
        let whole = match (&kept, bodiless) {
            (Some(bytes), _) => Some(bytes.clone()),
            (None, true) => Some(Bytes::new()),
            (None, false) => None,
        };
        // HTTP/1.0 requests keep hyper's client, which speaks 1.0 back.
        let own = version == Version::Http1
            && parts.version == http::Version::HTTP_11
            && reusable
            && whole.is_some();
        let pooled = match (reusable, own) {
            (false, _) => None,
            (true, true) => wp.http_pool.take_own(&pool_key).map(Conn::Own),
            (true, false) => wp.http_pool.take(&pool_key).map(Conn::Pooled),
        };
        let reused = pooled.is_some();
        let connect = async {
            match pooled {
                Some(conn) => Ok(conn),
                // Boxed: a new connection (HBONE and TLS handshakes) is
                // the exception, and its future would otherwise make every
                // request's several kilobytes larger, moved per request.
                None => Box::pin(upstream::connect(wp, &endpoint, &tunnel.headers))
                    .await
                    .map(|io| match own {
                        true => Conn::Own(Box::new(h1::client::Conn::new(io))),
                        false => Conn::Fresh(io),
                    }),
            }
        };
        let connected = match per_try {
            Some(limit) => match tokio::time::timeout(limit, connect).await {
                Ok(result) => result,
                Err(_) => {
                    return Sent::TimedOut {
                        upstream: Some(endpoint),
                        attempts: attempt + 1,
                    }
                }
            },
            None => connect.await,
        };
        if connected.is_err() {
            record(&endpoint, false);
        }
        let conn = match connected {
            Ok(conn) => conn,
            // Nothing was sent: the request is still whole.
            Err(err) if retries_left => {
                tracing::debug!(upstream = %endpoint.addr, %err, "retrying a connection failure");
                tokio::time::sleep(backoff).await;
                attempt += 1;
                continue;
            }
            Err(err) => {
                return Sent::Failed {
                    error: err.into(),
                    upstream: Some(endpoint),
                    attempts: attempt + 1,
                }
            }
        };
        let exchange = async {
            match (conn, whole) {
                (Conn::Own(conn), Some(body)) => conn
                    .send(&parts, &body, &wp.http_pool, pool_key)
                    .await
                    .map(|r| r.map(UpstreamBody::Own))
                    .map_err(ForwardError::from),
                (conn, _) => {
                    let body: RequestBody = match (&kept, streaming.take()) {
                        (Some(bytes), _) => Full::new(bytes.clone())
                            .map_err(|never| match never {})
                            .boxed(),
                        (None, Some(body)) => body.boxed(),
                        (None, None) if bodiless => Full::new(bytes::Bytes::new())
                            .map_err(|never| match never {})
                            .boxed(),
                        (None, None) => {
                            return Err(ForwardError::NoEndpoint(
                                "the request body was already sent".into(),
                            ))
                        }
                    };
                    let request = Request::from_parts(parts.clone(), body);
                    exchange(&wp.http_pool, pool_key, reusable, conn, version, request)
                        .await
                        .map(|r| r.map(UpstreamBody::Hyper))
                }
            }
        };
        let result = match per_try {
            Some(limit) => match tokio::time::timeout(limit, exchange).await {
                Ok(result) => result,
                Err(_) => {
                    return Sent::TimedOut {
                        upstream: Some(endpoint),
                        attempts: attempt + 1,
                    }
                }
            },
            None => exchange.await,
        };
        // A kept connection the server closed while it was idle: sent once
        // more on a new one when the request was never written, or when
        // it may safely be repeated (an idempotent method, as HTTP clients
        // retry on a stale keep-alive connection).
        let stale = match &result {
            Err(ForwardError::Http(e)) => {
                e.is_canceled() || (e.is_incomplete_message() && idempotent(&parts.method))
            }
            Err(ForwardError::Own(e)) => {
                e.stale()
                    || (matches!(e, h1::client::ClientError::Closed { .. })
                        && idempotent(&parts.method))
            }
            _ => false,
        };
        if reused && stale && !stale_retried && (kept.is_some() || bodiless) {
            tracing::debug!(upstream = %endpoint.addr, "pooled connection was closed; retrying on a new one");
            stale_retried = true;
            continue;
        }
        record(
            &endpoint,
            result.as_ref().is_ok_and(|r| r.status().as_u16() < 500),
        );
        match result {
            Ok(response)
                if retries_left
                    && kept.is_some()
                    && retry.codes.contains(&response.status().as_u16()) =>
            {
                tracing::debug!(upstream = %endpoint.addr, status = %response.status(), "retrying a response");
                drop(response);
                drop(load);
                tokio::time::sleep(backoff).await;
                attempt += 1;
            }
            Ok(response) => {
                return Sent::Response {
                    response,
                    upstream: endpoint,
                    attempts: attempt + 1,
                    held: load,
                }
            }
            Err(error) => {
                return Sent::Failed {
                    error,
                    upstream: Some(endpoint),
                    attempts: attempt + 1,
                }
            }
        }
    }
}

/// RFC 9110 9.2.2: a request that can be repeated with the same effect.
fn idempotent(method: &http::Method) -> bool {
    use http::Method;
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// A body declared larger than what is kept for replay.
fn too_large(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > REPLAY_LIMIT)
}

/// Headers as the upstream hop gets them. `Expect: 100-continue` is the
/// waypoint's to answer (hyper sends the 100 once the body is read), as
/// Envoy does, so the upstream never waits on it.
fn prepare_headers(headers: &mut http::HeaderMap, version: Version) {
    if headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        headers.remove(header::EXPECT);
    }
    match version {
        Version::Http1 => crate::http::strip_hop_by_hop(headers),
        // HTTP/2 carries `te: trailers` (gRPC needs it) and nothing
        // hop-by-hop.
        Version::Http2 => {
            if headers
                .get(header::TE)
                .is_some_and(|te| te != HeaderValue::from_static("trailers"))
            {
                headers.remove(header::TE);
            }
        }
    }
}

/// How a request reaches its endpoint: a kept connection, or a new stream.
enum Conn {
    Pooled(Sender),
    Fresh(upstream::UpstreamIo),
    /// For the waypoint's own HTTP/1.1 client.
    Own(Box<h1::client::Conn>),
}

/// Sends `req` on `conn` (after an HTTP handshake on a new stream); a
/// reusable connection is kept in `pool` for the next request.
async fn exchange(
    pool: &std::sync::Arc<HttpPool>,
    key: PoolKey,
    reusable: bool,
    conn: Conn,
    version: Version,
    req: Request<RequestBody>,
) -> Result<Response<Incoming>, ForwardError> {
    let sender = match conn {
        Conn::Pooled(sender) => sender,
        // Only the own client is handed one (see `attempt_all`).
        Conn::Own(_) => {
            return Err(ForwardError::NoEndpoint(
                "an own HTTP/1.1 connection reached hyper's client".into(),
            ))
        }
        Conn::Fresh(io) => {
            let io = TokioIo::new(io);
            match version {
                Version::Http1 => {
                    let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
                    tokio::spawn(async move {
                        if let Err(err) = connection.with_upgrades().await {
                            tracing::debug!(%err, "upstream HTTP/1.1 connection ended");
                        }
                    });
                    Sender::Http1(sender)
                }
                Version::Http2 => {
                    let (sender, connection) =
                        hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                    tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!(%err, "upstream HTTP/2 connection ended");
                        }
                    });
                    if reusable {
                        pool.share(key.clone(), &sender);
                    }
                    Sender::Http2(sender)
                }
            }
        }
    };
    match sender {
        Sender::Http1(mut sender) => {
            let response = sender.send_request(req).await?;
            if reusable {
                pool.release(key, sender);
            }
            Ok(response)
        }
        Sender::Http2(mut sender) => Ok(sender.send_request(req).await?),
    }
}
