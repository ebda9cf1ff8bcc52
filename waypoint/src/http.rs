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
use weft_proxy::{
    balance::Endpoint, peer_metadata::PeerClaims, state::Service, trace_context::TraceContext,
};

use crate::{
    access_log::{LoggedBody, RequestLog},
    backends::{Held, InFlight},
    cors, filters,
    forward::{self, Budget, RequestBody, RetryPolicy},
    framing::{self, HeadVerdict, Verdicts},
    grpc,
    matcher::{matches, select, RequestInfo, Selection},
    mirror,
    normalize::{is_canonical, normalize, PathNormalization},
    policy::{self, RequestAttrs, Verdict},
    proxy::{Target, Tunnel, Waypoint},
    routes::{Backend, Filter, HeaderModifier, Route},
    telemetry::{RequestMeter, RequestSpan, SourceMeter},
};

/// A response body: the upstream's, or one the waypoint made.
pub type Body = BoxBody<Bytes, BodyError>;

/// Why a response body ended early: the upstream's failure, or the
/// route's timeout.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The HTTP version spoken on a tunnel (both ways).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    /// What the source said on its CONNECT.
    pub claims: PeerClaims,
    /// What every request's log line says of the caller and destination,
    /// written out once.
    src_addr: Arc<str>,
    src_identity: Arc<str>,
    destination: Arc<str>,
    /// The caller's side of the requests' metrics.
    meter: Arc<SourceMeter>,
    /// The onward tunnels made for its requests, by service host.
    tunnels: std::sync::Mutex<Vec<(Option<String>, Arc<Tunnel>)>>,
}

impl Downstream {
    pub fn new(
        wp: &Waypoint,
        peer: SocketAddr,
        identity: Identity,
        authority: SocketAddr,
        target: Target,
        version: Version,
        claims: PeerClaims,
    ) -> Self {
        let meter = SourceMeter::new(
            wp.request_metrics.clone(),
            wp.state.workload_by_ip(peer.ip()),
            identity.clone(),
            claims.metadata.clone(),
        );
        Self {
            src_addr: peer.to_string().into(),
            src_identity: identity.to_string().into(),
            destination: target.name().into(),
            meter: Arc::new(meter),
            tunnels: Default::default(),
            peer,
            identity,
            authority,
            target,
            version,
            claims,
        }
    }

    /// The tunnel onward for this caller's requests to `service_host`.
    fn tunnel(&self, wp: &Waypoint, service_host: Option<&str>) -> Arc<Tunnel> {
        let mut tunnels = self.tunnels.lock().expect("tunnels lock");
        if let Some((_, tunnel)) = tunnels.iter().find(|(h, _)| h.as_deref() == service_host) {
            return tunnel.clone();
        }
        // Named by address alone: the connection onward may be kept and
        // carry the client's other connections' requests too.
        let client = SocketAddr::new(self.peer.ip(), 0);
        let tunnel = Arc::new(wp.tunnel(client, service_host));
        // A connection's requests name a handful of services at most.
        if tunnels.len() < 16 {
            tunnels.push((service_host.map(str::to_owned), tunnel.clone()));
        }
        tunnel
    }
}

/// Serves the requests of one tunnel until the client is done. `io` is
/// the tunnel's stream (any byte stream: the benchmark's same-hop
/// comparison with nginx serves plain TCP). HTTP/1.1 is read by the
/// waypoint itself ([`crate::h1::server`]), which hands a connection to
/// hyper ([`serve_hyper_h1`]) at the first request it does not serve;
/// HTTP/2 is hyper's.
pub async fn serve<IO>(
    wp: Arc<Waypoint>,
    io: IO,
    down: Arc<Downstream>,
) -> Result<(), crate::h1::server::ServeError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    match down.version {
        Version::Http1 => crate::h1::server::serve(wp, io, down).await,
        Version::Http2 => Ok(
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), service(wp, down, None))
                .await?,
        ),
    }
}

