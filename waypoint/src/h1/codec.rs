//! What both ends of the waypoint's own HTTP/1.1 share: reading into a
//! connection's buffer, a message's body length (RFC 9112 §6.3) and the
//! chunked coding.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, ReadBuf};

/// The most headers a head may carry (hyper's limit, and so the waypoint's
/// until now).
pub const MAX_HEADERS: usize = 100;

/// How much is read at a time.
const READ_CHUNK: usize = 8 * 1024;

/// Reads what `io` has into the spare capacity of `buf`: the byte count
/// (0 at the end of the stream).
pub fn poll_read_buf<IO: AsyncRead + Unpin>(
    io: &mut IO,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    let spare = buf.spare_capacity_mut();
    let mut read = ReadBuf::uninit(spare);
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    let n = read.filled().len();
    // SAFETY: `ReadBuf` hands out only the spare capacity and reports
    // how many bytes of it the reader initialized; those `n` bytes, right
    // after the buffer's length, are now written.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Length {
    /// No body at all.
    Empty,
    Fixed(u64),
    Chunked,
    /// Until the connection closes (a response only).
    UntilClose,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FramingError {
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("invalid or oversized chunked trailers")]
    Trailers,
}

/// The one `Content-Length` of `headers` (several must agree), if any.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, FramingError> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
                return Err(FramingError::ContentLength);
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(FramingError::ContentLength)?;
            if length.is_some_and(|l| l != n) {
                return Err(FramingError::ContentLength);
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether the last coding `Transfer-Encoding` names is `chunked`.
pub fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether `Connection` lists `token`.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// What a head's framing and connection headers say, gathered while its
/// header map is built (one pass over the names; no lookups afterwards).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeadFacts {
    /// `Content-Length` fields seen, and the length they agree on.
    pub length_fields: u32,
    pub length: Option<u64>,
    /// A `Content-Length` that is not digits, or two that disagree.
    pub bad_length: bool,
    pub transfer_encoding: bool,
    /// `chunked` is the last coding of the last `Transfer-Encoding`.
    pub chunked: bool,
    /// `Connection` tokens.
    pub close: bool,
    pub keep_alive: bool,
    /// An `Upgrade` field, or `Connection: upgrade`.
    pub upgrade: bool,
    pub expect: bool,
    /// `TE: trailers`.
    pub trailers: bool,
}

impl HeadFacts {
    /// Takes note of one header field.
    pub fn see(&mut self, name: &[u8], value: &[u8]) {
        let tokens = || value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
        match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                self.length_fields += 1;
                for part in tokens() {
                    let n = (!part.is_empty()
                        && part.len() <= 19
                        && part.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                    .flatten();
                    match (n, self.length) {
                        (None, _) => self.bad_length = true,
                        (Some(n), Some(seen)) if n != seen => self.bad_length = true,
                        (Some(n), _) => self.length = Some(n),
                    }
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                self.transfer_encoding = true;
                self.chunked = tokens()
                    .next_back()
                    .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"));
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in tokens() {
                    if token.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if token.eq_ignore_ascii_case(b"upgrade") {
                        self.upgrade = true;
                    }
                }
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => self.upgrade = true,
            6 if name.eq_ignore_ascii_case(b"expect") => self.expect = true,
            2 if name.eq_ignore_ascii_case(b"te") => {
                self.trailers |= tokens().any(|t| t.eq_ignore_ascii_case(b"trailers"));
            }
            _ => {}
        }
    }

    /// The length the `Content-Length` fields give (none, or an error when
    /// they are malformed or disagree).
    pub fn content_length(&self) -> Result<Option<u64>, FramingError> {
        match self.bad_length {
            true => Err(FramingError::ContentLength),
            false => Ok(self.length),
        }
    }
}

/// The largest chunk size line or trailer section followed.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// What the chunked decoder found in the buffer.
#[derive(Debug, PartialEq)]
pub enum Chunk {
    Data(Bytes),
    /// The last chunk and the trailers after it (possibly none): the body
    /// is complete.
    End(Option<HeaderMap>),
    /// The buffer holds no whole piece yet: read more.
    More,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
    Done,
}

/// Decodes a chunked body from a connection's buffer, consuming what it
/// decodes.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: ChunkState::Size,
        }
    }
}

