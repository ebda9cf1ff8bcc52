//! HTTP/1.1 to an upstream, spoken by the request's own task.
//!
//! hyper's client runs every connection as a task of its own: a request is
//! handed to it over a channel, its head cloned into the connection's
//! queue, and the response head and each body chunk come back over
//! others — a task hand-off each way and a future of several kilobytes,
//! for every request. Here the request's task writes the request and
//! reads the response head itself; the response body ([`ResponseBody`])
//! reads from the connection as the client takes it, and hands the
//! connection back to the pool once its last byte is read. Only requests
//! whose body is already whole (none, or kept for retries) are sent this
//! way; a body that streams, and an upgrade, go through hyper.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{header, request, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;

use super::codec::{self, Chunk, ChunkedDecoder, FramingError, Length, MAX_HEADERS};
use crate::{
    http_pool::{HttpPool, PoolKey},
    upstream::UpstreamIo,
};

/// The largest response head read.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("writing the request: {0}")]
    Write(#[source] std::io::Error),
    #[error("reading the response: {0}")]
    Read(#[source] std::io::Error),
    /// The connection ended before a whole response head.
    #[error("the upstream closed the connection before a whole response head")]
    Closed {
        /// Whether any byte of a response had arrived.
        partial: bool,
    },
    #[error("the upstream's response is not valid HTTP/1.1: {0}")]
    Invalid(&'static str),
    #[error("the upstream's response head is larger than 64 KiB")]
    HeadTooLarge,
    #[error("the upstream's response body: {0}")]
    Framing(#[from] FramingError),
    #[error("the upstream's response body ended early")]
    Incomplete,
}

impl ClientError {
    /// The connection was already closed when the request went out (a
    /// kept connection the server closed while it was idle): nothing was
    /// answered, and a request that can be repeated may go again on a new
    /// connection.
    pub fn stale(&self) -> bool {
        matches!(self, ClientError::Closed { partial: false })
            || matches!(self, ClientError::Write(e) | ClientError::Read(e)
                if matches!(e.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted))
    }
}

/// An HTTP/1.1 connection to an endpoint, between exchanges.
pub struct Conn {
    io: UpstreamIo,
    /// What was read and not yet consumed.
    read: BytesMut,
    /// The request being written, reused from one request to the next.
    write: Vec<u8>,
    /// Where a response head's names and values lie, reused likewise.
    spans: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>,
}

impl Conn {
    pub fn new(io: UpstreamIo) -> Self {
        Self {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            spans: Vec::new(),
        }
    }

    /// Whether a kept connection can take a request now: the server has
    /// neither closed it nor sent anything unasked.
    pub fn is_idle(&mut self) -> bool {
        if !self.read.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            codec::poll_read_buf(&mut self.io, &mut cx, &mut self.read),
            Poll::Pending
        )
    }

    /// Sends a request whose body is whole (`body`, possibly empty) and
    /// reads the response head. The body reads on from the connection,
    /// which goes back to `pool` under `key` once the response is read
    /// whole, when the server keeps it.
    pub async fn send(
        mut self: Box<Self>,
        head: &request::Parts,
        body: &Bytes,
        pool: &Arc<HttpPool>,
        key: PoolKey,
    ) -> Result<Response<ResponseBody>, ClientError> {
        self.write.clear();
        encode_request(head, body, &mut self.write);
        if body.len() <= 16 * 1024 {
            self.write.extend_from_slice(body);
            self.io
                .write_all(&self.write)
                .await
                .map_err(ClientError::Write)?;
        } else {
            self.io
                .write_all(&self.write)
                .await
                .map_err(ClientError::Write)?;
            self.io.write_all(body).await.map_err(ClientError::Write)?;
        }
        if codec::is_chunked(&head.headers) && !body.is_empty() {
            self.io
                .write_all(b"\r\n0\r\n\r\n")
                .await
                .map_err(ClientError::Write)?;
        }
        self.io.flush().await.map_err(ClientError::Write)?;
        let mut read_any = false;
        loop {
            if let Some((response, facts)) = self.parse_head()? {
                if response.status().is_informational() {
                    // 100 Continue, 103 Early Hints: the answer follows.
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                        return Err(ClientError::Invalid(
                            "101 to a request that asked no upgrade",
                        ));
                    }
                    continue;
                }
                return Ok(self.into_response(response, facts, &head.method, pool, key));
            }
            if self.read.len() > MAX_HEAD {
                return Err(ClientError::HeadTooLarge);
            }
            let n =
                std::future::poll_fn(|cx| codec::poll_read_buf(&mut self.io, cx, &mut self.read))
                    .await
                    .map_err(ClientError::Read)?;
            if n == 0 {
                return Err(ClientError::Closed {
                    partial: read_any || !self.read.is_empty(),
                });
            }
            read_any = true;
        }
    }

    /// A whole response head from the buffer, consumed, if one is there.
    fn parse_head(&mut self) -> Result<Option<(Response<()>, codec::HeadFacts)>, ClientError> {
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let used = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &self.read,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ClientError::Invalid("more than 100 headers"))
            }
            Err(_) => return Err(ClientError::Invalid("a malformed head")),
        };
        let status = parsed
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(ClientError::Invalid("a malformed status"))?;
        let version = match parsed.version {
            Some(1) => http::Version::HTTP_11,
            _ => http::Version::HTTP_10,
        };
        // Offsets first, then the head is split off and frozen, so every
        // value is a slice of it rather than a copy.
        let base = self.read.as_ptr() as usize;
        self.spans.clear();
        let mut facts = codec::HeadFacts::default();
        for h in parsed.headers.iter() {
            facts.see(h.name.as_bytes(), h.value);
            let name = h.name.as_ptr() as usize - base;
            let value = h.value.as_ptr() as usize - base;
            self.spans
                .push((name..name + h.name.len(), value..value + h.value.len()));
        }
        let head = self.read.split_to(used).freeze();
        let mut headers = HeaderMap::with_capacity(self.spans.len());
        for (name, value) in self.spans.drain(..) {
            let name = HeaderName::from_bytes(&head[name])
                .map_err(|_| ClientError::Invalid("a malformed header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value))
                .map_err(|_| ClientError::Invalid("a malformed header value"))?;
            headers.append(name, value);
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        Ok(Some((response, facts)))
    }

    fn into_response(
        self: Box<Self>,
        response: Response<()>,
        facts: codec::HeadFacts,
        method: &Method,
        pool: &Arc<HttpPool>,
        key: PoolKey,
    ) -> Response<ResponseBody> {
        let status = response.status();
        // RFC 9112 §6.3, in order.
        let length = if method == Method::HEAD
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            Ok(Length::Empty)
        } else if facts.transfer_encoding {
            Ok(if facts.chunked {
                Length::Chunked
            } else {
                Length::UntilClose
            })
        } else {
            match facts.content_length() {
                Ok(Some(0)) => Ok(Length::Empty),
                Ok(Some(n)) => Ok(Length::Fixed(n)),
                Ok(None) => Ok(Length::UntilClose),
                Err(e) => Err(e),
            }
        };
        let keep_alive = match response.version() {
            http::Version::HTTP_11 => !facts.close,
            _ => facts.keep_alive,
        };
        let until_close = length == Ok(Length::UntilClose);
        let (decoding, error) = match length {
            Ok(Length::Empty) => (Decoding::Done, None),
            Ok(Length::Fixed(n)) => (Decoding::Fixed(n), None),
            Ok(Length::Chunked) => (Decoding::Chunked(ChunkedDecoder::default()), None),
            Ok(Length::UntilClose) => (Decoding::UntilClose, None),
            Err(e) => (Decoding::Done, Some(e)),
        };
        let reusable = keep_alive && error.is_none() && !until_close;
        let mut body = ResponseBody {
            conn: Some(self),
            decoding,
            error,
            release: reusable.then(|| (pool.clone(), key)),
        };
        if matches!(body.decoding, Decoding::Done) && body.error.is_none() {
            body.finish();
        }
        response.map(|()| body)
    }
}

