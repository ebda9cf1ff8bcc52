//! HTTP through the waypoint: requests arriving in a tunnel (HTTP/1.1 or
//! HTTP/2, as the client speaks) are each sent to an endpoint of the
//! destination, over the same protocol, and the response comes back.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_proto::spiffe::Identity;
use weft_proxy::{balance::Endpoint, hbone::io::H2Io, state::Service};

use crate::{
    access_log::{LoggedBody, RequestLog},
    backends::{Held, InFlight},
    filters,
    forward::{self, Budget, RetryPolicy},
    matcher::{matches, select, RequestInfo, Selection},
    normalize::{normalize, PathNormalization},
    policy::{self, RequestAttrs, Verdict},
    proxy::{Target, Waypoint},
    routes::{Backend, Filter, HeaderModifier, Route},
};

/// A response body: the upstream's, or one the waypoint made.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// The HTTP version spoken on a tunnel (both ways).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Http1,
    Http2,
}

impl Version {
    fn name(self) -> &'static str {
        match self {
            Version::Http1 => "HTTP/1.1",
            Version::Http2 => "HTTP/2",
        }
    }
}

/// Who sent the requests of one tunnel, and where they are headed.
pub struct Downstream {
    pub peer: SocketAddr,
    pub identity: Identity,
    /// The tunnel's authority: the original destination.
    pub authority: SocketAddr,
    pub target: Target,
    pub version: Version,
}

/// Serves the requests of one tunnel until the client is done.
pub async fn serve(wp: Arc<Waypoint>, io: H2Io, down: Arc<Downstream>) -> Result<(), hyper::Error> {
    let version = down.version;
    let service = hyper::service::service_fn(move |req| {
        let (wp, down) = (wp.clone(), down.clone());
        async move { Ok::<_, std::convert::Infallible>(handle(&wp, &down, req).await) }
    });
    let io = TokioIo::new(io);
    match version {
        Version::Http1 => {
            hyper::server::conn::http1::Builder::new()
                // A client may end its side once it has sent the request
                // and still wait for the answer.
                .half_close(true)
                .serve_connection(io, service)
                .await
        }
        Version::Http2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await
        }
    }
}

/// A response the waypoint makes itself, Envoy-style (`text/plain` reason).
pub fn local_response(status: StatusCode, text: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(text.to_owned()))
        .map_err(|never| match never {})
        .boxed();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(body)
        .expect("a status and a body make a response")
}

fn finish(mut log: RequestLog, response: Response<Body>) -> Response<Body> {
    log.status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, LoggedBody::new(body, log).boxed())
}