impl ChunkedDecoder {
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, FramingError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
                        if buf.len() > MAX_LINE {
                            return Err(FramingError::ChunkSize);
                        }
                        return Ok(Chunk::More);
                    };
                    let size = chunk_size(&buf[..end])?;
                    buf.advance(end + 1);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Chunk::More);
                    }
                    let n = left.min(buf.len() as u64) as usize;
                    let data = buf.split_to(n).freeze();
                    self.state = match left - n as u64 {
                        0 => ChunkState::DataEnd,
                        rest => ChunkState::Data(rest),
                    };
                    return Ok(Chunk::Data(data));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        // A lone LF is tolerated, as hyper does.
                        if buf.first() == Some(&b'\n') {
                            buf.advance(1);
                            self.state = ChunkState::Size;
                            continue;
                        }
                        return Ok(Chunk::More);
                    }
                    match &buf[..2] {
                        b"\r\n" => buf.advance(2),
                        [b'\n', _] => buf.advance(1),
                        _ => return Err(FramingError::ChunkEnd),
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    // No trailers: a bare CRLF.
                    if buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
                        buf.advance(if buf[0] == b'\r' { 2 } else { 1 });
                        self.state = ChunkState::Done;
                        return Ok(Chunk::End(None));
                    }
                    if buf.len() < 2 {
                        return Ok(Chunk::More);
                    }
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(buf, &mut headers) {
                        Ok(httparse::Status::Complete((used, parsed))) => {
                            let mut trailers = HeaderMap::with_capacity(parsed.len());
                            for h in parsed.iter() {
                                let name = HeaderName::from_bytes(h.name.as_bytes())
                                    .map_err(|_| FramingError::Trailers)?;
                                let value = HeaderValue::from_bytes(h.value)
                                    .map_err(|_| FramingError::Trailers)?;
                                trailers.append(name, value);
                            }
                            buf.advance(used);
                            self.state = ChunkState::Done;
                            return Ok(Chunk::End(Some(trailers)));
                        }
                        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => {
                            return Ok(Chunk::More)
                        }
                        _ => return Err(FramingError::Trailers),
                    }
                }
                ChunkState::Done => return Ok(Chunk::End(None)),
            }
        }
    }
}