/// The request head, as hyper's client would have written it: the target
/// as given, the headers in order, and framing for a whole body (an
/// empty one has none, a `Transfer-Encoding` the client sent is kept and
/// the body sent as one chunk, else its length is given).
fn encode_request(head: &request::Parts, body: &Bytes, out: &mut Vec<u8>) {
    use std::io::Write;
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    match (head.uri.scheme(), head.uri.path_and_query()) {
        (None, Some(pq)) => out.extend_from_slice(pq.as_str().as_bytes()),
        _ => {
            let _ = write!(out, "{}", head.uri);
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let chunked = !body.is_empty() && codec::is_chunked(&head.headers);
    for (name, value) in &head.headers {
        if name == header::TRANSFER_ENCODING && !chunked {
            continue;
        }
        if name == header::CONTENT_LENGTH && chunked {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() && !chunked && !head.headers.contains_key(header::CONTENT_LENGTH) {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    if chunked {
        let _ = write!(out, "{:x}\r\n", body.len());
    }
}

enum Decoding {
    Fixed(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// A response body read straight from its connection.
pub struct ResponseBody {
    /// Until the body is read whole (or fails).
    conn: Option<Box<Conn>>,
    decoding: Decoding,
    /// A framing error found in the head, reported on the first read.
    error: Option<FramingError>,
    /// Where the connection goes once the body is read, if it is kept.
    release: Option<(Arc<HttpPool>, PoolKey)>,
}

impl ResponseBody {
    /// The body is read whole: the connection goes back to the pool
    /// (unless the server sent more than its response).
    fn finish(&mut self) {
        self.decoding = Decoding::Done;
        let conn = self.conn.take();
        if let (Some(conn), Some((pool, key))) = (conn, self.release.take()) {
            if conn.read.is_empty() {
                pool.keep_own(key, conn);
            }
        }
    }

    fn fail(&mut self, error: ClientError) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        self.decoding = Decoding::Done;
        self.conn = None;
        self.release = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = ClientError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        let this = &mut *self;
        if let Some(error) = this.error.take() {
            return this.fail(error.into());
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buffered = !conn.read.is_empty();
            match &mut this.decoding {
                Decoding::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Decoding::Fixed(left) if buffered => {
                    let n = (*left).min(conn.read.len() as u64);
                    let data = conn.read.split_to(n as usize).freeze();
                    *left -= n;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoding::UntilClose if buffered => {
                    let data = conn.read.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoding::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(Chunk::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Chunk::End(trailers)) => {
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Chunk::More) => {}
                    Err(e) => return this.fail(e.into()),
                },
                Decoding::Fixed(_) | Decoding::UntilClose => {}
            }
            // Nothing whole in the buffer: read more.
            let conn = this.conn.as_mut().expect("checked above");
            let n = match std::task::ready!(codec::poll_read_buf(&mut conn.io, cx, &mut conn.read))
            {
                Ok(n) => n,
                Err(e) => return this.fail(ClientError::Read(e)),
            };
            if n == 0 {
                if matches!(this.decoding, Decoding::UntilClose) {
                    this.decoding = Decoding::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                return this.fail(ClientError::Incomplete);
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.decoding, Decoding::Done) && self.error.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoding {
            Decoding::Fixed(left) => SizeHint::with_exact(left),
            Decoding::Done if self.error.is_none() => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
    };

    use crate::http::Version;

    /// What an upstream does with one connection: reads one request head
    /// (and its body), answers `reply`, then closes or keeps it open.
    struct Upstream {
        addr: std::net::SocketAddr,
        /// Each request as the upstream read it.
        requests: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    }

    /// An upstream on loopback answering each request on a connection with
    /// the next of `replies`; `close` ends the connection after the last.
    async fn upstream(replies: Vec<&'static [u8]>, close: bool) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, requests) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (replies, tx) = (replies.clone(), tx.clone());
                tokio::spawn(async move {
                    for reply in &replies {
                        let mut seen = Vec::new();
                        let mut chunk = [0u8; 4096];
                        // A head, and a body its Content-Length or chunked
                        // coding announces.
                        loop {
                            let n = stream.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            seen.extend_from_slice(&chunk[..n]);
                            if request_complete(&seen) {
                                break;
                            }
                        }
                        let _ = tx.send(seen);
                        stream.write_all(reply).await.unwrap();
                    }
                    if !close {
                        let mut rest = Vec::new();
                        let _ = stream.read_to_end(&mut rest).await;
                    }
                });
            }
        });
        Upstream { addr, requests }
    }

    fn request_complete(seen: &[u8]) -> bool {
        let text = String::from_utf8_lossy(seen);
        let Some(end) = text.find("\r\n\r\n") else {
            return false;
        };
        let head = text[..end].to_ascii_lowercase();
        let body = &text[end + 4..];
        if head.contains("transfer-encoding: chunked") {
            return body.ends_with("0\r\n\r\n");
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |n| n.trim().parse::<usize>().unwrap());
        body.len() >= length
    }

    fn key(addr: std::net::SocketAddr) -> PoolKey {
        PoolKey::new(addr, Version::Http1, "test".into())
    }

    async fn connect(addr: std::net::SocketAddr) -> Box<Conn> {
        Box::new(Conn::new(UpstreamIo::Plain(
            TcpStream::connect(addr).await.unwrap(),
        )))
    }

    fn head(method: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = http::Request::builder().method(method).uri("/path?q=1");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    /// What one exchange gave: status, body, trailers, whether the
    /// connection went back to the pool.
    async fn exchange(
        upstream: &Upstream,
        head: &request::Parts,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>, Option<HeaderMap>, bool), ClientError> {
        let pool = Arc::new(HttpPool::default());
        let conn = connect(upstream.addr).await;
        let response = conn
            .send(
                head,
                &Bytes::copy_from_slice(body),
                &pool,
                key(upstream.addr),
            )
            .await?;
        let status = response.status().as_u16();
        let collected = response.into_body().collect().await?;
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes().to_vec();
        let kept = pool.take_own(&key(upstream.addr)).is_some();
        Ok((status, body, trailers, kept))
    }

    #[tokio::test]
    async fn responses_are_read_by_their_framing_and_kept_when_they_may_be() {
        /// Method, reply, whether the server closes after it; then the
        /// status, body and whether the connection is kept.
        type Case = (&'static str, &'static [u8], bool, u16, &'static [u8], bool);
        let cases: &[Case] = &[
            ("GET", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false, 200, b"hello", true),
            (
                "GET",
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                false,
                200,
                b"hello world",
                true,
            ),
            ("GET", b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true, 200, b"until the end", false),
            (
                "GET",
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                true,
                200,
                b"ok",
                false,
            ),
            (
                "GET",
                b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
                true,
                200,
                b"ok",
                false,
            ),
            (
                "GET",
                b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
                false,
                200,
                b"ok",
                true,
            ),
            ("HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false, 200, b"", true),
            ("GET", b"HTTP/1.1 204 No Content\r\n\r\n", false, 204, b"", true),
            ("GET", b"HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n", false, 304, b"", true),
            (
                "GET",
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nx",
                false,
                201,
                b"x",
                true,
            ),
            (
                "GET",
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA",
                false,
                200,
                b"ok",
                false,
            ),
        ];
        for (method, reply, close, status, body, kept) in cases {
            let upstream = upstream(vec![reply], *close).await;
            let got = exchange(&upstream, &head(method, &[("host", "web")]), b"")
                .await
                .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(reply)));
            let what = String::from_utf8_lossy(reply);
            assert_eq!(got.0, *status, "{what}");
            assert_eq!(got.1, *body, "{what}");
            assert_eq!(got.3, *kept, "{what}");
        }
    }

    #[tokio::test]
    async fn trailers_of_a_chunked_response_are_a_frame() {
        let upstream = upstream(
            vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nx-checksum: 7\r\n\r\n"],
            false,
        )
        .await;
        let (_, body, trailers, kept) = exchange(&upstream, &head("GET", &[]), b"").await.unwrap();
        assert_eq!(body, b"ok");
        assert_eq!(trailers.unwrap()["x-checksum"], "7");
        assert!(kept);
    }

    #[tokio::test]
    async fn broken_responses_are_errors_and_never_kept() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "before a whole response head"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-le",
                "before a whole response head",
            ),
            (b"NOT HTTP AT ALL\r\n\r\n", "not valid HTTP/1.1"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
                "invalid Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello",
                "ended early",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "invalid chunk size",
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
                "asked no upgrade",
            ),
        ];
        for (reply, error) in cases {
            let upstream = upstream(vec![reply], true).await;
            let got = exchange(&upstream, &head("GET", &[]), b"").await;
            let what = String::from_utf8_lossy(reply);
            match got {
                Err(e) => assert!(e.to_string().contains(error), "{what}: {e}"),
                Ok(r) => panic!("{what}: answered {r:?}"),
            }
        }
        // Only a connection closed before any answer is stale (the
        // request may go again on a new one).
        let upstream = upstream(vec![b""], true).await;
        let err = exchange(&upstream, &head("GET", &[]), b"")
            .await
            .unwrap_err();
        assert!(err.stale(), "{err}");
        let upstream = self::upstream(vec![b"HTTP/1.1 2"], true).await;
        let err = exchange(&upstream, &head("GET", &[]), b"")
            .await
            .unwrap_err();
        assert!(!err.stale(), "{err}");
    }

    #[tokio::test]
    async fn requests_are_written_with_the_framing_of_their_whole_body() {
        /// Method, headers, whole body; what the upstream reads.
        type Case = (
            &'static str,
            &'static [(&'static str, &'static str)],
            &'static [u8],
            &'static str,
        );
        let cases: &[Case] = &[
            ("GET", &[("host", "web")], b"", "GET /path?q=1 HTTP/1.1\r\nhost: web\r\n\r\n"),
            (
                "POST",
                &[("host", "web")],
                b"abc",
                "POST /path?q=1 HTTP/1.1\r\nhost: web\r\ncontent-length: 3\r\n\r\nabc",
            ),
            (
                "POST",
                &[("content-length", "3")],
                b"abc",
                "POST /path?q=1 HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc",
            ),
            (
                "POST",
                &[("transfer-encoding", "chunked"), ("content-length", "3")],
                b"abc",
                "POST /path?q=1 HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            ),
            (
                "POST",
                &[("transfer-encoding", "chunked")],
                b"",
                "POST /path?q=1 HTTP/1.1\r\n\r\n",
            ),
        ];
        for (method, headers, body, wire) in cases {
            let mut upstream = upstream(vec![b"HTTP/1.1 204 No Content\r\n\r\n"], false).await;
            exchange(&upstream, &head(method, headers), body)
                .await
                .unwrap();
            let seen = upstream.requests.recv().await.unwrap();
            assert_eq!(String::from_utf8_lossy(&seen), *wire);
        }
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closed_is_not_taken() {
        let upstream = upstream(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"], true).await;
        let pool = Arc::new(HttpPool::default());
        let response = connect(upstream.addr)
            .await
            .send(&head("GET", &[]), &Bytes::new(), &pool, key(upstream.addr))
            .await
            .unwrap();
        assert!(http_body::Body::is_end_stream(response.body()));
        // The server closes once it has answered: by the time the
        // connection is wanted again, it is known to be gone.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(pool.take_own(&key(upstream.addr)).is_none());
        // One that stays open is taken, and serves again.
        let upstream = self::upstream(
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na",
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb",
            ],
            false,
        )
        .await;
        let response = connect(upstream.addr)
            .await
            .send(&head("GET", &[]), &Bytes::new(), &pool, key(upstream.addr))
            .await
            .unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "a"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let again = pool.take_own(&key(upstream.addr)).expect("kept");
        let response = again
            .send(&head("GET", &[]), &Bytes::new(), &pool, key(upstream.addr))
            .await
            .unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "b"
        );
    }
}
