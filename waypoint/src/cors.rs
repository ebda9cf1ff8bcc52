//! HTTPRoute's `CORS` filter: a preflight (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) from an allowed origin is answered by
//! the waypoint; other requests from an allowed origin are forwarded and
//! their responses say which origin, credentials and headers are allowed.
//! Requests from other origins pass untouched, without CORS headers.

use http::{HeaderMap, HeaderValue, Method};
use serde::Serialize;
use weft_proto::weft::l7::v1 as pb;

#[derive(Clone, Debug, Serialize)]
pub struct Cors {
    pub allow_origins: Vec<String>,
    pub allow_credentials: bool,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_seconds: u32,
}

impl From<pb::Cors> for Cors {
    fn from(c: pb::Cors) -> Self {
        Self {
            allow_origins: c
                .allow_origins
                .into_iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            allow_credentials: c.allow_credentials,
            allow_methods: c.allow_methods,
            allow_headers: c.allow_headers,
            expose_headers: c.expose_headers,
            max_age_seconds: c.max_age_seconds,
        }
    }
}

/// Whether `pattern` (`*`, `scheme://host[:port]`, with `*.` allowed
/// before the host) admits `origin`.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let origin = origin.to_ascii_lowercase();
    let Some((scheme, rest)) = pattern.split_once("://") else {
        return false;
    };
    let Some(wild) = rest.strip_prefix("*.") else {
        return origin == pattern;
    };
    let Some(host) = origin.strip_prefix(&format!("{scheme}://")) else {
        return false;
    };
    // `*.example.com` admits `a.example.com` and `a.b.example.com`, never
    // `example.com` itself.
    host.strip_suffix(wild)
        .and_then(|label| label.strip_suffix('.'))
        .is_some_and(|label| !label.is_empty() && !label.contains(':'))
}

pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

