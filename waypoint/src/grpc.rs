//! gRPC as the waypoint sees it: requests are HTTP/2 with a
//! `content-type: application/grpc…`, carried like any other (trailers
//! and `grpc-status` pass through untouched), with two differences a gRPC
//! client needs. Its `grpc-timeout` is a deadline the waypoint enforces
//! (Istio's default), and an answer the waypoint makes itself — a denial,
//! no route, no upstream, a timeout — is a gRPC status in a trailers-only
//! response (HTTP 200), which a gRPC client understands, rather than an
//! HTTP error it would report as a protocol failure.

use std::time::Duration;

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

/// gRPC status codes the waypoint answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// Whether a request is gRPC.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.to_ascii_lowercase();
            v == "application/grpc"
                || v.starts_with("application/grpc+")
                || v.starts_with("application/grpc;")
        })
}

/// The request's `grpc-timeout` (`<up to 8 digits><H|M|S|m|u|n>`).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status for an HTTP status the waypoint would have answered
/// (gRPC's HTTP-to-status mapping).
pub fn code_for(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// `grpc-message` text: percent-encoded outside printable ASCII and `%`.
fn encode_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `response` (the waypoint's own) as a trailers-only gRPC answer with
/// `code` and `message`.
pub fn trailers_only<B>(response: Response<B>, code: Code, message: &str, empty: B) -> Response<B> {
    let (mut parts, _) = response.into_parts();
    parts.status = StatusCode::OK;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    parts
        .headers
        .insert("grpc-status", HeaderValue::from(code as u16));
    if let Ok(value) = HeaderValue::try_from(encode_message(message)) {
        parts.headers.insert("grpc-message", value);
    }
    Response::from_parts(parts, empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_writes_them() {
        let cases = [
            ("1S", Some(Duration::from_secs(1))),
            ("250m", Some(Duration::from_millis(250))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("5n", Some(Duration::from_nanos(5))),
            ("123456789m", None),
            ("S", None),
            ("10s", None),
            ("-1S", None),
            ("", None),
        ];
        for (text, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", HeaderValue::from_str(text).unwrap());
            assert_eq!(timeout(&headers), expected, "{text:?}");
        }
    }

    #[test]
    fn grpc_requests_are_known_by_content_type_and_answered_in_grpc() {
        for (content_type, grpc) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(content_type).unwrap(),
            );
            assert_eq!(is_grpc(&headers), grpc, "{content_type}");
        }
        for (status, code) in [
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (503, Code::Unavailable),
            (500, Code::Unknown),
        ] {
            assert_eq!(code_for(StatusCode::from_u16(status).unwrap()), code);
        }
        let local = Response::builder()
            .status(403)
            .header("content-length", "19")
            .body(1)
            .unwrap();
        let answer = trailers_only(local, Code::PermissionDenied, "RBAC: access denied 100%", 0);
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.headers()["grpc-status"], "7");
        assert_eq!(
            answer.headers()["grpc-message"],
            "RBAC: access denied 100%25"
        );
        assert!(answer.headers().get("content-length").is_none());
        assert_eq!(*answer.body(), 0);
    }
}
