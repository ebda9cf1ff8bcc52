//! What a route does to a request and its response: header changes,
//! redirects, rewrites, and the choice among weighted backends.

use http::{header, HeaderMap, HeaderName, HeaderValue};

use crate::{
    matcher::under_prefix,
    routes::{Backend, Filter, HeaderModifier, PathChange, PathMatch},
};

/// Applies a header modifier: `set` replaces, `add` appends, `remove`
/// deletes. Names and values that are not valid HTTP are skipped (the
/// control service checked them).
pub fn modify_headers(headers: &mut HeaderMap, m: &HeaderModifier) {
    for (name, value) in &m.set {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value),
        ) {
            headers.insert(n, v);
        }
    }
    for (name, value) in &m.add {
        if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value),
        ) {
            headers.append(n, v);
        }
    }
    for name in &m.remove {
        headers.remove(name.as_str());
    }
}

/// `path` with `change` applied; `matched` is the route's path match (a
/// prefix replacement replaces the matched prefix, segment-wise).
pub fn change_path(path: &str, change: &PathChange, matched: &PathMatch) -> String {
    match change {
        PathChange::Full(full) => full.clone(),
        PathChange::Prefix(replacement) => {
            let prefix = match matched {
                PathMatch::Prefix(p) if under_prefix(path, p) => p.as_str(),
                // Only meaningful with a prefix match; otherwise the path
                // is kept.
                _ => return path.to_owned(),
            };
            let rest = &path[prefix.len()..];
            let replacement = replacement.trim_end_matches('/');
            let joined = format!("{replacement}{rest}");
            if joined.is_empty() {
                "/".into()
            } else if joined.starts_with('/') {
                joined
            } else {
                format!("/{joined}")
            }
        }
    }
}

/// The `Location` of a redirect for a request to `host` (the authority,
/// maybe with a port) on `port`, path `path` and query `query`.
#[allow(clippy::too_many_arguments)]
pub fn redirect_location(
    scheme: Option<&str>,
    hostname: Option<&str>,
    redirect_port: Option<u16>,
    path: Option<&PathChange>,
    matched: &PathMatch,
    request_host: &str,
    request_port: u16,
    request_path: &str,
    query: Option<&str>,
) -> String {
    let scheme_changed = scheme.is_some();
    let scheme = scheme.unwrap_or("http");
    let host = hostname.unwrap_or_else(|| host_without_port(request_host));
    // The spec: a given port; else the scheme's well-known port when the
    // scheme is set; else the port the request came to.
    let port = redirect_port.unwrap_or(if scheme_changed {
        well_known(scheme)
    } else {
        request_port
    });
    let path = match path {
        Some(change) => change_path(request_path, change, matched),
        None => request_path.to_owned(),
    };
    let authority = if port == well_known(scheme) {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    match query {
        Some(q) => format!("{scheme}://{authority}{path}?{q}"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// An authority's host: `shop:80` → `shop`, `[fd00::1]:80` → `[fd00::1]`.
pub fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    }
}

fn well_known(scheme: &str) -> u16 {
    if scheme == "https" {
        443
    } else {
        80
    }
}

/// The first redirect among `filters`, if any.
pub fn redirect(filters: &[Filter]) -> Option<&Filter> {
    filters
        .iter()
        .find(|f| matches!(f, Filter::Redirect { .. }))
}

/// A backend chosen by weight (weights of 0 are never chosen); `roll` is a
/// number in `0..total` (random in production, given in tests).
pub fn choose_backend(backends: &[Backend], roll: impl FnOnce(u64) -> u64) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = roll(total);
    for b in backends {
        let w = u64::from(b.weight);
        if point < w {
            return Some(b);
        }
        point -= w;
    }
    None
}

/// Sets the request's host (`Host` for HTTP/1.1; the URI's authority is
/// rebuilt by the caller for HTTP/2).
pub fn set_host(headers: &mut HeaderMap, host: &str) {
    if let Ok(v) = HeaderValue::try_from(host) {
        headers.insert(header::HOST, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_replacement_works_segment_by_segment() {
        let prefix = PathMatch::Prefix("/foo".into());
        let cases = [
            ("/foo", "/bar", "/bar"),
            ("/foo/x", "/bar", "/bar/x"),
            ("/foo/x", "/", "/x"),
            ("/foo", "/", "/"),
            ("/foo/x", "/bar/", "/bar/x"),
            ("/foo/", "/bar", "/bar/"),
        ];
        for (path, replacement, expected) in cases {
            let got = change_path(path, &PathChange::Prefix(replacement.into()), &prefix);
            assert_eq!(got, expected, "{path} with {replacement}");
        }
        assert_eq!(
            change_path("/foo/x", &PathChange::Full("/whole".into()), &prefix),
            "/whole"
        );
    }

    #[test]
    fn redirect_locations_follow_the_spec_for_ports_and_schemes() {
        let any = PathMatch::Prefix(String::new());
        let full = PathChange::Full("/new".into());
        let cases = [
            // (scheme, host, port, path) → Location
            (None, None, None, None, "http://shop/old?q=1"),
            (Some("https"), None, None, None, "https://shop/old?q=1"),
            (
                None,
                Some("example.com"),
                None,
                None,
                "http://example.com/old?q=1",
            ),
            (None, None, Some(8080), None, "http://shop:8080/old?q=1"),
            (
                Some("https"),
                None,
                Some(8443),
                Some(&full),
                "https://shop:8443/new?q=1",
            ),
        ];
        for (scheme, host, port, path, expected) in cases {
            let got = redirect_location(
                scheme,
                host,
                port,
                path,
                &any,
                "shop:80",
                80,
                "/old",
                Some("q=1"),
            );
            assert_eq!(got, expected);
        }
        // A request that came to another port is redirected on it.
        let got = redirect_location(None, None, None, None, &any, "shop:9090", 9090, "/", None);
        assert_eq!(got, "http://shop:9090/");
    }

    fn backend(name: &str, weight: u32) -> Backend {
        Backend {
            service: name.into(),
            port: 80,
            weight,
            error: None,
            filters: vec![],
        }
    }

    #[test]
    fn backends_are_chosen_by_weight_and_weight_zero_never() {
        let backends = [backend("a", 90), backend("zero", 0), backend("b", 10)];
        let pick = |roll: u64| choose_backend(&backends, |_| roll).map(|b| b.service.as_str());
        assert_eq!(pick(0), Some("a"));
        assert_eq!(pick(89), Some("a"));
        assert_eq!(pick(90), Some("b"));
        assert_eq!(pick(99), Some("b"));
        assert_eq!(
            choose_backend(&[backend("zero", 0)], |_| 0).map(|b| b.weight),
            None
        );
    }
}
