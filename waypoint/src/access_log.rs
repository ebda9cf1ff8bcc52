//! One structured line per request, when its response has been sent.
//!
//! Field names follow Istio's access log: `method`, `path`, `protocol`,
//! `response_code`, `response_flags` (Envoy's: `UH` no healthy upstream,
//! `UF` upstream connection failure, `NR` no route, `DC` downstream
//! closed), `bytes_received`, `bytes_sent`, `duration`, `upstream_host`,
//! `route_name`, plus the source's identity and the destination's name. The
//! target is `access`, as ztunnel's connection lines are.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// What is known about one request.
#[derive(Debug)]
pub struct RequestLog {
    pub method: String,
    pub path: String,
    pub protocol: &'static str,
    pub authority: String,
    pub src_addr: Arc<str>,
    pub src_identity: Arc<str>,
    pub destination: Arc<str>,
    pub status: u16,
    pub flags: &'static str,
    pub upstream: Option<String>,
    pub route: String,
    /// Request body bytes, counted as they are read ([`CountedBody`]).
    received: Arc<AtomicU64>,
    pub bytes_sent: u64,
    pub error: Option<String>,
    /// The policy (or ALLOW policies) that denied the request.
    pub policy: Option<String>,
    /// AUDIT policies that matched.
    pub audited: Vec<String>,
    /// Upstream attempts made (retries + 1).
    pub attempts: u32,
    /// A gRPC request.
    pub grpc: bool,
    /// The gRPC status of the answer: the waypoint's own, or the
    /// upstream's (trailers, or headers of a trailers-only answer).
    pub grpc_status: Option<u16>,
    /// The request's metrics, recorded with the line.
    pub meter: Option<crate::telemetry::RequestMeter>,
    /// The request's span, exported with the line.
    pub span: Option<crate::telemetry::RequestSpan>,
    started: Instant,
    written: bool,
}

impl RequestLog {
    pub fn new(
        method: String,
        path: String,
        protocol: &'static str,
        authority: String,
        src_addr: Arc<str>,
        src_identity: Arc<str>,
        destination: Arc<str>,
    ) -> Self {
        Self {
            method,
            path,
            protocol,
            authority,
            src_addr,
            src_identity,
            destination,
            status: 0,
            flags: "-",
            upstream: None,
            route: "default".into(),
            received: Arc::default(),
            bytes_sent: 0,
            error: None,
            policy: None,
            audited: Vec::new(),
            attempts: 0,
            grpc: false,
            grpc_status: None,
            meter: None,
            span: None,
            started: Instant::now(),
            written: false,
        }
    }

    /// The endpoint the request went to (last, if retried).
    pub fn set_upstream(&mut self, endpoint: Option<&weft_proxy::balance::Endpoint>) {
        self.upstream = endpoint.map(|e| e.addr.to_string());
        if let Some(meter) = &mut self.meter {
            meter.destination = endpoint.map(|e| e.workload.clone());
        }
    }

    /// Request body bytes read so far.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// The request body, counted into this log.
    pub fn count_request<B>(&self, body: B) -> CountedBody<B> {
        CountedBody {
            inner: body,
            count: self.received.clone(),
        }
    }

    /// Writes the line (once) and records the request's metrics.
    pub fn write(&mut self) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        let duration = self.started.elapsed();
        if let Some(meter) = self.meter.take() {
            meter.record(self, duration.as_secs_f64() * 1000.0);
        }
        if let Some(span) = self.span.take() {
            span.finish(self);
        }
        tracing::info!(
            target: "access",
            method = %self.method,
            path = %self.path,
            protocol = %self.protocol,
            authority = %self.authority,
            src.addr = %self.src_addr,
            src.identity = %self.src_identity,
            dst.service = %self.destination,
            response_code = self.status,
            response_flags = %self.flags,
            bytes_received = self.bytes_received(),
            bytes_sent = self.bytes_sent,
            duration_ms = duration.as_millis() as u64,
            upstream_host = %self.upstream.as_deref().unwrap_or("-"),
            attempts = self.attempts,
            grpc_status = %self.grpc_status.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            route_name = %self.route,
            policy = %self.policy.as_deref().unwrap_or(""),
            audit = %self.audited.join(","),
            error = %self.error.as_deref().unwrap_or(""),
            "request complete"
        );
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.write();
    }
}

/// A response body that counts what it carries and writes the request's
/// line when it ends (or is dropped half-way, as when the client goes).
pub struct LoggedBody<B> {
    inner: B,
    log: RequestLog,
}

impl<B> LoggedBody<B> {
    pub fn new(inner: B, log: RequestLog) -> Self {
        Self { inner, log }
    }
}

impl<B> Body for LoggedBody<B>
where
    B: Body<Data = Bytes, Error = crate::http::BodyError> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.log.bytes_sent += data.len() as u64;
                }
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.log.grpc_status = Some(code);
                }
            }
            Poll::Ready(Some(Err(err))) => {
                this.log.flags = if err.is::<crate::deadline::ResponseTimeout>() {
                    "UT"
                } else {
                    "UPE"
                };
                this.log.error = Some(err.to_string());
                this.log.write();
            }
            Poll::Ready(None) => this.log.write(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` a header block carries.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A request body that counts the bytes read from it.
pub struct CountedBody<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
