//! Istio's `networking.istio.io` kinds → [`crate::objects`], for what Weft
//! honours of them behind a waypoint: a VirtualService's faults and a
//! DestinationRule's traffic policy. The rest of each is accepted (users'
//! YAML keeps working) and listed as not applied.

use serde::Deserialize;

use super::{from_spec, gateway::parse_duration_ms};
use crate::objects::{
    DestinationRule, Fault, IstioHttpMatch, IstioHttpRoute, IstioMatch, LoadBalancer,
    VirtualService,
};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct VirtualServiceSpecYaml {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    http: Vec<HttpRouteYaml>,
    #[serde(flatten)]
    other: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HttpRouteYaml {
    #[serde(default, rename = "match")]
    matches: Vec<HttpMatchYaml>,
    fault: Option<FaultYaml>,
    #[serde(flatten)]
    other: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HttpMatchYaml {
    uri: Option<StringMatchYaml>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, StringMatchYaml>,
    method: Option<StringMatchYaml>,
    #[serde(flatten)]
    other: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StringMatchYaml {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FaultYaml {
    delay: Option<DelayYaml>,
    abort: Option<AbortYaml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DelayYaml {
    fixed_delay: String,
    percentage: Option<PercentYaml>,
    percent: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AbortYaml {
    http_status: Option<u16>,
    grpc_status: Option<String>,
    percentage: Option<PercentYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PercentYaml {
    value: f64,
}

fn string_match(what: &str, m: StringMatchYaml) -> Result<IstioMatch, String> {
    match (m.exact, m.prefix, m.regex) {
        (Some(e), None, None) => Ok(IstioMatch::Exact(e)),
        (None, Some(p), None) => Ok(IstioMatch::Prefix(p)),
        (None, None, Some(r)) => {
            regex::Regex::new(&r).map_err(|e| format!("{what}: regular expression {r:?}: {e}"))?;
            Ok(IstioMatch::Regex(r))
        }
        _ => Err(format!("{what}: exactly one of exact, prefix and regex")),
    }
}

/// A share in thousandths of a percent, 0-100 %.
fn share(what: &str, p: Option<PercentYaml>, legacy: Option<u32>) -> Result<u32, String> {
    let percent = match (p, legacy) {
        (Some(p), _) => p.value,
        (None, Some(n)) => f64::from(n),
        // Istio: no percentage means every request.
        (None, None) => 100.0,
    };
    if !(0.0..=100.0).contains(&percent) || percent.is_nan() {
        return Err(format!(
            "{what}.percentage {percent} is not between 0 and 100"
        ));
    }
    Ok((percent * 1000.0).round() as u32)
}

fn fault(f: FaultYaml) -> Result<Fault, String> {
    let delay = f
        .delay
        .map(|d| -> Result<(u64, u32), String> {
            let ms = istio_duration("delay.fixedDelay", &d.fixed_delay)?;
            Ok((ms, share("delay", d.percentage, d.percent)?))
        })
        .transpose()?;
    let abort = f
        .abort
        .map(|a| -> Result<(u16, u32), String> {
            if a.grpc_status.is_some() {
                return Err("abort.grpcStatus is not supported yet; use httpStatus".into());
            }
            let status = a.http_status.ok_or("abort needs httpStatus")?;
            if !(200..=599).contains(&status) {
                return Err(format!("abort.httpStatus {status} is not an HTTP status"));
            }
            Ok((status, share("abort", a.percentage, None)?))
        })
        .transpose()?;
    if delay.is_none() && abort.is_none() {
        return Err("a fault needs a delay or an abort".into());
    }
    Ok(Fault { delay, abort })
}

fn keys(map: &serde_yaml::Mapping, prefix: &str) -> Vec<String> {
    map.keys()
        .filter_map(|k| k.as_str())
        .map(|k| format!("{prefix}{k}"))
        .collect()
}

pub(super) fn virtual_service(
    namespace: String,
    name: String,
    spec: serde_yaml::Value,
) -> Result<VirtualService, String> {
    let spec: VirtualServiceSpecYaml = from_spec(spec, "spec")?;
    if spec.hosts.is_empty() {
        return Err("spec.hosts is empty: name the services this VirtualService is for".into());
    }
    let ignored = keys(&spec.other, "spec.");
    let http = spec
        .http
        .into_iter()
        .enumerate()
        .map(|(i, h)| -> Result<IstioHttpRoute, String> {
            let at = |e: String| format!("spec.http[{i}].{e}");
            let matches = h
                .matches
                .into_iter()
                .enumerate()
                .map(|(j, m)| -> Result<IstioHttpMatch, String> {
                    let field = format!("match[{j}]");
                    if !m.other.is_empty() {
                        return Err(format!(
                            "{field}: {} cannot be matched by a waypoint yet",
                            keys(&m.other, "").join(", ")
                        ));
                    }
                    Ok(IstioHttpMatch {
                        uri: m
                            .uri
                            .map(|u| string_match(&format!("{field}.uri"), u))
                            .transpose()?,
                        headers: m
                            .headers
                            .into_iter()
                            .map(|(k, v)| {
                                string_match(&format!("{field}.headers.{k}"), v)
                                    .map(|m| (k.to_ascii_lowercase(), m))
                            })
                            .collect::<Result<_, _>>()?,
                        method: m
                            .method
                            .map(|v| string_match(&format!("{field}.method"), v))
                            .transpose()?,
                    })
                })
                .collect::<Result<_, _>>()
                .map_err(at)?;
            Ok(IstioHttpRoute {
                matches,
                fault: h
                    .fault
                    .map(fault)
                    .transpose()
                    .map_err(|e| at(format!("fault: {e}")))?,
                ignored: keys(&h.other, &format!("spec.http[{i}]."))
                    .into_iter()
                    .filter(|k| !k.ends_with(".name"))
                    .collect(),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(VirtualService {
        namespace,
        name,
        hosts: spec.hosts,
        http,
        ignored,
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DestinationRuleSpecYaml {
    host: String,
    traffic_policy: Option<TrafficPolicyYaml>,
    #[serde(flatten)]
    other: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TrafficPolicyYaml {
    load_balancer: Option<LoadBalancerYaml>,
    connection_pool: Option<ConnectionPoolYaml>,
    outlier_detection: Option<OutlierYaml>,
    #[serde(flatten)]
    other: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct LoadBalancerYaml {
    simple: Option<String>,
    #[serde(flatten)]
    other: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConnectionPoolYaml {
    tcp: Option<TcpPoolYaml>,
    http: Option<HttpPoolYaml>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TcpPoolYaml {
    max_connections: Option<u32>,
    #[serde(flatten)]
    other: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct HttpPoolYaml {
    http1_max_pending_requests: Option<u32>,
    http2_max_requests: Option<u32>,
    #[serde(flatten)]
    other: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OutlierYaml {
    consecutive5xx_errors: Option<u32>,
    consecutive_gateway_errors: Option<u32>,
    #[allow(dead_code)]
    interval: Option<String>,
    base_ejection_time: Option<String>,
    max_ejection_percent: Option<u32>,
    #[serde(flatten)]
    other: serde_yaml::Mapping,
}

/// Istio durations (`5s`, `1m`, `500ms`; also fractional seconds `0.5s`).
fn istio_duration(field: &str, text: &str) -> Result<u64, String> {
    if let Some(secs) = text.strip_suffix('s').filter(|s| s.contains('.')) {
        let value: f64 = secs
            .parse()
            .map_err(|_| format!("{field}: {text:?} is not a duration"))?;
        return Ok((value * 1000.0).round() as u64);
    }
    parse_duration_ms(text).map_err(|e| format!("{field}: {e}"))
}

pub(super) fn destination_rule(
    namespace: String,
    name: String,
    spec: serde_yaml::Value,
) -> Result<DestinationRule, String> {
    let spec: DestinationRuleSpecYaml = from_spec(spec, "spec")?;
    if spec.host.is_empty() {
        return Err("spec.host is required".into());
    }
    let mut ignored = keys(&spec.other, "spec.");
    let mut rule = DestinationRule {
        namespace,
        name,
        host: spec.host,
        ..Default::default()
    };
    if let Some(policy) = spec.traffic_policy {
        ignored.extend(keys(&policy.other, "spec.trafficPolicy."));
        if let Some(lb) = policy.load_balancer {
            ignored.extend(keys(&lb.other, "spec.trafficPolicy.loadBalancer."));
            rule.load_balancer = match lb.simple.as_deref() {
                None | Some("ROUND_ROBIN") | Some("UNSPECIFIED") => LoadBalancer::RoundRobin,
                Some("LEAST_REQUEST") | Some("LEAST_CONN") => LoadBalancer::LeastRequest,
                Some("RANDOM") => LoadBalancer::Random,
                Some("PASSTHROUGH") => {
                    ignored.push("spec.trafficPolicy.loadBalancer.simple=PASSTHROUGH".into());
                    LoadBalancer::RoundRobin
                }
                Some(other) => {
                    return Err(format!(
                        "spec.trafficPolicy.loadBalancer.simple {other:?} is not ROUND_ROBIN, \
                         LEAST_REQUEST, RANDOM or PASSTHROUGH"
                    ))
                }
            };
        }
        if let Some(pool) = policy.connection_pool {
            if let Some(tcp) = pool.tcp {
                ignored.extend(keys(&tcp.other, "spec.trafficPolicy.connectionPool.tcp."));
                rule.max_connections = tcp.max_connections;
            }
            if let Some(http) = pool.http {
                ignored.extend(keys(&http.other, "spec.trafficPolicy.connectionPool.http."));
                rule.max_pending_requests = http.http1_max_pending_requests;
                rule.max_requests = http.http2_max_requests;
            }
        }
        if let Some(o) = policy.outlier_detection {
            ignored.extend(keys(&o.other, "spec.trafficPolicy.outlierDetection."));
            // Weft counts errors in a row as they happen: there is no
            // sweep, so `interval` has nothing to set.
            // Istio's default is 5 errors in a row; 0 turns it off.
            rule.consecutive_errors = Some(
                o.consecutive5xx_errors
                    .or(o.consecutive_gateway_errors)
                    .unwrap_or(5),
            );
            rule.base_ejection_ms = o
                .base_ejection_time
                .map(|t| istio_duration("spec.trafficPolicy.outlierDetection.baseEjectionTime", &t))
                .transpose()?;
            if let Some(p) = o.max_ejection_percent {
                if p > 100 {
                    return Err(format!(
                        "spec.trafficPolicy.outlierDetection.maxEjectionPercent {p} is over 100"
                    ));
                }
                rule.max_ejection_percent = Some(p);
            }
        }
    }
    rule.ignored = ignored;
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> serde_yaml::Value {
        serde_yaml::from_str(text).unwrap()
    }

    fn vs(spec: &str) -> Result<VirtualService, String> {
        virtual_service("shop".into(), "faults".into(), yaml(spec))
    }

    fn dr(spec: &str) -> Result<DestinationRule, String> {
        destination_rule("shop".into(), "web".into(), yaml(spec))
    }

    #[test]
    fn faults_take_istio_shares_and_refuse_what_cannot_be_injected() {
        let cases: [(&str, Result<Fault, &str>); 9] = [
            (
                "{delay: {fixedDelay: 1.5s, percentage: {value: 12.5}}}",
                Ok(Fault {
                    delay: Some((1500, 12_500)),
                    abort: None,
                }),
            ),
            (
                "{delay: {fixedDelay: 200ms, percent: 30}}",
                Ok(Fault {
                    delay: Some((200, 30_000)),
                    abort: None,
                }),
            ),
            (
                "{abort: {httpStatus: 503}}",
                Ok(Fault {
                    delay: None,
                    abort: Some((503, 100_000)),
                }),
            ),
            (
                "{abort: {httpStatus: 418, percentage: {value: 0.1}}, delay: {fixedDelay: 1s}}",
                Ok(Fault {
                    delay: Some((1000, 100_000)),
                    abort: Some((418, 100)),
                }),
            ),
            ("{abort: {httpStatus: 700}}", Err("is not an HTTP status")),
            (
                "{abort: {httpStatus: 503, percentage: {value: 101}}}",
                Err("not between 0 and 100"),
            ),
            (
                "{abort: {grpcStatus: UNAVAILABLE}}",
                Err("grpcStatus is not supported"),
            ),
            ("{delay: {fixedDelay: soon}}", Err("delay.fixedDelay")),
            ("{}", Err("needs a delay or an abort")),
        ];
        for (fault_yaml, expected) in cases {
            let spec = format!("{{hosts: [web], http: [{{fault: {fault_yaml}}}]}}");
            match (vs(&spec), expected) {
                (Ok(v), Ok(fault)) => assert_eq!(v.http[0].fault, Some(fault), "{fault_yaml}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{fault_yaml}: {e}"),
                (got, want) => panic!("{fault_yaml}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn virtual_service_routing_is_listed_as_not_applied() {
        let v = vs("{hosts: [web], gateways: [mesh], http: [{name: a, route: [{destination: {host: web}}], retries: {attempts: 3}, fault: {abort: {httpStatus: 500}}}]}")
            .unwrap();
        assert_eq!(v.ignored, ["spec.gateways"]);
        assert_eq!(
            v.http[0].ignored,
            ["spec.http[0].route", "spec.http[0].retries"]
        );
        assert!(vs("{http: []}")
            .unwrap_err()
            .contains("spec.hosts is empty"));
        assert!(vs("{hosts: [web], http: [{match: [{port: 80}]}]}")
            .unwrap_err()
            .contains("spec.http[0].match[0]: port cannot be matched"));
    }

    #[test]
    fn destination_rules_map_to_balancing_caps_and_ejection() {
        let r = dr("{host: web, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}, connectionPool: {tcp: {maxConnections: 10}, http: {http1MaxPendingRequests: 5, http2MaxRequests: 100}}, outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 2s, maxEjectionPercent: 50}}}")
            .unwrap();
        assert_eq!(r.load_balancer, LoadBalancer::LeastRequest);
        assert_eq!(
            (r.max_connections, r.max_pending_requests, r.max_requests),
            (Some(10), Some(5), Some(100))
        );
        assert_eq!(
            (
                r.consecutive_errors,
                r.base_ejection_ms,
                r.max_ejection_percent
            ),
            (Some(3), Some(2000), Some(50))
        );
        // Istio's default: five 5xx in a row.
        let r = dr("{host: web, trafficPolicy: {outlierDetection: {interval: 10s}}}").unwrap();
        assert_eq!(r.consecutive_errors, Some(5));
        assert!(r.ignored.is_empty(), "{:?}", r.ignored);
        let r =
            dr("{host: web, subsets: [{name: v1}], trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}")
                .unwrap();
        assert_eq!(r.ignored, ["spec.subsets", "spec.trafficPolicy.tls"]);
        for (spec, part) in [
            ("{trafficPolicy: {}}", "missing field `host`"),
            ("{host: \"\"}", "spec.host is required"),
            (
                "{host: web, trafficPolicy: {loadBalancer: {simple: FASTEST}}}",
                "FASTEST",
            ),
            (
                "{host: web, trafficPolicy: {outlierDetection: {maxEjectionPercent: 120}}}",
                "over 100",
            ),
            (
                "{host: web, trafficPolicy: {outlierDetection: {baseEjectionTime: later}}}",
                "baseEjectionTime",
            ),
        ] {
            let err = dr(spec).unwrap_err();
            assert!(err.contains(part), "{spec}: {err}");
        }
    }
}
