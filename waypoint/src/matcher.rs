//! Which route a request takes.
//!
//! The routes of a service come ordered by precedence (the control service
//! applied the Gateway API's rules); the first whose match fits wins. Only
//! routes for the request's port apply, and a caller from a namespace with
//! consumer routes of its own sees only those. A service none of whose
//! routes apply is routed to itself; one with routes that all miss answers
//! 404.

use http::HeaderMap;

use crate::routes::{Match, PathMatch, Route, ServiceRoutes, ValueMatch};

/// What matching looks at.
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// Without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The service port the request was addressed to.
    pub port: u16,
    /// The caller's namespace (from its identity).
    pub caller_namespace: &'a str,
}

#[derive(Debug)]
pub enum Selection<'a> {
    /// No route applies: the request goes to the service itself.
    Default,
    Route(&'a Route),
    /// Routes apply and none matches: 404.
    NoRoute,
}

/// The route `req` takes among `routes`.
pub fn select<'a>(routes: &'a ServiceRoutes, req: &RequestInfo<'_>) -> Selection<'a> {
    let on_port = |r: &&Route| r.ports.is_empty() || r.ports.contains(&req.port);
    let consumer: Vec<&Route> = routes
        .routes
        .iter()
        .filter(on_port)
        .filter(|r| {
            r.source_namespaces
                .iter()
                .any(|n| n == req.caller_namespace)
        })
        .collect();
    let candidates = if consumer.is_empty() {
        routes
            .routes
            .iter()
            .filter(on_port)
            .filter(|r| r.source_namespaces.is_empty())
            .collect()
    } else {
        consumer
    };
    if candidates.is_empty() {
        return Selection::Default;
    }
    candidates
        .into_iter()
        .find(|r| matches(&r.matcher, req))
        .map_or(Selection::NoRoute, Selection::Route)
}

fn value_matches(m: &ValueMatch, value: &str) -> bool {
    match m {
        ValueMatch::Exact(v) => v == value,
        ValueMatch::Regex(re) => re.is_match(value),
    }
}

/// Whether `path` falls under prefix `prefix` (given without its trailing
/// `/`), segment by segment.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(v) => path == v,
        PathMatch::Prefix(v) => under_prefix(path, v),
        PathMatch::Regex(re) => re.is_match(path),
        PathMatch::StringPrefix(p) => path.starts_with(p.as_str()),
    }
}

/// The first value of query parameter `name`.
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
        .next()
}