/// The handler as hyper's connections call it, once per request head, in
/// order; an HTTP/1.1 connection's framing verdicts go with them.
fn service(
    wp: Arc<Waypoint>,
    down: Arc<Downstream>,
    verdicts: Option<Verdicts>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = std::convert::Infallible,
    Future = impl std::future::Future<Output = Result<Response<Body>, std::convert::Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req| {
        let (wp, down) = (wp.clone(), down.clone());
        let verdict = verdicts.as_ref().and_then(Verdicts::next);
        async move { Ok::<_, std::convert::Infallible>(handle(&wp, &down, verdict, req).await) }
    })
}

/// Serves an HTTP/1.1 connection's requests with hyper, behind the
/// framing watch ([`framing`]), with upgrades.
pub(crate) async fn serve_hyper_h1<IO>(
    wp: Arc<Waypoint>,
    io: IO,
    down: Arc<Downstream>,
) -> Result<(), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (io, verdicts) = framing::watch(io);
    hyper::server::conn::http1::Builder::new()
        // A client may end its side once it has sent the request and
        // still wait for the answer.
        .half_close(true)
        // A head hyper cannot hold answers 431 (smaller ones past the
        // limit are refused by `framing_check`).
        .max_buf_size(2 * MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service(wp, down, Some(verdicts)))
        .with_upgrades()
        .await
}

/// The largest request head (line and headers) accepted.
const MAX_HEADER_BYTES: usize = 60 * 1024;

/// Whether `headers` ask to switch an HTTP/1.1 connection to WebSocket
/// (the one upgrade Istio lets through; others are dropped with the
/// hop-by-hop headers).
pub(crate) fn websocket_upgrade(headers: &HeaderMap) -> bool {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks && headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Joins the client's and the upstream's upgraded connections and carries
/// bytes both ways until both are done.
fn splice_upgrade(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(err) => {
                tracing::debug!(%err, "an upgrade did not complete");
                return;
            }
        };
        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((up, down)) => tracing::debug!(
                bytes_up = up,
                bytes_down = down,
                "upgraded connection ended"
            ),
            Err(err) => tracing::debug!(%err, "upgraded connection failed"),
        }
    });
}

/// A response the waypoint makes itself, Envoy-style (`text/plain` reason).
pub fn local_response(status: StatusCode, text: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(text.to_owned()))
        .map_err(|never| match never {})
        .boxed();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .extension(LocalReply {
            text: text.to_owned(),
            grpc: None,
        })
        .body(body)
        .expect("a status and a body make a response")
}

/// Marks an answer the waypoint made itself, with what a gRPC client is
/// told instead.
#[derive(Clone)]
struct LocalReply {
    text: String,
    /// The gRPC status, when not the one the HTTP status maps to.
    grpc: Option<grpc::Code>,
}

/// 504 for a timeout (gRPC: DEADLINE_EXCEEDED, as Envoy).
fn timeout_response() -> Response<Body> {
    let mut response = local_response(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
    if let Some(local) = response.extensions_mut().get_mut::<LocalReply>() {
        local.grpc = Some(grpc::Code::DeadlineExceeded);
    }
    response
}

fn finish(mut log: RequestLog, response: Response<Body>) -> Response<Body> {
    let response = match response.extensions().get::<LocalReply>().cloned() {
        Some(local) if log.grpc => {
            let code = local
                .grpc
                .unwrap_or_else(|| grpc::code_for(response.status()));
            log.grpc_status = Some(code as u16);
            let empty = Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed();
            grpc::trailers_only(response, code, &local.text, empty)
        }
        _ => response,
    };
    log.status = response.status().as_u16();
    if log.grpc && log.grpc_status.is_none() {
        log.grpc_status = crate::access_log::grpc_status(response.headers());
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, LoggedBody::new(body, log).boxed())
}

/// The connection switch a request asked for, until it is taken (a
/// WebSocket answered 101) or the request is done with; hyper keeps the
/// connection aside for it either way.
#[derive(Clone, Default)]
struct UpgradeSlot(Arc<std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>>);

impl UpgradeSlot {
    fn take(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.0.lock().expect("upgrade slot lock").take()
    }

    /// An upgrade not taken: once hyper hands the connection over, it is
    /// ended cleanly (END_STREAM), not dropped (a reset would lose the
    /// response still on its way).
    fn close_unless_taken(&self) {
        if let Some(on_upgrade) = self.take() {
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    use tokio::io::AsyncWriteExt;
                    let _ = TokioIo::new(upgraded).shutdown().await;
                }
            });
        }
    }
}

