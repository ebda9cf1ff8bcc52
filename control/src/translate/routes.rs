//! HTTPRoutes and GRPCRoutes → `weft.l7.v1.ServiceRoutes`, one per service behind a
//! waypoint, and each route's status.
//!
//! Attachment follows the Gateway API's mesh profile (GAMMA): a route whose
//! parentRef is a Service applies to requests addressed to that Service (on
//! the parentRef's `port` only, when given); a route in the Service's own
//! namespace (a producer route) applies to every caller, one in another
//! namespace (a consumer route) only to callers from that namespace, and
//! for them replaces the producer routes. Only a service with a waypoint
//! can have its HTTP routed, so a route on any other service is refused
//! with a reason. A route whose parentRef is a waypoint Gateway (from the
//! waypoint's own namespace, as its listener allows by default) applies to
//! every service bound to that waypoint that has no routes of its own.
//!
//! A GRPCRoute and an HTTPRoute on the same parent (and port) conflict: the
//! GRPCRoute is taken and the HTTPRoute refused there with reason
//! `Conflicted` (GEP-1426).
//!
//! The rules of every route attached to a service are flattened — one
//! entry per match — and ordered by the spec's precedence: an Exact path,
//! then a RegularExpression (longest first; the spec leaves regular
//! expressions' rank to implementations, and a catch-all prefix must not
//! hide them), then the longest PathPrefix; then a method match; then more
//! header matches; then more query matches; then the oldest route, the
//! route first by `namespace/name`, and the rule and match first in order.

use std::{cmp::Ordering, collections::BTreeMap};

use weft_proto::weft::l7::v1 as l7;

use super::services::Services;
use crate::{
    objects::{
        BackendRef, HeaderModifier, HttpFilter, HttpMatch, HttpRoute, Kind, Object, ParentRef,
        PathMatch, PathModifier,
    },
    source::ConfigSnapshot,
};

/// One condition of a route's status for one parent (the Gateway API's
/// `RouteParentStatus` conditions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// `Accepted` or `ResolvedRefs`.
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// A route's status for one of its parents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentStatus {
    /// `Service ns/name` or `Gateway ns/name`.
    pub parent: String,
    /// The route's reference to it, as written.
    pub parent_ref: ParentRef,
    pub conditions: Vec<Condition>,
}

pub struct Routes {
    /// By service key (`namespace/hostname`).
    pub services: BTreeMap<String, l7::ServiceRoutes>,
    /// By route (`namespace/name`).
    pub status: BTreeMap<String, Vec<ParentStatus>>,
}

/// An entry, with what orders it.
struct Entry<'a> {
    route: &'a HttpRoute,
    rule: usize,
    match_index: usize,
    compiled: l7::Route,
    matched: HttpMatch,
}

fn path_rank(m: &PathMatch) -> (u8, usize) {
    match m {
        PathMatch::Exact(v) => (3, v.len()),
        PathMatch::RegularExpression(v) => (2, v.len()),
        PathMatch::Prefix(v) => (1, v.trim_end_matches('/').len()),
    }
}

fn precedence(a: &Entry<'_>, b: &Entry<'_>) -> Ordering {
    let (ma, mb) = (&a.matched, &b.matched);
    // Between gRPC rules, the spec's order: the longer service, then the
    // longer method.
    let grpc = match (ma.grpc_method, mb.grpc_method) {
        (Some(ra), Some(rb)) => rb.cmp(&ra),
        _ => Ordering::Equal,
    };
    grpc.then_with(|| path_rank(&mb.path).cmp(&path_rank(&ma.path)))
        .then_with(|| mb.method.is_some().cmp(&ma.method.is_some()))
        .then_with(|| mb.headers.len().cmp(&ma.headers.len()))
        .then_with(|| mb.query_params.len().cmp(&ma.query_params.len()))
        // The oldest route first; a route without a timestamp after those
        // with one.
        .then_with(|| match (&a.route.created, &b.route.created) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        })
        .then_with(|| (&a.route.namespace, &a.route.name).cmp(&(&b.route.namespace, &b.route.name)))
        .then_with(|| a.rule.cmp(&b.rule))
        .then_with(|| a.match_index.cmp(&b.match_index))
}

