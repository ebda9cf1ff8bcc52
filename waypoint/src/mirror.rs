//! HTTPRoute's `RequestMirror`: a copy of a request sent to another
//! service, its answer read and dropped, never delaying or changing the
//! client's. As Envoy does, the copy's host carries a `-shadow` suffix so
//! the mirror's backend can tell copies from real traffic.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{request::Parts, HeaderValue, Request};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, Full, StreamBody};

use crate::{
    forward::{self, Budget, RequestBody, RetryPolicy},
    http::Version,
    proxy::Waypoint,
};

/// Bodies up to this size are mirrored; a larger one goes to the route's
/// backend only.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long a mirrored copy may take.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(15);

/// A mirror target: `namespace/hostname` and port.
pub type Target = (String, u16);

/// Sends a copy of `req` to each of `targets` in the background; returns
/// the request to forward, its body as the client sent it.
pub async fn tee(
    wp: &Arc<Waypoint>,
    client: SocketAddr,
    version: Version,
    req: Request<RequestBody>,
    targets: Vec<Target>,
) -> Request<RequestBody> {
    let (parts, body) = req.into_parts();
    let (body, whole) = buffer(body, BODY_LIMIT).await;
    match whole {
        Some(bytes) => {
            for target in targets {
                tokio::spawn(send_copy(
                    wp.clone(),
                    client,
                    version,
                    parts.clone(),
                    bytes.clone(),
                    target,
                ));
            }
        }
        None => tracing::debug!(
            path = %parts.uri.path(),
            limit = BODY_LIMIT,
            "request body too large to mirror; sent to the route's backend only"
        ),
    }
    Request::from_parts(parts, body)
}

/// Reads `body` whole if it is at most `limit` bytes: (the body to
/// forward, its bytes). Otherwise, or if it fails, what was read is
/// replayed ahead of the rest and there are no bytes to mirror.
async fn buffer(mut body: RequestBody, limit: usize) -> (RequestBody, Option<Bytes>) {
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut size = 0;
    loop {
        match body.frame().await {
            None => {
                let mut whole = BytesMut::with_capacity(size);
                for frame in &frames {
                    if let Some(data) = frame.data_ref() {
                        whole.extend_from_slice(data);
                    }
                }
                let whole = whole.freeze();
                let has_trailers = frames.iter().any(|f| f.is_trailers());
                let replay = if has_trailers {
                    replay(frames, None)
                } else {
                    Full::new(whole.clone())
                        .map_err(|never| match never {})
                        .boxed()
                };
                return (replay, Some(whole));
            }
            Some(Ok(frame)) => {
                size += frame.data_ref().map_or(0, Bytes::len);
                frames.push(frame);
                if size > limit {
                    return (replay(frames, Some(Rest::Body(body))), None);
                }
            }
            Some(Err(err)) => return (replay(frames, Some(Rest::Error(err))), None),
        }
    }
}

enum Rest {
    Body(RequestBody),
    Error(hyper::Error),
}

fn replay(frames: Vec<Frame<Bytes>>, rest: Option<Rest>) -> RequestBody {
    let read = futures::stream::iter(frames.into_iter().map(Ok));
    match rest {
        None => BodyExt::boxed(StreamBody::new(read)),
        Some(Rest::Body(body)) => {
            BodyExt::boxed(StreamBody::new(read.chain(BodyStream::new(body))))
        }
        Some(Rest::Error(err)) => BodyExt::boxed(StreamBody::new(
            read.chain(futures::stream::once(async { Err(err) })),
        )),
    }
}

/// `host` → `host-shadow`, `host:port` → `host-shadow:port`.
pub fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((name, port))
            if !name.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            format!("{name}-shadow:{port}")
        }
        _ => format!("{host}-shadow"),
    }
}

async fn send_copy(
    wp: Arc<Waypoint>,
    client: SocketAddr,
    version: Version,
    mut parts: Parts,
    body: Bytes,
    (service_key, port): Target,
) {
    let Some(service) = wp.state.service(&service_key) else {
        tracing::debug!(mirror = %service_key, "mirror service not known; copy dropped");
        return;
    };
    if let Some(host) = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        if let Ok(value) = HeaderValue::from_str(&shadow_host(host)) {
            parts.headers.insert(http::header::HOST, value);
        }
    }
    if let Some(authority) = parts.uri.authority().map(|a| shadow_host(a.as_str())) {
        let mut uri = http::uri::Parts::from(parts.uri.clone());
        uri.authority = authority.parse().ok();
        if let Ok(rebuilt) = http::Uri::from_parts(uri) {
            parts.uri = rebuilt;
        }
    }
    let tunnel = wp.tunnel(SocketAddr::new(client.ip(), 0), Some(&service.hostname));
    let pick = || {
        wp.balancer
            .service_endpoint(&wp.state, &service, port)
            .map(|endpoint| (endpoint, None))
            .map_err(|e| e.to_string())
    };
    let budget = Budget {
        retry: RetryPolicy {
            attempts: 0,
            ..Default::default()
        },
        per_try: None,
        overall: Some(MIRROR_TIMEOUT),
    };
    let request = Request::from_parts(
        parts,
        Full::new(body).map_err(|never| match never {}).boxed(),
    );
    match forward::send(&wp, version, request, pick, |_, _| {}, &budget, &tunnel).await {
        forward::Sent::Response {
            response, upstream, ..
        } => {
            let status = response.status();
            let _ = response.into_body().collect().await;
            tracing::debug!(mirror = %service_key, upstream = %upstream.addr, %status, "mirrored");
        }
        forward::Sent::TimedOut { .. } => {
            tracing::debug!(mirror = %service_key, "mirrored copy timed out")
        }
        forward::Sent::Failed { error, .. } => {
            tracing::debug!(mirror = %service_key, %error, "mirrored copy failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts_keep_their_port() {
        for (host, shadow) in [
            ("web", "web-shadow"),
            ("web:8080", "web-shadow:8080"),
            (
                "web.shop.svc.cluster.local",
                "web.shop.svc.cluster.local-shadow",
            ),
            ("198.19.0.10:80", "198.19.0.10-shadow:80"),
            ("[fd00::1]:80", "[fd00::1]-shadow:80"),
            ("odd:", "odd:-shadow"),
        ] {
            assert_eq!(shadow_host(host), shadow, "{host}");
        }
    }
}
