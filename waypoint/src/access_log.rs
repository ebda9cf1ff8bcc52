//! One structured line per request, when its response has been sent.
//!
//! Field names follow Istio's access log: `method`, `path`, `protocol`,
//! `response_code`, `response_flags` (Envoy's: `UH` no healthy upstream,
//! `UF` upstream connection failure, `NR` no route, `DC` downstream
//! closed), `bytes_received`, `bytes_sent`, `duration`, `upstream_host`,
//! `route_name`, plus the source's identity and the destination's name. The
//! target is `access`, as ztunnel's connection lines are: `RUST_LOG`
//! filters them as any other (`access=off` silences them).
//!
//! A line is formatted here, in the log's format (text or JSON, as
//! [`set_format`] says), and written to stdout with one write — not
//! through `tracing`'s field visitors, which cost more than the rest of a
//! small request's proxying.

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

/// How access lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// As `tracing`'s text lines: time, level, target, message, then
    /// `key=value` fields.
    #[default]
    Text,
    /// One JSON object per line, as `tracing`'s JSON lines (flattened).
    Json,
}

static FORMAT: std::sync::OnceLock<Format> = std::sync::OnceLock::new();

/// Sets the access lines' format, once, with the rest of the logging.
pub fn set_format(format: Format) {
    let _ = FORMAT.set(format);
}

/// Writes one whole line to standard output with a single `write(2)`,
/// as nginx writes its access log: not through `std::io::Stdout`, whose
/// lock every worker thread would take for every request (measured: it
/// was nearly all of the waypoint's futex calls under load). A line is
/// written whole, so it never interleaves with `tracing`'s lines, which
/// reach the same descriptor a line at a time.
fn write_stdout(line: &[u8]) {
    use std::{io::Write, os::fd::FromRawFd};
    // SAFETY: descriptor 1 is open for the life of the process (standard
    // output); the File is never dropped, so it is borrowed, never closed.
    let stdout = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(1) });
    let _ = (&*stdout).write_all(line);
}