async fn handle(wp: &Waypoint, down: &Downstream, req: Request<Incoming>) -> Response<Body> {
    let mut log = RequestLog::new(
        req.method().to_string(),
        req.uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into()),
        down.version.name(),
        authority_of(&req).unwrap_or_default(),
        down.peer.to_string(),
        down.identity.to_string(),
        down.target.name(),
    );
    // Paths are made canonical before routes and policies see them, and
    // forwarded as such.
    if req
        .method()
        .as_str()
        .bytes()
        .any(|b| b.is_ascii_lowercase())
    {
        log.flags = "DPE";
        log.error = Some(format!("method {} is not upper case", req.method()));
        return finish(log, local_response(StatusCode::BAD_REQUEST, "Bad Request"));
    }
    let req = match canonical_path(req, wp.path_normalization) {
        Ok(req) => req,
        Err(err) => {
            log.flags = "DPE";
            log.error = Some(err.to_string());
            return finish(log, local_response(StatusCode::BAD_REQUEST, "Bad Request"));
        }
    };
    let service_key = match &down.target {
        Target::Service { service, .. } => Some(service.key()),
        Target::Workload { .. } => None,
    };
    let policies = wp.policies.applying(&wp.name, service_key.as_deref());
    if !policies.is_empty() {
        let principal = down.identity.principal();
        let host = authority_of(&req).unwrap_or_default();
        let attrs = RequestAttrs {
            principal: &principal,
            namespace: &down.identity.namespace,
            source_ip: down.peer.ip(),
            destination_ip: down.authority.ip(),
            destination_port: down.authority.port(),
            host: &host,
            method: req.method().as_str(),
            path: req.uri().path(),
            headers: req.headers(),
            opaque: false,
        };
        match policy::evaluate(&policies, &attrs) {
            Verdict::Allow { audited } => log.audited = audited,
            Verdict::Deny { policy, audited } => {
                log.audited = audited;
                log.flags = "RBAC";
                log.policy = Some(policy);
                return finish(
                    log,
                    local_response(StatusCode::FORBIDDEN, "RBAC: access denied"),
                );
            }
        }
    }
    let (service, port) = match &down.target {
        // Pod-addressed traffic takes no service's routes.
        Target::Workload { workload, addr } => {
            let endpoint = Endpoint {
                workload: workload.clone(),
                addr: *addr,
            };
            let pick = || Ok((endpoint.clone(), None));
            return send(
                wp,
                down,
                pick,
                |_, _| {},
                req,
                Plan::default(),
                Vec::new(),
                log,
            )
            .await;
        }
        Target::Service { service, port } => (service.clone(), *port),
    };
    let routes = wp.routes.get(&service.key());
    let info = RequestInfo {
        method: req.method().as_str(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
        port,
        caller_namespace: &down.identity.namespace,
    };
    let fault = routes.as_ref().and_then(|r| {
        r.faults
            .iter()
            .find(|f| matches(&f.matcher, &info))
            .cloned()
    });
    let selection = match &routes {
        None => Selection::Default,
        Some(routes) => select(routes, &info),
    };
    if let Some(fault) = fault {
        if let Some((delay, percent)) = fault.delay {
            if chance(percent) {
                log.flags = "DI";
                tokio::time::sleep(delay).await;
            }
        }
        if let Some((status, percent)) = fault.abort {
            if chance(percent) {
                log.flags = "FI";
                log.error = Some(format!(
                    "aborted by VirtualService {}'s fault",
                    fault.source
                ));
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return finish(log, local_response(status, "fault filter abort"));
            }
        }
    }
    let route = match selection {
        Selection::Default => {
            return to_service(wp, down, &service, port, req, Plan::default(), log).await;
        }
        Selection::NoRoute => {
            log.flags = "NR";
            return finish(
                log,
                local_response(StatusCode::NOT_FOUND, "route not found"),
            );
        }
        Selection::Route(route) => route,
    };
    log.route = route.name.clone();
    if let Some(status) = route.error_status {
        log.flags = "NC";
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return finish(
            log,
            local_response(status, "the route's backends are all invalid"),
        );
    }
    if let Some(Filter::Redirect {
        scheme,
        hostname,
        port: redirect_port,
        path,
        status,
    }) = filters::redirect(&route.filters)
    {
        let host = authority_of(&req).unwrap_or_else(|| service.hostname.clone());
        let location = filters::redirect_location(
            scheme.as_deref(),
            hostname.as_deref(),
            *redirect_port,
            path.as_ref(),
            &route.matcher.path,
            &host,
            port,
            req.uri().path(),
            req.uri().query(),
        );
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::FOUND);
        let mut response = local_response(status, "");
        if let Ok(value) = HeaderValue::try_from(location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        return finish(log, response);
    }
    let Some(backend) =
        filters::choose_backend(&route.backends, |total| rand::random_range(0..total))
    else {
        log.flags = "NC";
        return finish(
            log,
            local_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the route has no backend",
            ),
        );
    };
    if let Some(error) = &backend.error {
        log.flags = "NC";
        log.error = Some(error.clone());
        return finish(
            log,
            local_response(StatusCode::INTERNAL_SERVER_ERROR, "invalid backend"),
        );
    }
    let Some(backend_service) = wp.state.service(&backend.service) else {
        return no_upstream(
            log,
            format!("backend service {} is not known yet", backend.service),
        );
    };
    let req = apply_request_filters(req, route, backend, down.version);
    let plan = Plan {
        response_filters: route
            .filters
            .iter()
            .chain(&backend.filters)
            .filter_map(|f| match f {
                Filter::ResponseHeaders(m) => Some(m.clone()),
                _ => None,
            })
            .collect(),
        budget: Budget {
            retry: route
                .retry
                .as_ref()
                .map(|r| RetryPolicy {
                    attempts: r.attempts,
                    codes: r.codes.clone(),
                    backoff: Duration::from_millis(r.backoff_ms),
                })
                .unwrap_or_default(),
            per_try: (route.backend_timeout_ms > 0)
                .then(|| Duration::from_millis(route.backend_timeout_ms)),
            overall: (route.request_timeout_ms > 0)
                .then(|| Duration::from_millis(route.request_timeout_ms)),
        },
    };
    to_service(wp, down, &backend_service, backend.port, req, plan, log).await
}

/// True for `percent` of calls.
fn chance(percent: f64) -> bool {
    percent >= 100.0 || rand::random::<f64>() * 100.0 < percent
}

/// Sends `req` to an endpoint of `service`, within the service's cap on
/// requests in flight, balanced and watched as its DestinationRule says.
async fn to_service(
    wp: &Waypoint,
    down: &Downstream,
    service: &Service,
    port: u16,
    req: Request<Incoming>,
    plan: Plan,
    mut log: RequestLog,
) -> Response<Body> {
    let key = service.key();
    let admitted = match wp.backends.admit(&key) {
        Ok(admitted) => admitted,
        Err(err) => {
            log.flags = "UO";
            log.error = Some(err.to_string());
            return finish(
                log,
                local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                ),
            );
        }
    };
    let endpoints = wp
        .balancer
        .service_endpoints(&wp.state, service, port)
        .map(|e| e.len())
        .unwrap_or(0);
    let pick = || {
        wp.backends
            .pick(&wp.balancer, &wp.state, service, port)
            .map(|(endpoint, load)| (endpoint, Some(load)))
            .map_err(|e| e.to_string())
    };
    let record =
        |endpoint: &Endpoint, ok: bool| wp.backends.record(&key, endpoint.addr, ok, endpoints);
    send(wp, down, pick, record, req, plan, vec![admitted], log).await
}

