//! HTTP/1.1 from clients, read and answered by the waypoint itself.
//!
//! A connection's requests are read into one buffer that lives as long as
//! the connection: a head is parsed where it lies, its header values are
//! slices of it, and the response head and body are written back with
//! as few writes as the body allows. The common request — HTTP/1.1 with
//! no body, no upgrade and no `Expect` — is served here, with the same
//! [`crate::http::handle`] hyper's connections use. The first request that
//! is anything else (a body, which must stream; an upgrade; HTTP/1.0; a
//! head that does not parse or is large) hands the connection, from that
//! request on and with the bytes already read, to hyper behind the
//! framing watch ([`crate::framing`]), which answers it exactly as it
//! answered every request before.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use futures::FutureExt;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::codec::{self, MAX_HEADERS};
use crate::{
    framing::HeadVerdict,
    http::{Body, Downstream},
    proxy::Waypoint,
};

/// The largest head served here; a larger one goes to hyper, which
/// allows up to the waypoint's 60 KiB.
const OWN_HEAD_LIMIT: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the client connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the response body failed: {0}")]
    Body(#[source] crate::http::BodyError),
    #[error("the response body did not match its Content-Length")]
    Length,
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// Serves the requests of one HTTP/1.1 connection until the client is
/// done.
pub async fn serve<IO>(
    wp: Arc<Waypoint>,
    mut io: IO,
    down: Arc<Downstream>,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut read = BytesMut::new();
    let mut write = Vec::new();
    let mut spans = Vec::new();
    loop {
        let head = loop {
            match parse(&mut read, &mut spans) {
                Ok(Some(head)) => break head,
                // Not a request served here, or a head too large for the
                // buffer: hyper's from here on.
                Err(HandOver) => return hand_over(wp, read, io, down).await,
                Ok(None) if read.len() > OWN_HEAD_LIMIT => {
                    return hand_over(wp, read, io, down).await
                }
                Ok(None) => {
                    let n = std::future::poll_fn(|cx| codec::poll_read_buf(&mut io, cx, &mut read))
                        .await?;
                    if n == 0 {
                        // The client is done (a part of a head with it
                        // is nothing to answer).
                        let _ = io.shutdown().await;
                        return Ok(());
                    }
                }
            }
        };
        let Head {
            request,
            close,
            trailers,
        } = head;
        let head_only = request.method() == Method::HEAD;
        let response = crate::http::handle(&wp, &down, Some(HeadVerdict::Clean), request).await;
        write_response(&mut io, &mut write, response, head_only, close, trailers).await?;
        if close {
            let _ = io.shutdown().await;
            return Ok(());
        }
    }
}

/// Serves the rest of the connection with hyper, from the bytes read.
async fn hand_over<IO>(
    wp: Arc<Waypoint>,
    read: BytesMut,
    io: IO,
    down: Arc<Downstream>,
) -> Result<(), ServeError>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    Ok(crate::http::serve_hyper_h1(wp, Prefixed::new(read.freeze(), io), down).await?)
}

/// The body of a request that has none; boxing it allocates nothing.
pub struct NoBody;

impl http_body::Body for NoBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(0)
    }
}

/// A request as the handler takes it, and how its connection goes on.
struct Head {
    request: Request<NoBody>,
    /// The client asked to close after this request.
    close: bool,
    /// The client takes trailers (`TE: trailers`).
    trailers: bool,
}

/// The request in the buffer is not one served here: hyper reads it.
struct HandOver;

/// Where a head's parts lie in the buffer.
type Spans = Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>;