/// What is known about one request.
#[derive(Debug)]
pub struct RequestLog {
    /// As the request's own parts (shared, not copied).
    pub method: http::Method,
    pub path: http::uri::PathAndQuery,
    pub protocol: &'static str,
    pub authority: Option<http::HeaderValue>,
    pub src_addr: Arc<str>,
    pub src_identity: Arc<str>,
    pub destination: Arc<str>,
    pub status: u16,
    pub flags: &'static str,
    pub upstream: Option<std::net::SocketAddr>,
    pub route: String,
    /// Request body bytes, counted as they are read ([`CountedBody`]);
    /// none for a request without a body.
    received: Option<Arc<AtomicU64>>,
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
        method: http::Method,
        path: http::uri::PathAndQuery,
        protocol: &'static str,
        authority: Option<http::HeaderValue>,
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
            received: None,
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
        self.upstream = endpoint.map(|e| e.addr);
        if let Some(meter) = &mut self.meter {
            meter.destination = endpoint.map(|e| e.workload.clone());
        }
    }

    /// Request body bytes read so far.
    pub fn bytes_received(&self) -> u64 {
        self.received
            .as_ref()
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }

    /// The request body, counted into this log.
    pub fn count_request<B>(&mut self, body: B) -> CountedBody<B> {
        let count = self.received.get_or_insert_default().clone();
        CountedBody { inner: body, count }
    }

    /// The authority (or `Host`) the request named, as text.
    pub fn authority(&self) -> &str {
        self.authority
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
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
        if !tracing::enabled!(target: "access", tracing::Level::INFO) {
            return;
        }
        match FORMAT.get().copied().unwrap_or_default() {
            Format::Text => {
                // Formatted into the thread's own buffer, kept from one
                // line to the next.
                thread_local! {
                    static LINE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
                }
                LINE.with_borrow_mut(|line| {
                    line.clear();
                    self.text_line(duration, line);
                    write_stdout(line.as_bytes());
                });
            }
            Format::Json => write_stdout(self.json_line(duration).as_bytes()),
        }
    }

    /// The line's fields, in order.
    fn fields(&self, duration: std::time::Duration) -> [(&'static str, Field<'_>); 19] {
        use Field::{Num, Text};
        [
            ("method", Text(self.method.as_str())),
            ("path", Text(self.path.as_str())),
            ("protocol", Text(self.protocol)),
            ("authority", Text(self.authority())),
            ("src.addr", Text(&self.src_addr)),
            ("src.identity", Text(&self.src_identity)),
            ("dst.service", Text(&self.destination)),
            ("response_code", Num(u64::from(self.status))),
            ("response_flags", Text(self.flags)),
            ("bytes_received", Num(self.bytes_received())),
            ("bytes_sent", Num(self.bytes_sent)),
            ("duration_ms", Num(duration.as_millis() as u64)),
            (
                "upstream_host",
                match self.upstream {
                    Some(addr) => Field::Addr(addr),
                    None => Text("-"),
                },
            ),
            ("attempts", Num(u64::from(self.attempts))),
            (
                "grpc_status",
                match self.grpc_status {
                    Some(code) => Num(u64::from(code)),
                    None => Text("-"),
                },
            ),
            ("route_name", Text(&self.route)),
            ("policy", Text(self.policy.as_deref().unwrap_or(""))),
            ("audit", Field::List(&self.audited)),
            ("error", Text(self.error.as_deref().unwrap_or(""))),
        ]
    }

    fn text_line(&self, duration: std::time::Duration, line: &mut String) {
        timestamp(line);
        line.push_str("  INFO access: request complete");
        for (name, value) in self.fields(duration) {
            line.push(' ');
            line.push_str(name);
            line.push('=');
            match value {
                Field::Text(text) => line.push_str(text),
                Field::Num(n) => push_padded(line, n, 1),
                Field::Addr(addr) => push_addr(line, addr),
                Field::List(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            line.push(',');
                        }
                        line.push_str(item);
                    }
                }
            }
        }
        line.push('\n');
    }

    fn json_line(&self, duration: std::time::Duration) -> String {
        let mut object = serde_json::Map::new();
        let mut time = String::new();
        timestamp(&mut time);
        object.insert("timestamp".into(), time.into());
        object.insert("level".into(), "INFO".into());
        object.insert("message".into(), "request complete".into());
        for (name, value) in self.fields(duration) {
            let value = match value {
                Field::Text(text) => text.into(),
                Field::Num(n) => n.into(),
                Field::Addr(addr) => addr.to_string().into(),
                Field::List(items) => items.join(",").into(),
            };
            object.insert(name.into(), value);
        }
        object.insert("target".into(), "access".into());
        let mut line = serde_json::Value::Object(object).to_string();
        line.push('\n');
        line
    }
}