fn header_modifier(m: &HeaderModifier) -> l7::HeaderModifier {
    let header = |(name, value): &(String, String)| l7::Header {
        name: name.to_ascii_lowercase(),
        value: value.clone(),
    };
    l7::HeaderModifier {
        set: m.set.iter().map(header).collect(),
        add: m.add.iter().map(header).collect(),
        remove: m.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
    }
}

fn path_fields(path: &Option<PathModifier>) -> (String, String, bool, bool) {
    match path {
        Some(PathModifier::Full(p)) => (p.clone(), String::new(), true, false),
        Some(PathModifier::Prefix(p)) => (String::new(), p.clone(), false, true),
        None => (String::new(), String::new(), false, false),
    }
}

/// Translation context: the services, and the grants that let a route
/// refer to another namespace's.
struct Resolver<'a> {
    services: &'a Services,
    grants: Vec<&'a crate::objects::ReferenceGrant>,
}

impl Resolver<'_> {
    /// `namespace/hostname` of Service `namespace/name`, and its ports.
    fn service(&self, namespace: &str, name: &str) -> Option<(String, Vec<u16>)> {
        self.services
            .services
            .iter()
            .find(|s| s.source.namespace == namespace && s.source.name == name)
            .map(|s| {
                (
                    format!("{}/{}", s.service.namespace, s.service.hostname),
                    s.source.ports.iter().map(|p| p.port).collect(),
                )
            })
    }

    /// A backend as served, or the reason it is invalid (its share of
    /// requests is then answered 500).
    fn backend(
        &self,
        route_kind: &str,
        route_namespace: &str,
        b: &BackendRef,
    ) -> (l7::Backend, Option<&'static str>) {
        let mut out = l7::Backend {
            port: u32::from(b.port.unwrap_or(0)),
            weight: b.weight,
            ..Default::default()
        };
        let refusal = if b.kind != "Service" {
            out.error = format!("backend kind {} is not Service", b.kind);
            Some("InvalidKind")
        } else if b.namespace != route_namespace
            && !self.grants.iter().any(|g| {
                g.namespace == b.namespace
                    && g.allows(
                        "gateway.networking.k8s.io",
                        route_kind,
                        route_namespace,
                        "",
                        "Service",
                        &b.name,
                    )
            })
        {
            out.error = format!(
                "backend Service {}/{} is in another namespace and no ReferenceGrant there \
                 lets {route_kind}s of {route_namespace} refer to it",
                b.namespace, b.name
            );
            Some("RefNotPermitted")
        } else {
            match (self.service(&b.namespace, &b.name), b.port) {
                (None, _) => {
                    out.error =
                        format!("backend Service {}/{} does not exist", b.namespace, b.name);
                    Some("BackendNotFound")
                }
                (Some(_), None) => {
                    out.error = format!("backend Service {}/{} needs a port", b.namespace, b.name);
                    Some("UnsupportedValue")
                }
                (Some((_, ports)), Some(port)) if !ports.contains(&port) => {
                    out.error = format!(
                        "backend Service {}/{} has no port {port}",
                        b.namespace, b.name
                    );
                    Some("BackendNotFound")
                }
                (Some((key, _)), Some(_)) => {
                    out.service = key;
                    None
                }
            }
        };
        out.filters = b
            .filters
            .iter()
            .filter_map(|f| self.filter(route_kind, route_namespace, f))
            .collect();
        (out, refusal)
    }

    fn filter(
        &self,
        route_kind: &str,
        route_namespace: &str,
        f: &HttpFilter,
    ) -> Option<l7::Filter> {
        use l7::filter::Kind as F;
        let kind = match f {
            HttpFilter::RequestHeaders(m) => F::RequestHeaders(header_modifier(m)),
            HttpFilter::ResponseHeaders(m) => F::ResponseHeaders(header_modifier(m)),
            HttpFilter::Redirect {
                scheme,
                hostname,
                port,
                path,
                status,
            } => {
                let (full_path, prefix, has_full_path, has_prefix) = path_fields(path);
                F::Redirect(l7::Redirect {
                    scheme: scheme.clone().unwrap_or_default(),
                    hostname: hostname.clone().unwrap_or_default(),
                    port: port.map(u32::from).unwrap_or(0),
                    full_path,
                    prefix,
                    has_full_path,
                    has_prefix,
                    status: u32::from(*status),
                })
            }
            HttpFilter::Rewrite { hostname, path } => {
                let (full_path, prefix, has_full_path, has_prefix) = path_fields(path);
                F::Rewrite(l7::Rewrite {
                    hostname: hostname.clone().unwrap_or_default(),
                    full_path,
                    prefix,
                    has_full_path,
                    has_prefix,
                })
            }
            HttpFilter::Mirror {
                backend,
                parts_per_million,
            } => {
                let (b, refusal) = self.backend(route_kind, route_namespace, backend);
                if refusal.is_some() {
                    return None;
                }
                F::Mirror(l7::Mirror {
                    service: b.service,
                    port: b.port,
                    parts_per_million: *parts_per_million,
                })
            }
            HttpFilter::Cors(c) => F::Cors(l7::Cors {
                allow_origins: c.allow_origins.clone(),
                allow_credentials: c.allow_credentials,
                allow_methods: c.allow_methods.clone(),
                allow_headers: c.allow_headers.clone(),
                expose_headers: c.expose_headers.clone(),
                max_age_seconds: c.max_age_seconds,
            }),
        };
        Some(l7::Filter { kind: Some(kind) })
    }
}