/// A request's answer, whoever read it (hyper or [`crate::h1::server`]).
pub(crate) async fn handle<B>(
    wp: &Arc<Waypoint>,
    down: &Downstream,
    verdict: Option<HeadVerdict>,
    mut req: Request<B>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error> + Send + Sync + Unpin + 'static,
{
    let slot = UpgradeSlot::default();
    if req
        .extensions()
        .get::<hyper::upgrade::OnUpgrade>()
        .is_some()
    {
        *slot.0.lock().expect("upgrade slot lock") = Some(hyper::upgrade::on(&mut req));
        req.extensions_mut().insert(slot.clone());
    }
    let response = handle_request(wp, down, verdict, req).await;
    slot.close_unless_taken();
    response
}

async fn handle_request<B>(
    wp: &Arc<Waypoint>,
    down: &Downstream,
    verdict: Option<HeadVerdict>,
    req: Request<B>,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes, Error = hyper::Error> + Send + Sync + Unpin + 'static,
{
    let authority = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    let mut log = RequestLog::new(
        req.method().clone(),
        req.uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        down.version.name(),
        authority,
        down.src_addr.clone(),
        down.src_identity.clone(),
        down.destination.clone(),
    );
    log.grpc = grpc::is_grpc(req.headers());
    log.meter = Some(RequestMeter::new(
        down.meter.clone(),
        match &down.target {
            Target::Service { service, .. } => Some(service.clone()),
            Target::Workload { .. } => None,
        },
    ));
    // A request without a body has nothing to count.
    let mut req = if req.body().is_end_stream() {
        req.map(|body| body.boxed())
    } else {
        req.map(|body| log.count_request(body).boxed())
    };
    // With a collector, the request's span joins the caller's trace (or
    // starts one) and is the parent the upstream sees.
    if wp.tracer.enabled() {
        let context = TraceContext::continue_or_start(req.headers(), wp.trace_sampling);
        context.inject(req.headers_mut());
        let name = match &down.target {
            Target::Service { service, port } => format!("{}:{port}/*", service.hostname),
            Target::Workload { addr, .. } => format!("{addr}/*"),
        };
        log.span = Some(RequestSpan::new(wp.tracer.clone(), context, name));
    }
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
    if let Err(refusal) = framing_check(&req, verdict) {
        log.flags = "DPE";
        log.error = Some(refusal.reason.into());
        return finish(log, local_response(refusal.status, refusal.text));
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
    let policies = wp.policies.applying(&wp.name, service_key);
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
            return send(wp, down, pick, |_, _| {}, req, Plan::default(), None, log).await;
        }
        Target::Service { service, port } => (service.clone(), *port),
    };
    let routes = wp.routes.get(service.key());
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
    // CORS: a preflight from an allowed origin is answered here; other
    // requests from it are told what is allowed on their response.
    let mut cors_headers = None;
    let cors = route.filters.iter().find_map(|f| match f {
        Filter::Cors(c) => Some(c),
        _ => None,
    });
    if let Some((policy, origin)) =
        cors.and_then(|c| c.allowed_origin(req.headers()).map(|o| (c, o.to_owned())))
    {
        if cors::is_preflight(req.method(), req.headers()) {
            let mut answer = Response::builder().status(StatusCode::OK);
            for (name, value) in policy.preflight_headers(&origin, req.headers()) {
                answer = answer.header(name, value);
            }
            let empty = Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed();
            return finish(log, answer.body(empty).expect("valid preflight answer"));
        }
        let (vary, set): (Vec<_>, Vec<_>) = policy
            .response_headers(&origin)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), value))
            .partition(|(name, _)| name == "vary");
        cors_headers = Some(HeaderModifier {
            set,
            add: vary,
            remove: Vec::new(),
        });
    }
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
    let mirrors: Vec<mirror::Target> = route
        .filters
        .iter()
        .chain(&backend.filters)
        .filter_map(|f| match f {
            Filter::Mirror {
                service,
                port,
                percent,
            } if chance(*percent) => Some((service.clone(), *port)),
            _ => None,
        })
        .collect();
    let req = if mirrors.is_empty() {
        req
    } else {
        Box::pin(mirror::tee(wp, down.peer, down.version, req, mirrors)).await
    };
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
        service: None,
    };
    let mut plan = plan;
    plan.response_filters.extend(cors_headers);
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
    service: &Arc<Service>,
    port: u16,
    req: Request<RequestBody>,
    mut plan: Plan,
    mut log: RequestLog,
) -> Response<Body> {
    if let Some(meter) = &mut log.meter {
        meter.service = Some(service.clone());
    }
    plan.service = Some(service.clone());
    let key = service.key();
    let admitted = match wp.backends.admit(key) {
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
    // How many endpoints the service had at the last pick: outlier
    // detection ejects no more than its share of them.
    let endpoints = std::sync::atomic::AtomicUsize::new(0);
    let pick = || {
        wp.backends
            .pick(&wp.balancer, &wp.state, service, port)
            .map(|(endpoint, load, count)| {
                endpoints.store(count, std::sync::atomic::Ordering::Relaxed);
                (endpoint, Some(load))
            })
            .map_err(|e| e.to_string())
    };
    let record = |endpoint: &Endpoint, ok: bool| {
        wp.backends.record(
            key,
            endpoint.addr,
            ok,
            endpoints.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    send(wp, down, pick, record, req, plan, Some(admitted), log).await
}

/// Why a request is refused before anything else looks at it.
struct Refusal {
    status: StatusCode,
    text: &'static str,
    reason: &'static str,
}

/// Refuses requests whose framing two HTTP/1.1 parsers could read two
/// ways (the request-smuggling shapes hyper does not already refuse:
/// [`framing`]) and heads larger than Envoy's 60 KiB.
fn framing_check<B>(req: &Request<B>, verdict: Option<HeadVerdict>) -> Result<(), Refusal> {
    if let Some(HeadVerdict::Ambiguous(reason)) = verdict {
        return Err(Refusal {
            status: StatusCode::BAD_REQUEST,
            text: "Bad Request",
            reason,
        });
    }
    let headers = req.headers();
    let size: usize = uri_len(req.uri())
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum::<usize>();
    if size > MAX_HEADER_BYTES {
        return Err(Refusal {
            status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            text: "Request Header Fields Too Large",
            reason: "request headers larger than 60 KiB",
        });
    }
    Ok(())
}

/// The length of `uri` as written (`scheme://authority/path?query`),
/// without writing it.
fn uri_len(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |pq| pq.as_str().len())
}

/// The request with its path made canonical (the query kept as sent).
fn canonical_path(
    req: Request<RequestBody>,
    mode: PathNormalization,
) -> Result<Request<RequestBody>, crate::normalize::BadPath> {
    if is_canonical(req.uri().path(), mode) {
        return Ok(req);
    }
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
    /// The service whose host the onward tunnels name in `forwarded`.
    service: Option<Arc<Service>>,
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
    req: Request<RequestBody>,
    route: &Route,
    backend: &Backend,
    version: Version,
) -> Request<RequestBody> {
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
    req: Request<RequestBody>,
    plan: Plan,
    admitted: Option<InFlight>,
    mut log: RequestLog,
) -> Response<Body> {
    // The client's side of a WebSocket switch, taken only once the
    // upstream agrees (101); otherwise `handle` closes it.
    let client_upgrade = (down.version == Version::Http1 && websocket_upgrade(req.headers()))
        .then(|| req.extensions().get::<UpgradeSlot>().cloned())
        .flatten();
    // A gRPC client's deadline bounds the whole exchange.
    let mut plan = plan;
    if let Some(deadline) = log.grpc.then(|| grpc::timeout(req.headers())).flatten() {
        plan.budget.overall = Some(plan.budget.overall.map_or(deadline, |o| o.min(deadline)));
    }
    let tunnel = down.tunnel(wp, plan.service.as_ref().map(|s| s.hostname.as_str()));
    // The route's timeout runs from here to the response's last byte.
    let grpc = log.grpc;
    let deadline = plan
        .budget
        .overall
        .map(|limit| tokio::time::Instant::now() + limit);
    let sent = forward::send(wp, down.version, req, pick, record, &plan.budget, &tunnel).await;
    match sent {
        forward::Sent::Response {
            response,
            upstream,
            attempts,
            held: load,
        } => {
            log.set_upstream(Some(&upstream));
            log.attempts = attempts;
            let mut response = response;
            let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            let taken = switching
                .then(|| client_upgrade.and_then(|slot| slot.take()))
                .flatten();
            let upgrade = match (switching, taken) {
                (true, Some(client)) => {
                    splice_upgrade(client, hyper::upgrade::on(&mut response));
                    response.headers().get(header::UPGRADE).cloned()
                }
                _ => None,
            };
            let (mut parts, body) = response.into_parts();
            // The upstream's connection management is its own hop's
            // (`connection: close` there does not close the client's).
            strip_hop_by_hop(&mut parts.headers);
            if let Some(protocol) = upgrade {
                parts.headers.insert(header::UPGRADE, protocol);
                parts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            for m in &plan.response_filters {
                filters::modify_headers(&mut parts.headers, m);
            }
            finish(
                log,
                Response::from_parts(parts, {
                    let body = Held::new(body, [admitted, load]).map_err(BodyError::from);
                    match deadline {
                        Some(at) if !switching => {
                            BodyExt::boxed(crate::deadline::Deadline::new(body.boxed(), at, grpc))
                        }
                        _ => body.boxed(),
                    }
                }),
            )
        }
        forward::Sent::TimedOut { upstream, attempts } => {
            log.set_upstream(upstream.as_ref());
            log.attempts = attempts;
            log.flags = "UT";
            finish(log, timeout_response())
        }
        forward::Sent::Failed {
            error,
            upstream,
            attempts,
        } => {
            log.set_upstream(upstream.as_ref());
            log.attempts = attempts;
            if matches!(error, forward::ForwardError::NoEndpoint(_)) {
                return no_upstream(log, error.to_string());
            }
            // The client's own body failed (a malformed chunk, or the
            // client went away): the client's fault, not the upstream's.
            if matches!(&error, forward::ForwardError::Http(e) if e.is_user()) {
                log.flags = "DPE";
                log.error = Some(error.to_string());
                return finish(log, local_response(StatusCode::BAD_REQUEST, "Bad Request"));
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
/// 7.6.1).
static HOP_BY_HOP: [header::HeaderName; 8] = [
    header::CONNECTION,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes the hop-by-hop headers, with any the `Connection` header names.
/// One pass over the names finds those present (usually none, or only
/// `connection`), so a request pays for no lookup of an absent one.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; 8];
    for name in headers.keys() {
        // Only names of a hop-by-hop length are compared.
        if !matches!(name.as_str().len(), 2 | 7 | 10 | 16 | 18 | 19) {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if present[0] {
        // Names `Connection` lists beyond the fixed ones (rare): each is
        // removed too.
        let named: Vec<header::HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|token| {
                // The usual tokens first: they name no other header.
                !token.is_empty()
                    && !["keep-alive", "close", "upgrade"]
                        .iter()
                        .any(|usual| token.eq_ignore_ascii_case(usual))
                    && !HOP_BY_HOP
                        .iter()
                        .any(|h| h.as_str().eq_ignore_ascii_case(token))
            })
            .filter_map(|token| header::HeaderName::from_bytes(token.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, present) in HOP_BY_HOP.iter().zip(present) {
        if present {
            headers.remove(name);
        }
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
