//! The routes of the services behind this waypoint: `weft.l7.v1` resources
//! converted once into the types requests are matched against (regular
//! expressions compiled), held in a table the xDS client keeps current.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use regex::Regex;
use serde::Serialize;
use weft_proto::{weft::l7::v1 as pb, ROUTES_TYPE_URL};
use weft_proxy::xds::handlers::{decode, Received, ResourceHandler, Versions};

#[derive(Clone, Debug, Serialize)]
pub enum PathMatch {
    Exact(String),
    /// Without its trailing `/`; matched by segment.
    Prefix(String),
    Regex(#[serde(with = "regex_text")] Regex),
    /// A plain string prefix (Istio's `uri.prefix`).
    StringPrefix(String),
}

#[derive(Clone, Debug, Serialize)]
pub enum ValueMatch {
    Exact(String),
    Regex(#[serde(with = "regex_text")] Regex),
}

mod regex_text {
    pub fn serialize<S: serde::Serializer>(re: &regex::Regex, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(re.as_str())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Match {
    pub path: PathMatch,
    /// (lower-case name, match).
    pub headers: Vec<(String, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
    pub method: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub enum PathChange {
    Full(String),
    Prefix(String),
}

#[derive(Clone, Debug, Serialize)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect {
        scheme: Option<String>,
        hostname: Option<String>,
        port: Option<u16>,
        path: Option<PathChange>,
        status: u16,
    },
    Rewrite {
        hostname: Option<String>,
        path: Option<PathChange>,
    },
    /// A copy of each request (of `percent` of them) sent to another
    /// service, its answer ignored.
    Mirror {
        service: String,
        port: u16,
        percent: f64,
    },
    Cors(crate::cors::Cors),
}

#[derive(Clone, Debug, Serialize)]
pub struct Backend {
    /// `namespace/hostname`; empty when invalid.
    pub service: String,
    pub port: u16,
    pub weight: u32,
    /// Why the backend is invalid (its share is answered 500).
    pub error: Option<String>,
    pub filters: Vec<Filter>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Retry {
    pub attempts: u32,
    pub codes: Vec<u16>,
    pub backoff_ms: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Route {
    /// `namespace/name` of the HTTPRoute and the rule's index, for logs.
    pub name: String,
    pub ports: Vec<u16>,
    pub source_namespaces: Vec<String>,
    pub matcher: Match,
    pub filters: Vec<Filter>,
    pub backends: Vec<Backend>,
    pub request_timeout_ms: u64,
    pub backend_timeout_ms: u64,
    pub retry: Option<Retry>,
    pub error_status: Option<u16>,
}

/// A fault injected into matching requests (Istio's VirtualService).
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    pub matcher: Match,
    /// (delay, percent of requests).
    pub delay: Option<(std::time::Duration, f64)>,
    /// (status, percent of requests).
    pub abort: Option<(u16, f64)>,
    pub source: String,
}

/// What a service port is declared to carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum AppProtocol {
    Http,
    Http2,
    Tcp,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceRoutes {
    pub service: String,
    pub routes: Vec<Route>,
    pub faults: Vec<Fault>,
    /// Declared protocols by service port (others are detected).
    pub protocols: std::collections::BTreeMap<u16, AppProtocol>,
}

fn regex(value: &str) -> Result<Regex, String> {
    // Anchored: the Gateway API's regular expressions match the whole value.
    Regex::new(&format!("^(?:{value})$")).map_err(|e| format!("regular expression {value:?}: {e}"))
}

fn value_match(value: String, is_regex: bool) -> Result<ValueMatch, String> {
    if is_regex {
        Ok(ValueMatch::Regex(regex(&value)?))
    } else {
        Ok(ValueMatch::Exact(value))
    }
}

fn port(value: u32, what: &str) -> Result<u16, String> {
    u16::try_from(value).map_err(|_| format!("{what} {value} is not a port"))
}

fn modifier(m: pb::HeaderModifier) -> HeaderModifier {
    HeaderModifier {
        set: m.set.into_iter().map(|h| (h.name, h.value)).collect(),
        add: m.add.into_iter().map(|h| (h.name, h.value)).collect(),
        remove: m.remove,
    }
}

fn path_change(
    full: String,
    prefix: String,
    has_full: bool,
    has_prefix: bool,
) -> Option<PathChange> {
    match (has_full, has_prefix) {
        (true, _) => Some(PathChange::Full(full)),
        (_, true) => Some(PathChange::Prefix(prefix)),
        _ => None,
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl TryFrom<pb::Filter> for Filter {
    type Error = String;
    fn try_from(f: pb::Filter) -> Result<Self, String> {
        use pb::filter::Kind;
        match f.kind.ok_or("a filter without a kind")? {
            Kind::RequestHeaders(m) => Ok(Filter::RequestHeaders(modifier(m))),
            Kind::ResponseHeaders(m) => Ok(Filter::ResponseHeaders(modifier(m))),
            Kind::Redirect(r) => Ok(Filter::Redirect {
                scheme: non_empty(r.scheme),
                hostname: non_empty(r.hostname),
                port: (r.port != 0)
                    .then(|| port(r.port, "redirect port"))
                    .transpose()?,
                path: path_change(r.full_path, r.prefix, r.has_full_path, r.has_prefix),
                status: u16::try_from(r.status).map_err(|_| "bad redirect status")?,
            }),
            Kind::Rewrite(r) => Ok(Filter::Rewrite {
                hostname: non_empty(r.hostname),
                path: path_change(r.full_path, r.prefix, r.has_full_path, r.has_prefix),
            }),
            Kind::Cors(c) => Ok(Filter::Cors(c.into())),
            Kind::Mirror(m) => Ok(Filter::Mirror {
                service: m.service,
                port: port(m.port, "mirror port")?,
                percent: f64::from(m.parts_per_million.min(1_000_000)) / 10_000.0,
            }),
        }
    }
}

fn route_match(m: pb::RouteMatch) -> Result<Match, String> {
    let path = m.path.unwrap_or_default();
    let path = match pb::path_match::Kind::try_from(path.kind) {
        Ok(pb::path_match::Kind::Exact) => PathMatch::Exact(path.value),
        Ok(pb::path_match::Kind::Prefix) => {
            let trimmed = path.value.trim_end_matches('/');
            PathMatch::Prefix(trimmed.to_owned())
        }
        Ok(pb::path_match::Kind::Regex) => PathMatch::Regex(regex(&path.value)?),
        Ok(pb::path_match::Kind::StringPrefix) => PathMatch::StringPrefix(path.value),
        Err(_) => return Err(format!("unknown path match kind {}", path.kind)),
    };
    Ok(Match {
        path,
        headers: m
            .headers
            .into_iter()
            .map(|h| Ok((h.name.to_ascii_lowercase(), value_match(h.value, h.regex)?)))
            .collect::<Result<_, String>>()?,
        query: m
            .query_params
            .into_iter()
            .map(|q| Ok((q.name, value_match(q.value, q.regex)?)))
            .collect::<Result<_, String>>()?,
        method: non_empty(m.method),
    })
}

fn percent(value: f64, what: &str) -> Result<f64, String> {
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{what} percentage {value} is not 0-100"))
    }
}

impl TryFrom<pb::Fault> for Fault {
    type Error = String;
    fn try_from(f: pb::Fault) -> Result<Self, String> {
        Ok(Fault {
            matcher: route_match(f.r#match.unwrap_or_else(|| pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: pb::path_match::Kind::Prefix as i32,
                    value: "/".into(),
                }),
                ..Default::default()
            }))?,
            delay: (f.delay_ms > 0)
                .then(|| -> Result<_, String> {
                    Ok((
                        std::time::Duration::from_millis(f.delay_ms),
                        percent(f.delay_percent, "delay")?,
                    ))
                })
                .transpose()?,
            abort: (f.abort_status != 0)
                .then(|| -> Result<_, String> {
                    Ok((
                        u16::try_from(f.abort_status)
                            .ok()
                            .filter(|s| (200..=599).contains(s))
                            .ok_or_else(|| {
                                format!("abort status {} is not 200-599", f.abort_status)
                            })?,
                        percent(f.abort_percent, "abort")?,
                    ))
                })
                .transpose()?,
            source: f.source,
        })
    }
}

impl TryFrom<pb::Route> for Route {
    type Error = String;
    fn try_from(r: pb::Route) -> Result<Self, String> {
        let matcher = route_match(r.r#match.unwrap_or_default())?;
        Ok(Route {
            name: format!("{}#{}", r.route, r.rule),
            ports: r
                .ports
                .into_iter()
                .map(|p| port(p, "route port"))
                .collect::<Result<_, _>>()?,
            source_namespaces: r.source_namespaces,
            matcher,
            filters: r
                .filters
                .into_iter()
                .map(Filter::try_from)
                .collect::<Result<_, _>>()?,
            backends: r
                .backends
                .into_iter()
                .map(|b| {
                    Ok(Backend {
                        service: b.service,
                        port: port(b.port, "backend port")?,
                        weight: b.weight,
                        error: non_empty(b.error),
                        filters: b
                            .filters
                            .into_iter()
                            .map(Filter::try_from)
                            .collect::<Result<_, _>>()?,
                    })
                })
                .collect::<Result<_, String>>()?,
            request_timeout_ms: r.request_timeout_ms,
            backend_timeout_ms: r.backend_timeout_ms,
            retry: r
                .retry
                .map(|retry| -> Result<Retry, String> {
                    Ok(Retry {
                        attempts: retry.attempts,
                        codes: retry
                            .codes
                            .into_iter()
                            .map(|c| u16::try_from(c).map_err(|_| format!("retry code {c}")))
                            .collect::<Result<_, _>>()?,
                        backoff_ms: retry.backoff_ms,
                    })
                })
                .transpose()?,
            error_status: (r.error_status != 0)
                .then(|| u16::try_from(r.error_status).map_err(|_| "bad error status"))
                .transpose()?,
        })
    }
}

impl TryFrom<pb::ServiceRoutes> for ServiceRoutes {
    type Error = String;
    fn try_from(s: pb::ServiceRoutes) -> Result<Self, String> {
        Ok(ServiceRoutes {
            routes: s
                .routes
                .into_iter()
                .enumerate()
                .map(|(i, r)| Route::try_from(r).map_err(|e| format!("routes[{i}]: {e}")))
                .collect::<Result<_, _>>()?,
            faults: s
                .faults
                .into_iter()
                .enumerate()
                .map(|(i, f)| Fault::try_from(f).map_err(|e| format!("faults[{i}]: {e}")))
                .collect::<Result<_, _>>()?,
            protocols: s
                .protocols
                .iter()
                .filter_map(|(port, protocol)| {
                    let port = u16::try_from(*port).ok()?;
                    let protocol = match pb::AppProtocol::try_from(*protocol).ok()? {
                        pb::AppProtocol::Detect => return None,
                        pb::AppProtocol::Http => AppProtocol::Http,
                        pb::AppProtocol::Http2 => AppProtocol::Http2,
                        pb::AppProtocol::Tcp => AppProtocol::Tcp,
                    };
                    Some((port, protocol))
                })
                .collect(),
            service: s.service,
        })
    }
}

/// The routes of every service, by `namespace/hostname`.
#[derive(Default)]
pub struct RouteTable {
    services: RwLock<foldhash::HashMap<String, Arc<ServiceRoutes>>>,
}

impl RouteTable {
    pub fn get(&self, service: &str) -> Option<Arc<ServiceRoutes>> {
        self.services
            .read()
            .expect("routes lock")
            .get(service)
            .cloned()
    }