pub fn matches(m: &Match, req: &RequestInfo<'_>) -> bool {
    m.method.as_deref().is_none_or(|method| method == req.method)
        && path_matches(&m.path, req.path)
        // Each value of a repeated header is matched on its own.
        && m.headers.iter().all(|(name, vm)| {
            req.headers
                .get_all(name.as_str())
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| value_matches(vm, v)))
        })
        && m
            .query
            .iter()
            .all(|(name, vm)| query_value(req.query, name).is_some_and(|v| value_matches(vm, v)))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use regex::Regex;

    use super::*;

    fn req<'a>(method: &'a str, target: &'a str, headers: &'a HeaderMap) -> RequestInfo<'a> {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        RequestInfo {
            method,
            path,
            query,
            headers,
            port: 80,
            caller_namespace: "shop",
        }
    }

    fn m(path: PathMatch) -> Match {
        Match {
            path,
            headers: vec![],
            query: vec![],
            method: None,
        }
    }

    fn re(s: &str) -> Regex {
        Regex::new(&format!("^(?:{s})$")).unwrap()
    }

    #[test]
    fn paths_match_exactly_by_segment_or_by_whole_expression() {
        let none = HeaderMap::new();
        let cases = [
            (PathMatch::Exact("/a".into()), "/a", true),
            (PathMatch::Exact("/a".into()), "/a/", false),
            (PathMatch::Exact("/a".into()), "/A", false),
            (PathMatch::Prefix("/foo".into()), "/foo", true),
            (PathMatch::Prefix("/foo".into()), "/foo/", true),
            (PathMatch::Prefix("/foo".into()), "/foo/bar", true),
            (PathMatch::Prefix("/foo".into()), "/foobar", false),
            (PathMatch::Prefix("/foo".into()), "/fo", false),
            (PathMatch::Prefix(String::new()), "/anything", true),
            (PathMatch::Regex(re("/v[0-9]+/.*")), "/v2/x", true),
            (PathMatch::Regex(re("/v[0-9]+/.*")), "/x/v2/x", false),
            (PathMatch::Regex(re("/v[0-9]")), "/v2/x", false),
            // Istio's uri.prefix is a plain string prefix.
            (PathMatch::StringPrefix("/foo".into()), "/foobar", true),
            (PathMatch::StringPrefix("/foo".into()), "/fo", false),
            (PathMatch::StringPrefix("/foo/".into()), "/foo", false),
        ];
        for (path, target, expected) in cases {
            let r = req("GET", target, &none);
            assert_eq!(
                matches(&m(path.clone()), &r),
                expected,
                "{path:?} on {target}"
            );
        }
    }

    #[test]
    fn headers_queries_and_methods_all_must_match() {
        let mut headers = HeaderMap::new();
        headers.append("x-env", HeaderValue::from_static("canary"));
        headers.append("x-env", HeaderValue::from_static("prod"));
        let full = Match {
            path: PathMatch::Prefix(String::new()),
            headers: vec![("x-env".into(), ValueMatch::Exact("prod".into()))],
            query: vec![("v".into(), ValueMatch::Regex(re("[0-9]+")))],
            method: Some("GET".into()),
        };
        let cases = [
            ("GET", "/?v=12", true),
            ("POST", "/?v=12", false),
            ("GET", "/?v=x", false),
            ("GET", "/", false),
            // The first value of a repeated parameter counts.
            ("GET", "/?v=1&v=x", true),
        ];
        for (method, target, expected) in cases {
            assert_eq!(
                matches(&full, &req(method, target, &headers)),
                expected,
                "{method} {target}"
            );
        }
        // A concatenation of repeated headers is never what is matched.
        let joined = Match {
            headers: vec![("x-env".into(), ValueMatch::Exact("canary,prod".into()))],
            ..m(PathMatch::Prefix(String::new()))
        };
        assert!(!matches(&joined, &req("GET", "/", &headers)));
    }

    fn route(name: &str, path: PathMatch, ports: Vec<u16>, sources: Vec<&str>) -> Route {
        Route {
            name: name.into(),
            ports,
            source_namespaces: sources.into_iter().map(String::from).collect(),
            matcher: m(path),
            filters: vec![],
            backends: vec![],
            request_timeout_ms: 0,
            backend_timeout_ms: 0,
            retry: None,
            error_status: None,
        }
    }

    #[test]
    fn port_and_consumer_scoping_decide_which_routes_apply() {
        let routes = ServiceRoutes {
            service: "shop/web".into(),
            routes: vec![
                route(
                    "producer-80",
                    PathMatch::Prefix("/api".into()),
                    vec![80],
                    vec![],
                ),
                route(
                    "consumer",
                    PathMatch::Prefix(String::new()),
                    vec![],
                    vec!["other"],
                ),
            ],
            faults: vec![],
            protocols: Default::default(),
        };
        let none = HeaderMap::new();
        let name = |s: Selection<'_>| match s {
            Selection::Route(r) => r.name.clone(),
            Selection::Default => "default".into(),
            Selection::NoRoute => "404".into(),
        };
        let mut r = req("GET", "/api/x", &none);
        assert_eq!(name(select(&routes, &r)), "producer-80");
        r.path = "/else";
        assert_eq!(
            name(select(&routes, &r)),
            "404",
            "routes apply, none matches"
        );
        r.port = 9090;
        assert_eq!(
            name(select(&routes, &r)),
            "default",
            "no route for this port"
        );
        r.port = 80;
        r.caller_namespace = "other";
        assert_eq!(
            name(select(&routes, &r)),
            "consumer",
            "a consumer sees its own routes only"
        );
    }
}
