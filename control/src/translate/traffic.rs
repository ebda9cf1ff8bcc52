//! Istio's VirtualService faults and DestinationRule traffic policies, for
//! services behind waypoints (Weft's routing itself is the Gateway API's:
//! a VirtualService's routes, timeouts and retries are reported as not
//! applied, its faults are).

use std::collections::BTreeMap;

use weft_proto::weft::l7::v1 as l7;

use super::services::{Services, TranslatedService};
use crate::{
    objects::{IstioHttpMatch, IstioMatch, Kind, LoadBalancer, Object, PortProtocol},
    source::ConfigSnapshot,
};

/// The service a VirtualService or DestinationRule `host` names, seen from
/// `namespace`: `name`, `name.ns` or `name.ns.svc.<domain>`.
pub fn resolve_host<'a>(
    services: &'a Services,
    namespace: &str,
    host: &str,
) -> Option<&'a TranslatedService> {
    let parts: Vec<&str> = host.split('.').collect();
    let (ns, name) = match parts.as_slice() {
        [name] => (namespace, *name),
        [name, ns] => (*ns, *name),
        [name, ns, "svc", ..] => (*ns, *name),
        _ => return None,
    };
    services
        .services
        .iter()
        .find(|s| s.source.namespace == ns && s.source.name == name)
}

fn fault_match(m: &IstioHttpMatch) -> l7::RouteMatch {
    use l7::path_match::Kind as P;
    let path = m.uri.as_ref().map(|u| match u {
        IstioMatch::Exact(v) => l7::PathMatch {
            kind: P::Exact as i32,
            value: v.clone(),
        },
        IstioMatch::Prefix(v) => l7::PathMatch {
            kind: P::StringPrefix as i32,
            value: v.clone(),
        },
        IstioMatch::Regex(v) => l7::PathMatch {
            kind: P::Regex as i32,
            value: v.clone(),
        },
    });
    let value = |m: &IstioMatch| match m {
        IstioMatch::Exact(v) => (v.clone(), false),
        IstioMatch::Prefix(v) => (format!("{}.*", regex::escape(v)), true),
        IstioMatch::Regex(v) => (v.clone(), true),
    };
    let method = match &m.method {
        Some(IstioMatch::Exact(v)) => v.clone(),
        _ => String::new(),
    };
    l7::RouteMatch {
        path: Some(path.unwrap_or(l7::PathMatch {
            kind: P::Prefix as i32,
            value: "/".into(),
        })),
        headers: m
            .headers
            .iter()
            .map(|(name, m)| {
                let (value, regex) = value(m);
                l7::HeaderMatch {
                    name: name.clone(),
                    value,
                    regex,
                }
            })
            .collect(),
        query_params: Vec::new(),
        method,
    }
}