    pub fn dump(&self) -> BTreeMap<String, Arc<ServiceRoutes>> {
        self.services
            .read()
            .expect("routes lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Applies `weft.l7.v1.ServiceRoutes` resources to a [`RouteTable`]; a bad
/// one is NACKed and its previous copy kept.
pub struct RoutesHandler {
    table: Arc<RouteTable>,
    versions: Versions,
}

impl RoutesHandler {
    pub fn new(table: Arc<RouteTable>) -> Self {
        Self {
            table,
            versions: Versions::default(),
        }
    }
}

impl ResourceHandler for RoutesHandler {
    fn type_url(&self) -> &'static str {
        ROUTES_TYPE_URL
    }

    fn apply(&self, updates: Vec<Received>, removals: &[String]) -> Vec<(String, String)> {
        let mut rejected = Vec::new();
        let mut services = self.table.services.write().expect("routes lock");
        for r in updates {
            let converted =
                decode::<pb::ServiceRoutes>(ROUTES_TYPE_URL, &r).and_then(ServiceRoutes::try_from);
            match converted {
                Ok(routes) => {
                    services.insert(r.name.clone(), Arc::new(routes));
                    self.versions.set(&r.name, &r.version);
                }
                Err(reason) => {
                    tracing::warn!(resource = %r.name, %reason, "rejected routes (NACK); keeping the previous ones");
                    rejected.push((r.name, reason));
                }
            }
        }
        for name in removals {
            services.remove(name);
            self.versions.remove(name);
        }
        rejected
    }

    fn versions(&self) -> BTreeMap<String, String> {
        self.versions.all()
    }
}