fn path_match(m: &PathMatch) -> l7::PathMatch {
    use l7::path_match::Kind;
    let (kind, value) = match m {
        PathMatch::Exact(v) => (Kind::Exact, v),
        PathMatch::Prefix(v) => (Kind::Prefix, v),
        PathMatch::RegularExpression(v) => (Kind::Regex, v),
    };
    l7::PathMatch {
        kind: kind as i32,
        value: value.clone(),
    }
}

fn compile_match(m: &HttpMatch) -> l7::RouteMatch {
    let value = |v: &crate::objects::ValueMatch, lower: bool| {
        (
            if lower {
                v.name.to_ascii_lowercase()
            } else {
                v.name.clone()
            },
            v.value.clone(),
            v.regex,
        )
    };
    l7::RouteMatch {
        path: Some(path_match(&m.path)),
        headers: m
            .headers
            .iter()
            .map(|h| {
                let (name, value, regex) = value(h, true);
                l7::HeaderMatch { name, value, regex }
            })
            .collect(),
        query_params: m
            .query_params
            .iter()
            .map(|q| {
                let (name, value, regex) = value(q, false);
                l7::QueryMatch { name, value, regex }
            })
            .collect(),
        method: m.method.clone().unwrap_or_default(),
    }
}

fn condition(kind: &'static str, status: bool, reason: &'static str, message: String) -> Condition {
    Condition {
        kind,
        status,
        reason,
        message,
    }
}