/// Faults, by service key.
pub fn faults(
    snapshot: &ConfigSnapshot,
    services: &Services,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, Vec<l7::Fault>> {
    let mut out: BTreeMap<String, Vec<l7::Fault>> = BTreeMap::new();
    for object in snapshot.of_kind(Kind::VirtualService) {
        let Object::VirtualService(vs) = object else {
            continue;
        };
        let id = format!("VirtualService {}/{}", vs.namespace, vs.name);
        for field in &vs.ignored {
            warnings.push(format!("{id}: {field} is not applied by waypoints"));
        }
        for entry in &vs.http {
            for field in &entry.ignored {
                warnings.push(format!(
                    "{id}: {field} is not applied (Weft routes with HTTPRoutes; a \
                     VirtualService is honoured for its faults)"
                ));
            }
            if entry
                .matches
                .iter()
                .any(|m| matches!(m.method, Some(IstioMatch::Prefix(_) | IstioMatch::Regex(_))))
            {
                warnings.push(format!(
                    "{id}: a method matched by prefix or regex is not supported; such matches \
                     inject no fault"
                ));
            }
        }
        for host in &vs.hosts {
            let Some(service) = resolve_host(services, &vs.namespace, host) else {
                warnings.push(format!("{id}: host {host:?} is not a service of the mesh"));
                continue;
            };
            if service.service.waypoint.is_none() {
                warnings.push(format!(
                    "{id}: host {host} has no waypoint, so its faults are not injected; label it \
                     istio.io/use-waypoint"
                ));
                continue;
            }
            let key = format!("{}/{}", service.service.namespace, service.service.hostname);
            for entry in &vs.http {
                let Some(fault) = &entry.fault else { continue };
                let matches: Vec<Option<&IstioHttpMatch>> = if entry.matches.is_empty() {
                    vec![None]
                } else {
                    entry
                        .matches
                        .iter()
                        .filter(|m| {
                            !matches!(m.method, Some(IstioMatch::Prefix(_) | IstioMatch::Regex(_)))
                        })
                        .map(Some)
                        .collect()
                };
                for m in matches {
                    out.entry(key.clone()).or_default().push(l7::Fault {
                        r#match: m.map(fault_match),
                        delay_ms: fault.delay.map_or(0, |(ms, _)| ms),
                        delay_percent: fault.delay.map_or(0.0, |(_, s)| f64::from(s) / 1000.0),
                        abort_status: fault.abort.map_or(0, |(status, _)| u32::from(status)),
                        abort_percent: fault.abort.map_or(0.0, |(_, s)| f64::from(s) / 1000.0),
                        source: format!("{}/{}", vs.namespace, vs.name),
                    });
                }
            }
        }
    }
    out
}

/// Backend policies, by service key.
pub fn backend_policies(
    snapshot: &ConfigSnapshot,
    services: &Services,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, l7::BackendPolicy> {
    let mut out = BTreeMap::new();
    for object in snapshot.of_kind(Kind::DestinationRule) {
        let Object::DestinationRule(dr) = object else {
            continue;
        };
        let id = format!("DestinationRule {}/{}", dr.namespace, dr.name);
        for field in &dr.ignored {
            warnings.push(format!("{id}: {field} is not applied by waypoints"));
        }
        let Some(service) = resolve_host(services, &dr.namespace, &dr.host) else {
            warnings.push(format!(
                "{id}: host {:?} is not a service of the mesh",
                dr.host
            ));
            continue;
        };
        if service.service.waypoint.is_none() {
            warnings.push(format!(
                "{id}: host {} has no waypoint, so its traffic policy is not applied; label it \
                 istio.io/use-waypoint",
                dr.host
            ));
            continue;
        }
        let key = format!("{}/{}", service.service.namespace, service.service.hostname);
        let lb = match dr.load_balancer {
            LoadBalancer::RoundRobin => l7::backend_policy::LoadBalancer::RoundRobin,
            LoadBalancer::LeastRequest => l7::backend_policy::LoadBalancer::LeastRequest,
            LoadBalancer::Random => l7::backend_policy::LoadBalancer::Random,
        };
        // Weft does not queue: requests in flight are capped by the
        // smallest limit given (HTTP/2 requests, or TCP connections plus
        // HTTP/1.1 pending requests).
        let pooled = dr
            .max_connections
            .map(|c| c.saturating_add(dr.max_pending_requests.unwrap_or(0)));
        let max_requests = [dr.max_requests, pooled]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(0);
        out.insert(
            key.clone(),
            l7::BackendPolicy {
                service: key,
                load_balancer: lb as i32,
                max_requests,
                outlier_detection: dr.consecutive_errors.filter(|n| *n > 0).map(|n| {
                    l7::OutlierDetection {
                        consecutive_errors: n,
                        base_ejection_ms: dr.base_ejection_ms.unwrap_or(30_000),
                        max_ejection_percent: dr.max_ejection_percent.unwrap_or(10),
                    }
                }),
                source: format!("{}/{}", dr.namespace, dr.name),
            },
        );
    }
    out
}

/// The declared protocols of the ports of services behind waypoints, by
/// service key (ports left to detection are not listed).
pub fn port_protocols(services: &Services) -> BTreeMap<String, BTreeMap<u32, i32>> {
    let mut out = BTreeMap::new();
    for s in services
        .services
        .iter()
        .filter(|s| s.service.waypoint.is_some())
    {
        let declared: BTreeMap<u32, i32> = s
            .source
            .ports
            .iter()
            .filter_map(|p| {
                let protocol = match p.protocol() {
                    PortProtocol::Detect => return None,
                    PortProtocol::Http => l7::AppProtocol::Http,
                    PortProtocol::Http2 => l7::AppProtocol::Http2,
                    PortProtocol::Tcp => l7::AppProtocol::Tcp,
                };
                Some((u32::from(p.port), protocol as i32))
            })
            .collect();
        if !declared.is_empty() {
            out.insert(
                format!("{}/{}", s.service.namespace, s.service.hostname),
                declared,
            );
        }
    }
    out
}