impl Cors {
    /// The request's origin, if this policy allows it.
    pub fn allowed_origin<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let origin = headers.get(http::header::ORIGIN)?.to_str().ok()?;
        self.allow_origins
            .iter()
            .any(|p| origin_matches(p, origin))
            .then_some(origin)
    }

    fn allow_origin_value(&self, origin: &str) -> String {
        // With credentials a browser needs the origin itself, never `*`.
        if self.allow_origins.iter().any(|o| o == "*") && !self.allow_credentials {
            "*".into()
        } else {
            origin.to_owned()
        }
    }

    /// `*` answered as `*`, or (with credentials, where browsers do not
    /// accept `*`) as what the request asked for.
    fn list(&self, list: &[String], asked: Option<&HeaderValue>) -> Option<String> {
        if list.is_empty() {
            return None;
        }
        if list.iter().any(|m| m == "*") {
            return Some(if self.allow_credentials {
                asked
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("*")
                    .to_owned()
            } else {
                "*".into()
            });
        }
        Some(list.join(", "))
    }

    /// The headers of the answer to a preflight from an allowed origin.
    pub fn preflight_headers(
        &self,
        origin: &str,
        request: &HeaderMap,
    ) -> Vec<(&'static str, String)> {
        let mut out = vec![(
            "access-control-allow-origin",
            self.allow_origin_value(origin),
        )];
        if let Some(methods) = self.list(
            &self.allow_methods,
            request.get(http::header::ACCESS_CONTROL_REQUEST_METHOD),
        ) {
            out.push(("access-control-allow-methods", methods));
        }
        if let Some(headers) = self.list(
            &self.allow_headers,
            request.get(http::header::ACCESS_CONTROL_REQUEST_HEADERS),
        ) {
            out.push(("access-control-allow-headers", headers));
        }
        out.push(("access-control-max-age", self.max_age_seconds.to_string()));
        if self.allow_credentials {
            out.push(("access-control-allow-credentials", "true".into()));
        }
        self.vary(&mut out);
        out
    }

    /// The headers added to the response of a request from an allowed
    /// origin.
    pub fn response_headers(&self, origin: &str) -> Vec<(&'static str, String)> {
        let mut out = vec![(
            "access-control-allow-origin",
            self.allow_origin_value(origin),
        )];
        if self.allow_credentials {
            out.push(("access-control-allow-credentials", "true".into()));
        }
        if !self.expose_headers.is_empty() {
            out.push((
                "access-control-expose-headers",
                self.expose_headers.join(", "),
            ));
        }
        self.vary(&mut out);
        out
    }

    /// An answer that depends on the origin says so to caches.
    fn vary(&self, out: &mut Vec<(&'static str, String)>) {
        if out[0].1 != "*" {
            out.push(("vary", "Origin".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_credentials: credentials,
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["*".into()],
            expose_headers: vec!["x-trace".into()],
            max_age_seconds: 60,
        }
    }

    #[test]
    fn origins_match_exactly_or_by_subdomain_wildcard() {
        let cases = [
            ("*", "https://anything.test", true),
            ("https://shop.example.com", "https://shop.example.com", true),
            ("https://shop.example.com", "HTTPS://SHOP.EXAMPLE.COM", true),
            ("https://shop.example.com", "http://shop.example.com", false),
            (
                "https://shop.example.com",
                "https://shop.example.com:8443",
                false,
            ),
            ("https://*.example.com", "https://a.example.com", true),
            ("https://*.example.com", "https://a.b.example.com", true),
            ("https://*.example.com", "https://example.com", false),
            ("https://*.example.com", "https://evilexample.com", false),
            (
                "https://*.example.com",
                "https://a.example.com.evil.test",
                false,
            ),
            ("https://*.example.com", "http://a.example.com", false),
            (
                "https://*.example.com:8443",
                "https://a.example.com:8443",
                true,
            ),
            ("https://*.example.com:8443", "https://a.example.com", false),
            ("https://*.example.com", "https://a.example.com:8443", false),
            ("https://shop.example.com", "null", false),
        ];
        for (pattern, origin, expected) in cases {
            assert_eq!(
                origin_matches(pattern, origin),
                expected,
                "{pattern} / {origin}"
            );
        }
    }

    #[test]
    fn preflights_and_responses_carry_the_allowed_values() {
        let mut request = HeaderMap::new();
        request.insert("origin", "https://a.example.com".parse().unwrap());
        request.insert("access-control-request-method", "PUT".parse().unwrap());
        request.insert(
            "access-control-request-headers",
            "x-a, x-b".parse().unwrap(),
        );
        assert!(is_preflight(&Method::OPTIONS, &request));
        assert!(!is_preflight(&Method::GET, &request));

        let open = cors(&["*"], false);
        assert_eq!(open.allowed_origin(&request), Some("https://a.example.com"));
        assert_eq!(
            open.preflight_headers("https://a.example.com", &request),
            vec![
                ("access-control-allow-origin", "*".to_owned()),
                ("access-control-allow-methods", "GET, POST".to_owned()),
                ("access-control-allow-headers", "*".to_owned()),
                ("access-control-max-age", "60".to_owned()),
            ]
        );
        let strict = cors(&["https://*.example.com"], true);
        assert_eq!(
            strict.preflight_headers("https://a.example.com", &request),
            vec![
                (
                    "access-control-allow-origin",
                    "https://a.example.com".to_owned()
                ),
                ("access-control-allow-methods", "GET, POST".to_owned()),
                ("access-control-allow-headers", "x-a, x-b".to_owned()),
                ("access-control-max-age", "60".to_owned()),
                ("access-control-allow-credentials", "true".to_owned()),
                ("vary", "Origin".to_owned()),
            ]
        );
        assert_eq!(
            strict.response_headers("https://a.example.com"),
            vec![
                (
                    "access-control-allow-origin",
                    "https://a.example.com".to_owned()
                ),
                ("access-control-allow-credentials", "true".to_owned()),
                ("access-control-expose-headers", "x-trace".to_owned()),
                ("vary", "Origin".to_owned()),
            ]
        );
        request.insert("origin", "https://evil.test".parse().unwrap());
        assert_eq!(strict.allowed_origin(&request), None);
    }
}