/// The next request of the buffer, consumed, when it is one served here
/// (`None`: the buffer holds no whole head yet). `spans` is scratch
/// space, kept by the connection.
fn parse(read: &mut BytesMut, spans: &mut Spans) -> Result<Option<Head>, HandOver> {
    // Empty lines before a request are allowed (RFC 9112 §2.2).
    let blank = read
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    read.advance(blank);
    if read.is_empty() {
        return Ok(None);
    }
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let used = match parsed.parse_with_uninit_headers(read, &mut slots) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HandOver),
    };
    if parsed.version != Some(1) {
        return Err(HandOver);
    }
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Err(HandOver);
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(HandOver);
    };
    if method == Method::CONNECT {
        return Err(HandOver);
    }
    let base = read.as_ptr() as usize;
    let target = {
        let at = target.as_ptr() as usize - base;
        at..at + target.len()
    };
    spans.clear();
    let mut facts = codec::HeadFacts::default();
    for h in parsed.headers.iter() {
        facts.see(h.name.as_bytes(), h.value);
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        spans.push((name..name + h.name.len(), value..value + h.value.len()));
    }
    // A body, an upgrade or an expectation: hyper's (with the framing
    // watch), from this request on.
    let bodiless = !facts.transfer_encoding
        && facts.length_fields <= 1
        && !facts.bad_length
        && facts.length.unwrap_or(0) == 0;
    if !bodiless || facts.upgrade || facts.expect {
        return Err(HandOver);
    }
    let head = read.split_to(used).freeze();
    let mut headers = HeaderMap::with_capacity(spans.len());
    for (name, value) in spans.drain(..) {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&head[name]),
            HeaderValue::from_maybe_shared(head.slice(value)),
        ) else {
            return hand_back(read, head);
        };
        headers.append(name, value);
    }
    let Ok(uri) = http::Uri::from_maybe_shared(head.slice(target)) else {
        return hand_back(read, head);
    };
    let (close, trailers) = (facts.close, facts.trailers);
    let mut request = Request::new(NoBody);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = http::Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        close,
        trailers,
    }))
}

/// Puts a consumed head back in front of the buffer, for hyper to read.
fn hand_back(read: &mut BytesMut, head: Bytes) -> Result<Option<Head>, HandOver> {
    let mut whole = BytesMut::with_capacity(head.len() + read.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(read);
    *read = whole;
    Err(HandOver)
}

/// How a response's body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Fixed(u64),
    Chunked,
}