/// One field's value.
enum Field<'a> {
    Text(&'a str),
    Num(u64),
    Addr(std::net::SocketAddr),
    List(&'a [String]),
}

/// Now, as `tracing`'s lines give it (RFC 3339, UTC, microseconds). The
/// part up to the second is formatted once a second per thread; a line
/// costs the microseconds only.
fn timestamp(out: &mut String) {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    SECOND.with_borrow_mut(|(second, prefix)| {
        if *second != now.as_secs() {
            *second = now.as_secs();
            prefix.clear();
            second_prefix(now.as_secs(), prefix);
        }
        out.push_str(prefix);
    });
    push_padded(out, u64::from(now.subsec_micros()), 6);
    out.push('Z');
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` since the Unix epoch (UTC).
fn second_prefix(secs: u64, out: &mut String) {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    push_padded(out, t.year().max(0) as u64, 4);
    out.push('-');
    push_padded(out, u64::from(u8::from(t.month())), 2);
    out.push('-');
    push_padded(out, u64::from(t.day()), 2);
    out.push('T');
    push_padded(out, u64::from(t.hour()), 2);
    out.push(':');
    push_padded(out, u64::from(t.minute()), 2);
    out.push(':');
    push_padded(out, u64::from(t.second()), 2);
    out.push('.');
}

/// `addr` as `Display` writes it; an IPv4 one digit by digit, without
/// `core::fmt` (which cost a request more than the rest of its line).
fn push_addr(out: &mut String, addr: std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_padded(out, u64::from(octet), 1);
            }
            out.push(':');
            push_padded(out, u64::from(v4.port()), 1);
        }
        std::net::SocketAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// `n` in decimal, zero-padded to `width` digits.
fn push_padded(out: &mut String, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = at.min(digits.len() - width.min(digits.len()));
    for d in &digits[start..] {
        out.push(char::from(*d));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_civil_dates_in_utc() {
        for (secs, expected) in [
            (0, "1970-01-01T00:00:00."),
            (951_782_400, "2000-02-29T00:00:00."),
            (951_868_799, "2000-02-29T23:59:59."),
            (1_709_164_800, "2024-02-29T00:00:00."),
            (1_796_319_901, "2026-12-03T17:45:01."),
            (4_102_444_800, "2100-01-01T00:00:00."),
        ] {
            let mut out = String::new();
            second_prefix(secs, &mut out);
            assert_eq!(out, expected, "{secs}");
        }
        for (n, width, expected) in [
            (0, 1, "0"),
            (7, 6, "000007"),
            (123_456, 6, "123456"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut out = String::new();
            push_padded(&mut out, n, width);
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn timestamps_read_as_tracing_writes_them() {
        use tracing_subscriber::fmt::{format::Writer, time::FormatTime};
        // Equal to the second (retried across a second boundary).
        for _ in 0..3 {
            let mut ours = String::new();
            timestamp(&mut ours);
            let mut theirs = String::new();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .unwrap();
            assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
            if ours[..20] == theirs[..20] {
                assert!(ours.ends_with('Z'));
                return;
            }
        }
        panic!("our timestamps disagree with tracing's");
    }

    fn log() -> RequestLog {
        let mut log = RequestLog::new(
            http::Method::GET,
            http::uri::PathAndQuery::from_static("/a?b=1"),
            "HTTP/1.1",
            Some(http::HeaderValue::from_static("web.shop")),
            "198.18.0.1:4000".into(),
            "spiffe://cluster.local/ns/shop/sa/client".into(),
            "shop/web.shop.svc.cluster.local".into(),
        );
        log.status = 403;
        log.flags = "RBAC";
        log.bytes_sent = 19;
        log.policy = Some("shop/deny-post".into());
        log.audited = vec!["shop/a".into(), "shop/b".into()];
        log.error = Some("said \"no\"".into());
        log.written = true; // not written by Drop in the test
        log
    }

    #[test]
    fn a_text_line_reads_as_the_rest_of_the_log() {
        let mut line = String::new();
        log().text_line(std::time::Duration::from_millis(7), &mut line);
        let (time, rest) = line.split_once("  INFO access: request complete ").unwrap();
        assert!(time.ends_with('Z') && time.contains('T'), "{time:?}");
        assert_eq!(
            rest,
            "method=GET path=/a?b=1 protocol=HTTP/1.1 authority=web.shop \
             src.addr=198.18.0.1:4000 src.identity=spiffe://cluster.local/ns/shop/sa/client \
             dst.service=shop/web.shop.svc.cluster.local response_code=403 response_flags=RBAC \
             bytes_received=0 bytes_sent=19 duration_ms=7 upstream_host=- attempts=0 \
             grpc_status=- route_name=default policy=shop/deny-post audit=shop/a,shop/b \
             error=said \"no\"\n"
        );
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for addr in [
            "198.18.2.3:8080",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.0.1:80",
            "[fd00:198:18::2]:443",
        ] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            let mut out = String::new();
            push_addr(&mut out, addr);
            assert_eq!(out, addr.to_string());
        }
    }

    #[test]
    fn a_json_line_is_one_object_with_the_same_fields() {
        let line = log().json_line(std::time::Duration::from_millis(7));
        assert!(line.ends_with('\n') && !line.trim_end().contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for (key, expected) in [
            ("level", serde_json::json!("INFO")),
            ("target", serde_json::json!("access")),
            ("message", serde_json::json!("request complete")),
            ("path", serde_json::json!("/a?b=1")),
            ("response_code", serde_json::json!(403)),
            ("duration_ms", serde_json::json!(7)),
            ("src.addr", serde_json::json!("198.18.0.1:4000")),
            ("audit", serde_json::json!("shop/a,shop/b")),
            ("error", serde_json::json!("said \"no\"")),
        ] {
            assert_eq!(v[key], expected, "{key} in {line}");
        }
    }
}
