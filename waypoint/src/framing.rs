//! HTTP/1.1 request framing as it streams to hyper, read a second time.
//!
//! hyper reads a request with both `Content-Length` and
//! `Transfer-Encoding` by the latter (RFC 9112 §6.3) and closes the
//! connection after it; a proxy in front of the waypoint may have read it
//! by the former — the classic request-smuggling shape. Envoy refuses such
//! requests with 400, and so does the waypoint: [`Watched`] follows the
//! framing of every request on the connection (heads, fixed and chunked
//! bodies) as hyper reads it, and queues one [`HeadVerdict`] per request head,
//! which the request's handler takes in order. Once a connection may have
//! switched protocols (an upgrade, CONNECT), or its framing can no longer
//! be followed (which hyper refuses on its own), the watch stops and
//! requests carry no verdict.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest head followed; hyper refuses larger ones itself.
/// The head buffer a connection keeps between requests; a larger one is
/// freed once its head is read.
const KEPT_HEAD: usize = 4096;
const MAX_HEAD: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadVerdict {
    Clean,
    /// Framing two parsers could read two ways: why.
    Ambiguous(&'static str),
}

/// The verdicts of one connection's requests, oldest first.
#[derive(Clone, Default)]
pub struct Verdicts(Arc<Mutex<VecDeque<HeadVerdict>>>);

impl Verdicts {
    /// The next request's verdict (`None` once the watch has stopped).
    pub fn next(&self) -> Option<HeadVerdict> {
        self.0.lock().expect("verdicts lock").pop_front()
    }

    fn push(&self, verdict: HeadVerdict) {
        self.0.lock().expect("verdicts lock").push_back(verdict);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Head,
    Fixed(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data: bytes of it still expected.
    ChunkEnd(u8),
    Trailers,
    Off,
}

/// Follows the framing of a stream of requests.
struct Tracker {
    state: State,
    /// The head or line being read.
    line: Vec<u8>,
    verdicts: Verdicts,
}

impl Tracker {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => {
                    // Empty lines before a request are allowed.
                    if self.line.is_empty() {
                        let skip = data
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        data = &data[skip..];
                        if data.is_empty() {
                            return;
                        }
                    }
                    let from = self.line.len().saturating_sub(3);
                    self.line.extend_from_slice(data);
                    match find(&self.line[from..], b"\r\n\r\n") {
                        Some(at) => {
                            let end = from + at + 4;
                            let rest_start = data.len() - (self.line.len() - end);
                            // Taken and given back: the buffer is reused
                            // by the next request's head, unless one large
                            // head grew it (an idle connection keeps little).
                            let mut head = std::mem::take(&mut self.line);
                            self.state = self.on_head(&head[..end]);
                            if head.capacity() <= KEPT_HEAD {
                                head.clear();
                                self.line = head;
                            }
                            data = &data[rest_start..];
                        }
                        None if self.line.len() > MAX_HEAD => self.state = State::Off,
                        None => return,
                    }
                }
                State::Fixed(left) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = if n == left {
                        State::Head
                    } else {
                        State::Fixed(left - n)
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let Some(at) = data.iter().position(|b| *b == b'\n') else {
                        self.line.extend_from_slice(data);
                        if self.line.len() > 4096 {
                            self.state = State::Off;
                        }
                        return;
                    };
                    self.line.extend_from_slice(&data[..at]);
                    data = &data[at + 1..];
                    let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
                    let next = if self.state == State::Trailers {
                        if line.is_empty() {
                            State::Head
                        } else {
                            State::Trailers
                        }
                    } else {
                        match chunk_size(line) {
                            Some(0) => State::Trailers,
                            Some(size) => State::ChunkData(size),
                            None => State::Off,
                        }
                    };
                    self.line.clear();
                    self.state = next;
                }
                State::ChunkData(left) => {
                    let n = left.min(data.len() as u64);
                    data = &data[n as usize..];
                    self.state = if n == left {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(left - n)
                    };
                }
                State::ChunkEnd(left) => {
                    let n = (left as usize).min(data.len());
                    data = &data[n..];
                    self.state = if n == left as usize {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(left - n as u8)
                    };
                }
            }
        }
    }

    /// Judges one head and says what follows it.
    fn on_head(&mut self, head: &[u8]) -> State {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let Ok(httparse::Status::Complete(_)) = req.parse(head) else {
            return State::Off;
        };
        let named = |name: &str| {
            req.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect::<Vec<_>>()
        };
        let te = named("transfer-encoding");
        let cl = named("content-length");
        if !te.is_empty() && !cl.is_empty() {
            self.verdicts.push(HeadVerdict::Ambiguous(
                "both Content-Length and Transfer-Encoding (a request-smuggling shape)",
            ));
            // hyper closes the connection after this request.
            return State::Off;
        }
        self.verdicts.push(HeadVerdict::Clean);
        if req.method == Some("CONNECT") || !named("upgrade").is_empty() {
            return State::Off;
        }
        if let Some(last) = te.last() {
            let chunked = std::str::from_utf8(last)
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
            return if chunked {
                State::ChunkSize
            } else {
                State::Off
            };
        }
        match cl.first() {
            None => State::Head,
            Some(value) => match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                Some(0) => State::Head,
                Some(n) => State::Fixed(n),
                None => State::Off,
            },
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A chunk-size line's size (extensions after `;` ignored).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(line).ok()?;
    let size = text.split(';').next()?.trim();
    if size.is_empty() || size.len() > 16 {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

/// An HTTP/1.1 connection whose requests' framing is followed as hyper
/// reads them.
pub struct Watched<IO> {
    inner: IO,
    tracker: Tracker,
}

/// Watches `io`; the verdicts come out in request order.
pub fn watch<IO>(io: IO) -> (Watched<IO>, Verdicts) {
    let verdicts = Verdicts::default();
    let watched = Watched {
        inner: io,
        tracker: Tracker {
            state: State::Head,
            line: Vec::new(),
            verdicts: verdicts.clone(),
        },
    };
    (watched, verdicts)
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.tracker.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts_of(pieces: &[&str]) -> Vec<HeadVerdict> {
        let (_, verdicts) = watch(());
        let mut tracker = Tracker {
            state: State::Head,
            line: Vec::new(),
            verdicts: verdicts.clone(),
        };
        for piece in pieces {
            tracker.feed(piece.as_bytes());
        }
        std::iter::from_fn(|| verdicts.next()).collect()
    }

    #[test]
    fn each_request_gets_a_verdict_however_its_bytes_arrive() {
        use HeadVerdict::*;
        let smuggle = "POST /a HTTP/1.1\r\nHost: w\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        let fixed = "POST /b HTTP/1.1\r\nHost: w\r\nContent-Length: 11\r\n\r\nhello\r\n\r\nxy";
        let chunked = "POST /c HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n\
                       5;ext=1\r\nhello\r\n1\r\n\n\r\n0\r\nTrailer: t\r\n\r\n";
        let get = "GET /d HTTP/1.1\r\nHost: w\r\n\r\n";
        let ambiguous =
            Ambiguous("both Content-Length and Transfer-Encoding (a request-smuggling shape)");
        let cases: Vec<(Vec<String>, Vec<HeadVerdict>)> = vec![
            (vec![get.into()], vec![Clean]),
            (vec![smuggle.into()], vec![ambiguous]),
            // Bodies that look like requests are bodies.
            (vec![format!("{fixed}{get}")], vec![Clean, Clean]),
            (vec![format!("{chunked}{get}")], vec![Clean, Clean]),
            // A later smuggling head is found behind clean requests...
            (
                vec![format!("{get}{fixed}{chunked}{smuggle}")],
                vec![Clean, Clean, Clean, ambiguous],
            ),
            // ...whatever the reads cut the bytes into.
            (
                format!("\r\n{chunked}{fixed}{smuggle}")
                    .as_bytes()
                    .chunks(3)
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect(),
                vec![Clean, Clean, ambiguous],
            ),
            // Header names compare case-insensitively.
            (
                vec![
                    "POST / HTTP/1.1\r\ncontent-length: 1\r\nTRANSFER-ENCODING: chunked\r\n\r\n"
                        .into(),
                ],
                vec![ambiguous],
            ),
            // After an upgrade, or a bad chunk size, the watch stops.
            (
                vec![format!(
                    "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n{smuggle}"
                )],
                vec![Clean],
            ),
            (
                vec![format!(
                    "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{smuggle}"
                )],
                vec![Clean],
            ),
        ];
        for (pieces, expected) in cases {
            let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
            assert_eq!(verdicts_of(&pieces), expected, "{pieces:?}");
        }
    }

    #[test]
    fn chunk_sizes_are_hexadecimal_with_optional_extensions() {
        let cases: [(&str, Option<u64>); 6] = [
            ("a", Some(10)),
            ("1F;name=value", Some(31)),
            ("0", Some(0)),
            ("zz", None),
            ("", None),
            ("11111111111111111", None),
        ];
        for (line, expected) in cases {
            assert_eq!(chunk_size(line.as_bytes()), expected, "{line:?}");
        }
    }
}