pub fn translate(
    snapshot: &ConfigSnapshot,
    services: &Services,
    warnings: &mut Vec<String>,
) -> Routes {
    let resolver = Resolver {
        services,
        grants: snapshot
            .of_kind(Kind::ReferenceGrant)
            .filter_map(|o| match o {
                Object::ReferenceGrant(g) => Some(g),
                _ => None,
            })
            .collect(),
    };
    // GRPCRoutes first: an HTTPRoute on a parent a GRPCRoute holds is
    // refused (below).
    let routes: Vec<&HttpRoute> = snapshot
        .of_kind(Kind::GrpcRoute)
        .chain(snapshot.of_kind(Kind::HttpRoute))
        .filter_map(|o| match o {
            Object::HttpRoute(r) | Object::GrpcRoute(r) => Some(r),
            _ => None,
        })
        .collect();
    let mut entries: BTreeMap<String, Vec<Entry<'_>>> = BTreeMap::new();
    // Routes attached to a waypoint, for each service behind it.
    let mut gateway_entries: BTreeMap<String, Vec<Entry<'_>>> = BTreeMap::new();
    let mut status: BTreeMap<String, Vec<ParentStatus>> = BTreeMap::new();
    // The parents accepted GRPCRoutes hold: label, port (none: all) and
    // the GRPCRoute.
    let mut grpc_parents: Vec<(String, Option<u16>, String)> = Vec::new();
    for route in &routes {
        let key = format!("{}/{}", route.namespace, route.name);
        // An HTTPRoute and a GRPCRoute may share a name.
        let status_key = if route.grpc {
            format!("GRPCRoute/{key}")
        } else {
            key.clone()
        };
        let kind = route.kind_name();
        for parent in &route.parents {
            let (parent_name, accepted) = match parent {
                ParentRef::Gateway {
                    namespace,
                    name,
                    port,
                    section,
                } => {
                    let label = format!("Gateway {namespace}/{name}");
                    let gateway = snapshot.of_kind(Kind::Gateway).find_map(|o| match o {
                        Object::Gateway(g) if g.namespace == *namespace && g.name == *name => {
                            Some(g)
                        }
                        _ => None,
                    });
                    let accepted = match gateway {
                        None => Err(("NoMatchingParent", format!("{label} does not exist"))),
                        Some(g) if !g.is_waypoint() => Err((
                            "NoMatchingParent",
                            format!(
                                "{label} is not a waypoint (gatewayClassName istio-waypoint); \
                                 only waypoints route mesh traffic here"
                            ),
                        )),
                        // The waypoint's one listener (HBONE, 15008) takes
                        // routes from its own namespace only (the default
                        // allowedRoutes).
                        Some(g)
                            if port.is_some_and(|p| !g.listeners.iter().any(|l| l.port == p)) =>
                        {
                            Err((
                                "NoMatchingParent",
                                format!(
                                    "{label} has no listener on port {}",
                                    port.unwrap_or_default()
                                ),
                            ))
                        }
                        Some(g)
                            if section
                                .as_ref()
                                .is_some_and(|sec| !g.listeners.iter().any(|l| l.name == *sec)) =>
                        {
                            Err((
                                "NoMatchingParent",
                                format!(
                                    "{label} has no listener named {}",
                                    section.as_deref().unwrap_or_default()
                                ),
                            ))
                        }
                        Some(_) if route.namespace != *namespace => Err((
                            "NotAllowedByListeners",
                            format!(
                                "{label} takes routes from namespace {namespace} only; this \
                                 route is in {}",
                                route.namespace
                            ),
                        )),
                        Some(_) => Ok(bound_to(services, namespace, name)
                            .into_iter()
                            .map(|s| (s, None, true))
                            .collect::<Vec<_>>()),
                    };
                    (label, accepted)
                }
                ParentRef::Service {
                    namespace,
                    name,
                    port,
                    section,
                } => {
                    let label = format!("Service {namespace}/{name}");
                    let source = services
                        .services
                        .iter()
                        .find(|s| s.source.namespace == *namespace && s.source.name == *name);
                    let accepted = match source {
                        None => Err(("NoMatchingParent", format!("{label} does not exist"))),
                        Some(s) if s.service.waypoint.is_none() => Err((
                            "NoMatchingParent",
                            format!(
                                "{label} has no waypoint, so nothing routes its HTTP; label it \
                                 istio.io/use-waypoint"
                            ),
                        )),
                        Some(s)
                            if port
                                .is_some_and(|p| !s.source.ports.iter().any(|sp| sp.port == p)) =>
                        {
                            Err((
                                "NoMatchingParent",
                                format!("{label} has no port {}", port.unwrap_or_default()),
                            ))
                        }
                        // `sectionName` names one of the Service's ports;
                        // with `port` too, both must agree.
                        Some(s) if section.is_some() => {
                            let named = s
                                .source
                                .ports
                                .iter()
                                .find(|sp| Some(&sp.name) == section.as_ref());
                            match named {
                                None => Err((
                                    "NoMatchingParent",
                                    format!(
                                        "{label} has no port named {}",
                                        section.as_deref().unwrap_or_default()
                                    ),
                                )),
                                Some(sp) if port.is_some_and(|p| p != sp.port) => Err((
                                    "NoMatchingParent",
                                    format!(
                                        "{label}'s port {} is {}, not {}",
                                        sp.name,
                                        sp.port,
                                        port.unwrap_or_default()
                                    ),
                                )),
                                Some(sp) => Ok(vec![(s, Some(sp.port), false)]),
                            }
                        }
                        Some(s) => Ok(vec![(s, *port, false)]),
                    };
                    (label, accepted)
                }
            };
            // GEP-1426: where a GRPCRoute and an HTTPRoute attach to the
            // same parent (and port), the GRPCRoute wins and the HTTPRoute
            // is not accepted there.
            let accepted = match accepted {
                Ok(targets) => {
                    let port = targets.first().and_then(|(_, port, _)| *port);
                    if route.grpc {
                        grpc_parents.push((parent_name.clone(), port, key.clone()));
                        Ok(targets)
                    } else if let Some((_, _, grpc)) = grpc_parents.iter().find(|(label, p, _)| {
                        *label == parent_name && (p.is_none() || port.is_none() || *p == port)
                    }) {
                        Err((
                            "Conflicted",
                            format!(
                                "GRPCRoute {grpc} is attached to {parent_name} too, and a \
                                 GRPCRoute takes precedence over an HTTPRoute on the same parent"
                            ),
                        ))
                    } else {
                        Ok(targets)
                    }
                }
                Err(refusal) => Err(refusal),
            };
            let mut conditions = Vec::new();
            match accepted {
                Err((reason, message)) => {
                    warnings.push(format!(
                        "{kind} {key}: not accepted by {parent_name}: {message}"
                    ));
                    conditions.push(condition("Accepted", false, reason, message));
                }
                Ok(targets) => {
                    conditions.push(condition(
                        "Accepted",
                        true,
                        "Accepted",
                        "Route was valid".into(),
                    ));
                    let mut unresolved = Vec::new();
                    for (service, port, through_gateway) in targets {
                        let service_key =
                            format!("{}/{}", service.service.namespace, service.service.hostname);
                        // A route on a waypoint applies to every caller.
                        let consumer =
                            !through_gateway && route.namespace != service.source.namespace;
                        let entries = if through_gateway {
                            &mut gateway_entries
                        } else {
                            &mut entries
                        };
                        for (rule_index, rule) in route.rules.iter().enumerate() {
                            let mut backends = Vec::new();
                            for b in &rule.backends {
                                let (backend, refusal) =
                                    resolver.backend(kind, &route.namespace, b);
                                if let Some(reason) = refusal {
                                    unresolved.push((reason, backend.error.clone()));
                                }
                                if backend.weight > 0 {
                                    backends.push(backend);
                                }
                            }
                            let filters: Vec<l7::Filter> = rule
                                .filters
                                .iter()
                                .filter_map(|f| resolver.filter(kind, &route.namespace, f))
                                .collect();
                            let redirects = filters
                                .iter()
                                .any(|f| matches!(f.kind, Some(l7::filter::Kind::Redirect(_))));
                            // Nothing to forward to and nothing that answers:
                            // the spec's 500.
                            let error_status = if backends.is_empty() && !redirects {
                                500
                            } else {
                                0
                            };
                            let matches: Vec<HttpMatch> = if rule.matches.is_empty() {
                                vec![HttpMatch::default()]
                            } else {
                                rule.matches.clone()
                            };
                            for (match_index, m) in matches.into_iter().enumerate() {
                                let compiled = l7::Route {
                                    route: key.clone(),
                                    rule: rule_index as u32,
                                    ports: port.map(|p| vec![u32::from(p)]).unwrap_or_default(),
                                    source_namespaces: if consumer {
                                        vec![route.namespace.clone()]
                                    } else {
                                        Vec::new()
                                    },
                                    r#match: Some(compile_match(&m)),
                                    filters: filters.clone(),
                                    backends: backends.clone(),
                                    request_timeout_ms: rule.request_timeout_ms.unwrap_or(0),
                                    backend_timeout_ms: rule.backend_timeout_ms.unwrap_or(0),
                                    retry: rule.retry.as_ref().map(|r| l7::Retry {
                                        attempts: r.attempts.unwrap_or(2),
                                        codes: r.codes.iter().map(|c| u32::from(*c)).collect(),
                                        backoff_ms: r.backoff_ms.unwrap_or(25),
                                    }),
                                    error_status,
                                };
                                entries.entry(service_key.clone()).or_default().push(Entry {
                                    route,
                                    rule: rule_index,
                                    match_index,
                                    compiled,
                                    matched: m,
                                });
                            }
                        }
                    }
                    match unresolved.first() {
                        None => conditions.push(condition(
                            "ResolvedRefs",
                            true,
                            "ResolvedRefs",
                            "All references resolved".into(),
                        )),
                        Some((reason, message)) => {
                            warnings.push(format!("{kind} {key}: {message}"));
                            conditions.push(condition(
                                "ResolvedRefs",
                                false,
                                reason,
                                message.clone(),
                            ));
                        }
                    }
                }
            }
            status
                .entry(status_key.clone())
                .or_default()
                .push(ParentStatus {
                    parent: parent_name,
                    parent_ref: parent.clone(),
                    conditions,
                });
        }
    }
    // A service's own routes replace its waypoint's.
    for (service, list) in gateway_entries {
        entries.entry(service).or_insert(list);
    }
    let services = entries
        .into_iter()
        .map(|(service, mut list)| {
            list.sort_by(precedence);
            let routes = list.into_iter().map(|e| e.compiled).collect();
            (
                service.clone(),
                l7::ServiceRoutes {
                    service,
                    routes,
                    default_route: false,
                    faults: Vec::new(),
                    protocols: Default::default(),
                },
            )
        })
        .collect();
    Routes { services, status }
}

/// The services whose service-addressed traffic goes to waypoint
/// `namespace/name`.
fn bound_to<'a>(
    services: &'a Services,
    namespace: &str,
    name: &str,
) -> Vec<&'a super::services::TranslatedService> {
    use weft_proto::istio::workload::gateway_address::Destination;
    let vips: Vec<&Vec<u8>> = services
        .services
        .iter()
        .filter(|s| s.source.namespace == namespace && s.source.name == name)
        .flat_map(|s| s.service.addresses.iter().map(|a| &a.address))
        .collect();
    let host_prefix = format!("{name}.{namespace}.svc.");
    services
        .services
        .iter()
        .filter(|s| {
            match s
                .service
                .waypoint
                .as_ref()
                .and_then(|w| w.destination.as_ref())
            {
                Some(Destination::Address(a)) => vips.contains(&&a.address),
                Some(Destination::Hostname(h)) => {
                    h.namespace == namespace && h.hostname.starts_with(&host_prefix)
                }
                None => false,
            }
        })
        .collect()
}