/// Writes `response` as an HTTP/1.1 response and its body; the body is
/// written with its head when it is already there.
async fn write_response<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
    response: Response<Body>,
    head_only: bool,
    close: bool,
    trailers_wanted: bool,
) -> Result<(), ServeError> {
    let (parts, mut body) = response.into_parts();
    out.clear();
    let framing = encode_head(&parts, body.size_hint().exact(), head_only, close, out);
    let mut written = 0u64;
    if framing != Framing::None {
        loop {
            // A frame that is ready joins what is buffered; when none is,
            // what is buffered goes out before waiting.
            let frame = match std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                .now_or_never()
            {
                Some(frame) => frame,
                None => {
                    io.write_all(out).await?;
                    out.clear();
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            match frame {
                None => break,
                Some(Err(err)) => return Err(ServeError::Body(err)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        written += data.len() as u64;
                        match framing {
                            Framing::Fixed(n) if written > n => return Err(ServeError::Length),
                            Framing::Chunked => {
                                use std::io::Write;
                                let _ = write!(out, "{:x}\r\n", data.len());
                                out.extend_from_slice(&data);
                                out.extend_from_slice(b"\r\n");
                            }
                            _ => out.extend_from_slice(&data),
                        }
                        if out.len() >= 64 * 1024 {
                            io.write_all(out).await?;
                            out.clear();
                        }
                        if body.is_end_stream() {
                            break;
                        }
                    }
                    Err(frame) => {
                        if let (Framing::Chunked, true, Ok(trailers)) =
                            (framing, trailers_wanted, frame.into_trailers())
                        {
                            out.extend_from_slice(b"0\r\n");
                            encode_headers(&trailers, out);
                            out.extend_from_slice(b"\r\n");
                            io.write_all(out).await?;
                            out.clear();
                            return Ok(());
                        }
                    }
                },
            }
        }
        match framing {
            Framing::Fixed(n) if written != n => return Err(ServeError::Length),
            Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
            _ => {}
        }
    }
    io.write_all(out).await?;
    out.clear();
    // The body's end (and its access line) once it is all written.
    drop(body);
    Ok(())
}

/// The status line and headers, with the framing hyper's server would
/// choose: the response's own `Transfer-Encoding` or `Content-Length`,
/// else the body's exact length, else chunked; none for a HEAD request,
/// 1xx, 204 and 304. A `date` is added when the response has none.
fn encode_head(
    parts: &http::response::Parts,
    exact: Option<u64>,
    head_only: bool,
    close: bool,
    out: &mut Vec<u8>,
) -> Framing {
    use std::io::Write;
    let status = parts.status;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let headers = &parts.headers;
    let no_body = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // One pass over the headers (no lookups) for what framing they ask.
    let mut facts = codec::HeadFacts::default();
    let mut has_date = false;
    for (name, value) in headers {
        facts.see(name.as_str().as_bytes(), value.as_bytes());
        has_date |= name == header::DATE;
    }
    let chunked = facts.chunked;
    let length = facts.content_length().ok().flatten();
    let framing = if no_body {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Fixed(n)
    } else if let Some(n) = exact {
        let _ = write!(out, "content-length: {n}\r\n");
        Framing::Fixed(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    for (name, value) in headers {
        // A length beside chunked, or on a bodiless status, is dropped.
        if name == header::CONTENT_LENGTH && (chunked || status == StatusCode::NO_CONTENT) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if head_only {
        Framing::None
    } else {
        framing
    }
}

fn encode_headers(headers: &HeaderMap, out: &mut Vec<u8>) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Now as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted once
/// a second per thread.
fn http_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, Vec<u8>)> = const { RefCell::new((u64::MAX, Vec::new())) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    DATE.with_borrow_mut(|(second, text)| {
        if *second != now {
            *second = now;
            text.clear();
            format_http_date(now, text);
        }
        out.extend_from_slice(text);
    });
}

fn format_http_date(secs: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let day = match t.weekday() {
        time::Weekday::Monday => "Mon",
        time::Weekday::Tuesday => "Tue",
        time::Weekday::Wednesday => "Wed",
        time::Weekday::Thursday => "Thu",
        time::Weekday::Friday => "Fri",
        time::Weekday::Saturday => "Sat",
        time::Weekday::Sunday => "Sun",
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS[usize::from(u8::from(t.month())) - 1];
    let _ = write!(
        out,
        "{day}, {:02} {month} {:04} {:02}:{:02}:{:02} GMT",
        t.day(),
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    );
}

/// A stream that first yields bytes already read from it.
pub struct Prefixed<IO> {
    prefix: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    pub fn new(prefix: Bytes, io: IO) -> Self {
        Self { prefix, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which requests are served here, which go to hyper, and what the
    /// handler sees of those served here.
    #[test]
    fn bodiless_http11_requests_are_served_here_and_the_rest_handed_over() {
        // The wire; `Some((method, uri, close))` when served here.
        type Case = (&'static [u8], Option<(&'static str, &'static str, bool)>);
        let cases: &[Case] = &[
            (
                b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
                Some(("GET", "/", false)),
            ),
            (
                b"\r\nGET /x?y=1 HTTP/1.1\r\n\r\n",
                Some(("GET", "/x?y=1", false)),
            ),
            (
                b"HEAD / HTTP/1.1\r\nConnection: close\r\n\r\n",
                Some(("HEAD", "/", true)),
            ),
            (
                b"DELETE /d HTTP/1.1\r\ncontent-length: 0\r\n\r\n",
                Some(("DELETE", "/d", false)),
            ),
            (
                b"GET http://a/b HTTP/1.1\r\n\r\n",
                Some(("GET", "http://a/b", false)),
            ),
            (b"get / HTTP/1.1\r\n\r\n", Some(("get", "/", false))),
            // Bodies stream through hyper, behind the framing watch.
            (b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello", None),
            (
                b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
                None,
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 0\r\n\r\n",
                None,
            ),
            (
                b"GET / HTTP/1.1\r\ncontent-length: 0\r\ntransfer-encoding: chunked\r\n\r\n",
                None,
            ),
            // Upgrades, expectations, HTTP/1.0, CONNECT, malformed heads.
            (
                b"GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
                None,
            ),
            (b"GET / HTTP/1.1\r\nconnection: Upgrade\r\n\r\n", None),
            (b"PUT / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n", None),
            (b"GET / HTTP/1.0\r\n\r\n", None),
            (b"CONNECT a:443 HTTP/1.1\r\n\r\n", None),
            (b"GET / HTTP/1.1\r\nbad header\r\n\r\n", None),
            (b"GET / HTTP/1.1\r\nx: a\r\n b\r\n\r\n", None),
        ];
        for (wire, expected) in cases {
            let mut read = BytesMut::from(&wire[..]);
            let what = String::from_utf8_lossy(wire);
            match (parse(&mut read, &mut Vec::new()), expected) {
                (Ok(Some(head)), Some((method, uri, close))) => {
                    assert_eq!(head.request.method().as_str(), *method, "{what}");
                    assert_eq!(head.request.uri().to_string(), *uri, "{what}");
                    assert_eq!(head.close, *close, "{what}");
                    assert!(read.is_empty(), "{what}: the head is consumed");
                }
                (Err(HandOver), None) => {
                    // Every byte is kept for hyper, the head included.
                    let rest = &wire[wire
                        .iter()
                        .take_while(|b| matches!(b, b'\r' | b'\n'))
                        .count()..];
                    assert_eq!(&read[..], rest, "{what}");
                }
                (Ok(Some(_)), None) => panic!("{what}: served here"),
                (Err(HandOver), Some(_)) => panic!("{what}: handed over"),
                (Ok(None), _) => panic!("{what}: not whole"),
            }
        }
        // A head not yet whole waits for more; the next request of a
        // pipeline stays in the buffer.
        let mut read = BytesMut::from(&b"GET / HTTP/1.1\r\nhost: a\r\n"[..]);
        assert!(matches!(parse(&mut read, &mut Vec::new()), Ok(None)));
        let mut read = BytesMut::from(&b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\n"[..]);
        let first = parse(&mut read, &mut Vec::new()).ok().flatten().unwrap();
        assert_eq!(first.request.uri(), "/1");
        let second = parse(&mut read, &mut Vec::new()).ok().flatten().unwrap();
        assert_eq!(second.request.uri(), "/2");
    }

    #[test]
    fn response_heads_carry_the_framing_hyper_would_choose() {
        // Status, headers, the body's exact length, HEAD, close; the head
        // without its date, and the framing.
        type Case = (
            u16,
            &'static [(&'static str, &'static str)],
            Option<u64>,
            bool,
            bool,
            &'static str,
            Framing,
        );
        let cases: &[Case] = &[
            (200, &[("content-length", "5")], Some(5), false, false,
             "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n", Framing::Fixed(5)),
            (200, &[], Some(3), false, false,
             "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n", Framing::Fixed(3)),
            (200, &[], None, false, false,
             "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n", Framing::Chunked),
            (200, &[("transfer-encoding", "chunked"), ("content-length", "9")], None, false, false,
             "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n", Framing::Chunked),
            (200, &[("content-length", "5")], Some(5), true, false,
             "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n", Framing::None),
            (204, &[("content-length", "0")], Some(0), false, false,
             "HTTP/1.1 204 No Content\r\n", Framing::None),
            (304, &[("etag", "\"x\"")], None, false, false,
             "HTTP/1.1 304 Not Modified\r\netag: \"x\"\r\n", Framing::None),
            (403, &[("content-type", "text/plain")], Some(19), false, true,
             "HTTP/1.1 403 Forbidden\r\ncontent-length: 19\r\ncontent-type: text/plain\r\nconnection: close\r\n",
             Framing::Fixed(19)),
            (599, &[], Some(0), false, false,
             "HTTP/1.1 599 \r\ncontent-length: 0\r\n", Framing::Fixed(0)),
        ];
        for (status, headers, exact, head_only, close, wire, framing) in cases {
            let mut response = Response::builder().status(*status);
            for (name, value) in *headers {
                response = response.header(*name, *value);
            }
            let (parts, ()) = response.body(()).unwrap().into_parts();
            let mut out = Vec::new();
            let got = encode_head(&parts, *exact, *head_only, *close, &mut out);
            let text = String::from_utf8(out).unwrap();
            let without_date: String = text
                .split_inclusive("\r\n")
                .filter(|line| !line.starts_with("date: ") && *line != "\r\n")
                .collect();
            assert_eq!(without_date, *wire, "{status} {headers:?}");
            assert_eq!(got, *framing, "{status} {headers:?}");
            assert!(
                text.contains("\r\ndate: ") && text.ends_with("\r\n\r\n"),
                "{text}"
            );
        }
        // The response's own date is kept.
        let (parts, ()) = Response::builder()
            .header("date", "Sun, 06 Nov 1994 08:49:37 GMT")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        encode_head(&parts, Some(0), false, false, &mut out);
        assert_eq!(String::from_utf8(out).unwrap().matches("date: ").count(), 1);
    }

    #[test]
    fn http_dates_are_imf_fixdates() {
        for (secs, text) in [
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (1_796_515_200, "Sun, 06 Dec 2026 00:00:00 GMT"),
        ] {
            let mut out = Vec::new();
            format_http_date(secs, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[tokio::test]
    async fn a_prefixed_stream_yields_its_prefix_first() {
        use tokio::io::AsyncReadExt;
        let (mut near, far) = tokio::io::duplex(64);
        near.write_all(b" world").await.unwrap();
        drop(near);
        let mut stream = Prefixed::new(Bytes::from_static(b"hello"), far);
        let mut all = String::new();
        stream.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