/// The size a chunk size line (without its LF) gives; extensions are
/// ignored.
fn chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(FramingError::ChunkSize);
    }
    let text = std::str::from_utf8(digits).map_err(|_| FramingError::ChunkSize)?;
    u64::from_str_radix(text, 16).map_err(|_| FramingError::ChunkSize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn content_lengths_must_be_digits_and_agree() {
        for (values, expected) in [
            (&[][..], Ok(None)),
            (&["10"][..], Ok(Some(10))),
            (&["10", "10"][..], Ok(Some(10))),
            (&["10, 10"][..], Ok(Some(10))),
            (&["10", "11"][..], Err(FramingError::ContentLength)),
            (&["+10"][..], Err(FramingError::ContentLength)),
            (&["-1"][..], Err(FramingError::ContentLength)),
            (&["0x10"][..], Err(FramingError::ContentLength)),
            (&[""][..], Err(FramingError::ContentLength)),
            (
                &["99999999999999999999"][..],
                Err(FramingError::ContentLength),
            ),
        ] {
            let pairs: Vec<_> = values.iter().map(|v| ("content-length", *v)).collect();
            assert_eq!(content_length(&headers(&pairs)), expected, "{values:?}");
        }
    }

    #[test]
    fn head_facts_agree_with_the_header_map_lookups() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("content-length", "10")],
            &[("Content-Length", "10"), ("content-length", "10, 10")],
            &[("content-length", "10"), ("content-length", "11")],
            &[("content-length", "+1")],
            &[("transfer-encoding", "gzip, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("Transfer-Encoding", "gzip"),
            ],
            &[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "websocket"),
            ],
            &[("Connection", "close")],
            &[("expect", "100-continue"), ("te", "gzip, trailers")],
            &[("x-content-length", "5"), ("tee", "trailers")],
        ];
        for pairs in cases {
            let map = headers(pairs);
            let mut facts = HeadFacts::default();
            for (name, value) in *pairs {
                facts.see(name.as_bytes(), value.as_bytes());
            }
            assert_eq!(facts.content_length(), content_length(&map), "{pairs:?}");
            assert_eq!(facts.chunked, is_chunked(&map), "{pairs:?}");
            assert_eq!(
                facts.transfer_encoding,
                map.contains_key(header::TRANSFER_ENCODING),
                "{pairs:?}"
            );
            assert_eq!(facts.close, connection_has(&map, "close"), "{pairs:?}");
            assert_eq!(
                facts.keep_alive,
                connection_has(&map, "keep-alive"),
                "{pairs:?}"
            );
            assert_eq!(
                facts.upgrade,
                map.contains_key(header::UPGRADE) || connection_has(&map, "upgrade"),
                "{pairs:?}"
            );
            assert_eq!(facts.expect, map.contains_key(header::EXPECT), "{pairs:?}");
            assert_eq!(
                facts.length_fields as usize,
                map.get_all(header::CONTENT_LENGTH).iter().count(),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn chunked_only_when_it_is_the_last_coding() {
        for (values, expected) in [
            (&["chunked"][..], true),
            (&["Chunked"][..], true),
            (&["gzip, chunked"][..], true),
            (&["gzip", "chunked"][..], true),
            (&["chunked, gzip"][..], false),
            (&["gzip"][..], false),
            (&[][..], false),
        ] {
            let pairs: Vec<_> = values.iter().map(|v| ("transfer-encoding", *v)).collect();
            assert_eq!(is_chunked(&headers(&pairs)), expected, "{values:?}");
        }
    }

    /// Decodes `wire` fed `step` bytes at a time.
    fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), FramingError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Chunk::Data(data) => body.extend_from_slice(&data),
                Chunk::End(trailers) => return Ok((body, trailers)),
                Chunk::More => {
                    if fed == wire.len() {
                        panic!("incomplete: {:?}", String::from_utf8_lossy(wire));
                    }
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads() {
        /// The wire, the body it carries, a trailer it ends with.
        type Case = (
            &'static [u8],
            &'static [u8],
            Option<(&'static str, &'static str)>,
        );
        let cases: &[Case] = &[
            (b"5\r\nhello\r\n0\r\n\r\n", b"hello", None),
            (
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                b"hello world",
                None,
            ),
            (b"5;ext=1\r\nhello\r\n0\r\n\r\n", b"hello", None),
            (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789", None),
            (b"5\nhello\n0\n\n", b"hello", None),
            (
                b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\n\r\n",
                b"hello",
                Some(("grpc-status", "0")),
            ),
            (b"0\r\n\r\n", b"", None),
        ];
        for (wire, body, trailer) in cases {
            for step in [1, 2, 3, 7, wire.len()] {
                let (decoded, trailers) = decode_all(wire, step).unwrap();
                assert_eq!(
                    &decoded,
                    body,
                    "{:?} step {step}",
                    String::from_utf8_lossy(wire)
                );
                match trailer {
                    Some((name, value)) => assert_eq!(trailers.unwrap()[*name], *value),
                    None => assert!(trailers.is_none_or(|t| t.is_empty())),
                }
            }
        }
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for (wire, error) in [
            (&b"x\r\nhello\r\n0\r\n\r\n"[..], FramingError::ChunkSize),
            (b"\r\nhello\r\n0\r\n\r\n", FramingError::ChunkSize),
            (b"-5\r\nhello\r\n0\r\n\r\n", FramingError::ChunkSize),
            (b"fffffffffffffffff\r\n", FramingError::ChunkSize),
            (b"5\r\nhelloXX0\r\n\r\n", FramingError::ChunkEnd),
        ] {
            assert_eq!(decode_all(wire, 64).unwrap_err(), error, "{wire:?}");
        }
    }
}