/// The request with its path made canonical (the query kept as sent).
fn canonical_path(
    req: Request<Incoming>,
    mode: PathNormalization,
) -> Result<Request<Incoming>, crate::normalize::BadPath> {
    let normalized = normalize(req.uri().path(), mode)?;
    if normalized == req.uri().path() {
        return Ok(req);
    }
    let (mut parts, body) = req.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut uri = http::uri::Parts::from(parts.uri.clone());
    if let Ok(pq) = path_and_query.parse() {
        uri.path_and_query = Some(pq);
    }
    if let Ok(rebuilt) = http::Uri::from_parts(uri) {
        parts.uri = rebuilt;
    }
    Ok(Request::from_parts(parts, body))
}

/// What happens around forwarding, once the route is chosen.
#[derive(Default)]
struct Plan {
    response_filters: Vec<HeaderModifier>,
    budget: Budget,
}

fn no_upstream(mut log: RequestLog, error: String) -> Response<Body> {
    log.flags = "UH";
    log.error = Some(error);
    finish(
        log,
        local_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
    )
}

/// The route's and the backend's request filters: header changes, then a
/// rewrite of host and path.
fn apply_request_filters(
    req: Request<Incoming>,
    route: &Route,
    backend: &Backend,
    version: Version,
) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    for f in route.filters.iter().chain(&backend.filters) {
        match f {
            Filter::RequestHeaders(m) => filters::modify_headers(&mut parts.headers, m),
            Filter::Rewrite { hostname, path } => {
                let new_path = path.as_ref().map(|change| {
                    filters::change_path(parts.uri.path(), change, &route.matcher.path)
                });
                let path_and_query = match (new_path, parts.uri.query()) {
                    (Some(p), Some(q)) => Some(format!("{p}?{q}")),
                    (Some(p), None) => Some(p),
                    (None, _) => None,
                };
                let mut uri = http::uri::Parts::from(parts.uri.clone());
                if let Some(pq) = path_and_query.and_then(|pq| pq.parse().ok()) {
                    uri.path_and_query = Some(pq);
                }
                if let Some(host) = hostname {
                    filters::set_host(&mut parts.headers, host);
                    if version == Version::Http2 {
                        if let Ok(authority) = host.parse() {
                            uri.authority = Some(authority);
                        }
                    }
                }
                if let Ok(rebuilt) = http::Uri::from_parts(uri) {
                    parts.uri = rebuilt;
                }
            }
            _ => {}
        }
    }
    Request::from_parts(parts, body)
}

/// Sends `req` as `plan` says, to endpoints `pick` chooses, and answers
/// with the response.
#[allow(clippy::too_many_arguments)]
async fn send(
    wp: &Waypoint,
    down: &Downstream,
    pick: impl forward::Pick,
    record: impl Fn(&Endpoint, bool),
    req: Request<Incoming>,
    plan: Plan,
    mut held: Vec<InFlight>,
    mut log: RequestLog,
) -> Response<Body> {
    let sent = forward::send(wp, down.version, req, pick, record, &plan.budget).await;
    match sent {
        forward::Sent::Response {
            response,
            upstream,
            attempts,
            held: load,
        } => {
            held.extend(load);
            log.upstream = Some(upstream.addr.to_string());
            log.attempts = attempts;
            let (mut parts, body) = response.into_parts();
            // The upstream's connection management is its own hop's
            // (`connection: close` there does not close the client's).
            strip_hop_by_hop(&mut parts.headers);
            for m in &plan.response_filters {
                filters::modify_headers(&mut parts.headers, m);
            }
            finish(
                log,
                Response::from_parts(parts, Held::new(body, held).boxed()),
            )
        }
        forward::Sent::TimedOut { upstream, attempts } => {
            log.upstream = upstream.map(|u| u.addr.to_string());
            log.attempts = attempts;
            log.flags = "UT";
            finish(
                log,
                local_response(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
            )
        }
        forward::Sent::Failed {
            error,
            upstream,
            attempts,
        } => {
            log.upstream = upstream.map(|u| u.addr.to_string());
            log.attempts = attempts;
            if matches!(error, forward::ForwardError::NoEndpoint(_)) {
                return no_upstream(log, error.to_string());
            }
            log.flags = "UF";
            log.error = Some(error.to_string());
            finish(
                log,
                local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers",
                ),
            )
        }
    }
}

fn authority_of<B>(req: &Request<B>) -> Option<String> {
    req.uri().authority().map(|a| a.to_string()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    })
}

/// Headers that belong to one HTTP/1.1 hop, never forwarded (RFC 9110
/// 7.6.1), with any the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    for name in named {
        headers.remove(name.as_str());
    }
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("upgrade", "h2c"),
            ("te", "gzip"),
            ("x-kept", "yes"),
            ("host", "shop"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept", "host"]);
    }
}
