//! Gateway API kinds (`gateway.networking.k8s.io`) → [`crate::objects`].

use serde::Deserialize;

use super::from_spec;
use crate::objects::{Gateway, Labels, Listener, WaypointFor, WAYPOINT_FOR_LABEL};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GatewaySpecYaml {
    #[serde(default)]
    gateway_class_name: String,
    #[serde(default)]
    listeners: Vec<ListenerYaml>,
    /// Accepted and ignored: a waypoint's address is its Service's.
    #[serde(default)]
    addresses: Vec<serde_yaml::Value>,
    /// Accepted and ignored (Istio's deployment customisation).
    #[serde(default)]
    infrastructure: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListenerYaml {
    name: String,
    port: u16,
    protocol: String,
}

pub(super) fn gateway(
    namespace: String,
    name: String,
    labels: Labels,
    spec: serde_yaml::Value,
) -> Result<Gateway, String> {
    let spec: GatewaySpecYaml = from_spec(spec, "spec")?;
    if spec.gateway_class_name.is_empty() {
        return Err("spec.gatewayClassName is required (istio-waypoint for a waypoint)".into());
    }
    if let Some(value) = labels.get(WAYPOINT_FOR_LABEL) {
        WaypointFor::parse(value).map_err(|e| format!("metadata.labels: {e}"))?;
    }
    let _ = (spec.addresses, spec.infrastructure);
    Ok(Gateway {
        namespace,
        name,
        labels,
        class: spec.gateway_class_name,
        listeners: spec
            .listeners
            .into_iter()
            .map(|l| Listener {
                name: l.name,
                port: l.port,
                protocol: l.protocol,
            })
            .collect(),
    })
}

// ---- ReferenceGrant ----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReferenceGrantSpecYaml {
    #[serde(default)]
    from: Vec<GrantFromYaml>,
    #[serde(default)]
    to: Vec<GrantToYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFromYaml {
    group: String,
    kind: String,
    namespace: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantToYaml {
    group: String,
    kind: String,
    name: Option<String>,
}

pub(super) fn reference_grant(
    namespace: String,
    name: String,
    spec: serde_yaml::Value,
) -> Result<crate::objects::ReferenceGrant, String> {
    let spec: ReferenceGrantSpecYaml = from_spec(spec, "spec")?;
    if spec.from.is_empty() || spec.to.is_empty() {
        return Err("spec.from and spec.to each need at least one entry".into());
    }
    Ok(crate::objects::ReferenceGrant {
        namespace,
        name,
        from: spec
            .from
            .into_iter()
            .map(|f| (f.group, f.kind, f.namespace))
            .collect(),
        to: spec
            .to
            .into_iter()
            .map(|t| (t.group, t.kind, t.name))
            .collect(),
    })
}

// ---- HTTPRoute ----

use crate::objects::{
    BackendRef, CorsPolicy, HeaderModifier, HttpFilter, HttpMatch, HttpRetry, HttpRoute, HttpRule,
    ParentRef, PathMatch, PathModifier, ValueMatch,
};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpRouteSpecYaml {
    #[serde(default)]
    parent_refs: Vec<ParentRefYaml>,
    /// Accepted; mesh routes match by the service they attach to.
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<RuleYaml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ParentRefYaml {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<u16>,
    section_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RuleYaml {
    name: Option<String>,
    #[serde(default)]
    matches: Vec<MatchYaml>,
    #[serde(default)]
    filters: Vec<FilterYaml>,
    #[serde(default)]
    backend_refs: Vec<BackendRefYaml>,
    timeouts: Option<TimeoutsYaml>,
    retry: Option<RetryYaml>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MatchYaml {
    path: Option<TypedValueYaml>,
    #[serde(default)]
    headers: Vec<NamedValueYaml>,
    #[serde(default)]
    query_params: Vec<NamedValueYaml>,
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TypedValueYaml {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NamedValueYaml {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FilterYaml {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<HeaderModifierYaml>,
    response_header_modifier: Option<HeaderModifierYaml>,
    request_redirect: Option<RedirectYaml>,
    #[serde(rename = "urlRewrite")]
    url_rewrite: Option<RewriteYaml>,
    request_mirror: Option<MirrorYaml>,
    cors: Option<CorsYaml>,
    extension_ref: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CorsYaml {
    #[serde(default)]
    allow_origins: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default)]
    allow_methods: Vec<String>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    max_age: Option<i64>,
}

/// Checks an `allowOrigins` entry: `*`, or `http(s)://host[:port]` whose
/// host may start with `*.`.
fn cors_origin(origin: &str) -> Result<String, String> {
    if origin == "*" {
        return Ok(origin.to_owned());
    }
    let bad = || {
        format!(
            "CORS allowOrigins entry {origin:?} is not \"*\" or scheme://host[:port] \
             (the host may start with \"*.\")"
        )
    };
    let lower = origin.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://").ok_or_else(bad)?;
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let host = rest.strip_prefix("*.").unwrap_or(rest);
    let (host, port) = match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p)),
        _ => (host, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'[' | b']' | b':'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    if !host_ok || !port_ok || rest.contains('/') {
        return Err(bad());
    }
    Ok(lower)
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HeaderModifierYaml {
    #[serde(default)]
    set: Vec<HeaderYaml>,
    #[serde(default)]
    add: Vec<HeaderYaml>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderYaml {
    name: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RedirectYaml {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<PathModifierYaml>,
    port: Option<u16>,
    status_code: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RewriteYaml {
    hostname: Option<String>,
    path: Option<PathModifierYaml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PathModifierYaml {
    #[serde(rename = "type")]
    kind: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MirrorYaml {
    backend_ref: BackendRefYaml,
    percent: Option<u32>,
    fraction: Option<FractionYaml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FractionYaml {
    numerator: u32,
    denominator: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BackendRefYaml {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<u16>,
    weight: Option<u32>,
    #[serde(default)]
    filters: Vec<FilterYaml>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TimeoutsYaml {
    request: Option<String>,
    backend_request: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RetryYaml {
    #[serde(default)]
    codes: Vec<u16>,
    attempts: Option<u32>,
    backoff: Option<String>,
}

/// A Gateway API duration (GEP-2257): one to four `<number><unit>` parts,
/// units `h`, `m`, `s`, `ms`; `0s` is zero.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration such as 10s, 1m30s or 500ms");
    let mut rest = text;
    let mut total: u64 = 0;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += number * unit_ms;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    Ok(total)
}

fn parent_ref(route_namespace: &str, p: ParentRefYaml) -> Result<ParentRef, String> {
    let section = p.section_name;
    let namespace = p.namespace.unwrap_or_else(|| route_namespace.to_owned());
    let group = p
        .group
        .unwrap_or_else(|| "gateway.networking.k8s.io".into());
    let kind = p.kind.unwrap_or_else(|| "Gateway".into());
    match (group.as_str(), kind.as_str()) {
        ("" | "core", "Service") => Ok(ParentRef::Service {
            namespace,
            name: p.name,
            port: p.port,
            section,
        }),
        ("gateway.networking.k8s.io", "Gateway") => Ok(ParentRef::Gateway {
            namespace,
            name: p.name,
            port: p.port,
            section,
        }),
        _ => Err(format!(
            "parentRef {group}/{kind} {:?} is neither a Service (group \"\") nor a Gateway",
            p.name
        )),
    }
}

fn path_match(m: Option<TypedValueYaml>) -> Result<PathMatch, String> {
    let Some(m) = m else {
        return Ok(PathMatch::Prefix("/".into()));
    };
    let value = m.value.unwrap_or_else(|| "/".into());
    match m.kind.as_deref().unwrap_or("PathPrefix") {
        "Exact" | "PathPrefix" if !value.starts_with('/') => {
            Err(format!("path value {value:?} must start with '/'"))
        }
        "Exact" => Ok(PathMatch::Exact(value)),
        "PathPrefix" => Ok(PathMatch::Prefix(value)),
        "RegularExpression" => {
            regex_ok(&value)?;
            Ok(PathMatch::RegularExpression(value))
        }
        other => Err(format!(
            "path type {other:?} is not Exact, PathPrefix or RegularExpression"
        )),
    }
}

fn regex_ok(value: &str) -> Result<(), String> {
    regex::Regex::new(value)
        .map(drop)
        .map_err(|e| format!("regular expression {value:?}: {e}"))
}

fn value_match(what: &str, m: NamedValueYaml) -> Result<ValueMatch, String> {
    let regex = match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => false,
        "RegularExpression" => {
            regex_ok(&m.value)?;
            true
        }
        other => {
            return Err(format!(
                "{what} match type {other:?} is not Exact or RegularExpression"
            ))
        }
    };
    if m.name.is_empty() {
        return Err(format!("{what} match has an empty name"));
    }
    Ok(ValueMatch {
        name: m.name,
        value: m.value,
        regex,
    })
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

fn http_match(m: MatchYaml) -> Result<HttpMatch, String> {
    if let Some(method) = &m.method {
        if !METHODS.contains(&method.as_str()) {
            return Err(format!(
                "method {method:?} is not one of {}",
                METHODS.join(", ")
            ));
        }
    }
    Ok(HttpMatch {
        grpc_method: None,
        path: path_match(m.path)?,
        headers: m
            .headers
            .into_iter()
            .map(|h| value_match("header", h))
            .collect::<Result<_, _>>()?,
        query_params: m
            .query_params
            .into_iter()
            .map(|q| value_match("query parameter", q))
            .collect::<Result<_, _>>()?,
        method: m.method,
    })
}

fn header_modifier(m: HeaderModifierYaml) -> HeaderModifier {
    HeaderModifier {
        set: m.set.into_iter().map(|h| (h.name, h.value)).collect(),
        add: m.add.into_iter().map(|h| (h.name, h.value)).collect(),
        remove: m.remove,
    }
}

fn path_modifier(m: PathModifierYaml) -> Result<PathModifier, String> {
    match (m.kind.as_str(), m.replace_full_path, m.replace_prefix_match) {
        ("ReplaceFullPath", Some(path), None) => Ok(PathModifier::Full(path)),
        ("ReplacePrefixMatch", None, Some(prefix)) => Ok(PathModifier::Prefix(prefix)),
        (kind, _, _) => Err(format!(
            "path modifier {kind:?} needs exactly its own field (replaceFullPath for \
             ReplaceFullPath, replacePrefixMatch for ReplacePrefixMatch)"
        )),
    }
}

fn filter(route_namespace: &str, f: FilterYaml) -> Result<HttpFilter, String> {
    let missing = |field: &str| format!("filter {} needs its {field} field", f.kind);
    match f.kind.as_str() {
        "RequestHeaderModifier" => Ok(HttpFilter::RequestHeaders(header_modifier(
            f.request_header_modifier
                .ok_or_else(|| missing("requestHeaderModifier"))?,
        ))),
        "ResponseHeaderModifier" => Ok(HttpFilter::ResponseHeaders(header_modifier(
            f.response_header_modifier
                .ok_or_else(|| missing("responseHeaderModifier"))?,
        ))),
        "RequestRedirect" => {
            let r = f
                .request_redirect
                .ok_or_else(|| missing("requestRedirect"))?;
            let status = r.status_code.unwrap_or(302);
            if ![301, 302, 303, 307, 308].contains(&status) {
                return Err(format!(
                    "redirect statusCode {status} is not 301, 302, 303, 307 or 308"
                ));
            }
            if let Some(scheme) = &r.scheme {
                if scheme != "http" && scheme != "https" {
                    return Err(format!("redirect scheme {scheme:?} is not http or https"));
                }
            }
            Ok(HttpFilter::Redirect {
                scheme: r.scheme,
                hostname: r.hostname,
                port: r.port,
                path: r.path.map(path_modifier).transpose()?,
                status,
            })
        }
        "URLRewrite" => {
            let r = f.url_rewrite.ok_or_else(|| missing("urlRewrite"))?;
            Ok(HttpFilter::Rewrite {
                hostname: r.hostname,
                path: r.path.map(path_modifier).transpose()?,
            })
        }
        "RequestMirror" => {
            let m = f.request_mirror.ok_or_else(|| missing("requestMirror"))?;
            let parts_per_million = match (m.percent, m.fraction) {
                (Some(_), Some(_)) => {
                    return Err("requestMirror sets both percent and fraction; use one".into())
                }
                (Some(p), None) if p > 100 => {
                    return Err(format!("requestMirror percent {p} is over 100"))
                }
                (Some(p), None) => p * 10_000,
                (
                    None,
                    Some(FractionYaml {
                        numerator,
                        denominator,
                    }),
                ) => {
                    let denominator = denominator.unwrap_or(100);
                    if denominator == 0 || numerator > denominator {
                        return Err(format!(
                            "requestMirror fraction {numerator}/{denominator} is not between 0 and 1"
                        ));
                    }
                    (u64::from(numerator) * 1_000_000 / u64::from(denominator)) as u32
                }
                (None, None) => 1_000_000,
            };
            Ok(HttpFilter::Mirror {
                backend: backend_ref(route_namespace, m.backend_ref)?,
                parts_per_million,
            })
        }
        "CORS" => {
            let c = f.cors.ok_or_else(|| missing("cors"))?;
            let max_age = c.max_age.unwrap_or(5);
            if !(0..=i64::from(i32::MAX)).contains(&max_age) {
                return Err(format!("CORS maxAge {max_age} is not a number of seconds"));
            }
            Ok(HttpFilter::Cors(CorsPolicy {
                allow_origins: c
                    .allow_origins
                    .iter()
                    .map(|o| cors_origin(o))
                    .collect::<Result<_, _>>()?,
                allow_credentials: c.allow_credentials,
                allow_methods: c.allow_methods,
                allow_headers: c.allow_headers,
                expose_headers: c.expose_headers,
                max_age_seconds: max_age as u32,
            }))
        }
        "ExtensionRef" => {
            let _ = f.extension_ref;
            Err(format!("filter {} is not supported yet", f.kind))
        }
        other => Err(format!(
            "filter type {other:?} is not RequestHeaderModifier, ResponseHeaderModifier, \
             RequestRedirect, URLRewrite, RequestMirror or CORS"
        )),
    }
}

fn backend_ref(route_namespace: &str, b: BackendRefYaml) -> Result<BackendRef, String> {
    let kind = match (
        b.group.as_deref().unwrap_or(""),
        b.kind.as_deref().unwrap_or("Service"),
    ) {
        ("" | "core", kind) => kind.to_owned(),
        (group, kind) => format!("{group}/{kind}"),
    };
    Ok(BackendRef {
        kind,
        namespace: b.namespace.unwrap_or_else(|| route_namespace.to_owned()),
        name: b.name,
        port: b.port,
        weight: b.weight.unwrap_or(1),
        filters: b
            .filters
            .into_iter()
            .map(|f| filter(route_namespace, f))
            .collect::<Result<_, _>>()?,
    })
}

fn rule(route_namespace: &str, index: usize, r: RuleYaml) -> Result<HttpRule, String> {
    let at = |field: &str, e: String| format!("rules[{index}].{field}: {e}");
    let _ = r.name;
    let timeouts = r.timeouts.unwrap_or_default();
    let ms = |field: &str, v: Option<String>| {
        v.map(|t| parse_duration_ms(&t).map_err(|e| at(field, e)))
            .transpose()
    };
    let retry = r
        .retry
        .map(|retry| -> Result<HttpRetry, String> {
            Ok(HttpRetry {
                attempts: retry.attempts,
                codes: retry.codes,
                backoff_ms: ms("retry.backoff", retry.backoff)?,
            })
        })
        .transpose()?;
    Ok(HttpRule {
        matches: r
            .matches
            .into_iter()
            .enumerate()
            .map(|(i, m)| http_match(m).map_err(|e| at(&format!("matches[{i}]"), e)))
            .collect::<Result<_, _>>()?,
        filters: r
            .filters
            .into_iter()
            .enumerate()
            .map(|(i, f)| filter(route_namespace, f).map_err(|e| at(&format!("filters[{i}]"), e)))
            .collect::<Result<_, _>>()?,
        backends: r
            .backend_refs
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                backend_ref(route_namespace, b).map_err(|e| at(&format!("backendRefs[{i}]"), e))
            })
            .collect::<Result<_, _>>()?,
        request_timeout_ms: ms("timeouts.request", timeouts.request)?,
        backend_timeout_ms: ms("timeouts.backendRequest", timeouts.backend_request)?,
        retry,
    })
}

/// A route's `spec.parentRefs`: at least one, each a Service or a Gateway.
fn parents(route_namespace: &str, refs: Vec<ParentRefYaml>) -> Result<Vec<ParentRef>, String> {
    if refs.is_empty() {
        return Err("spec.parentRefs is empty: attach the route to a Service or a waypoint".into());
    }
    refs.into_iter()
        .enumerate()
        .map(|(i, p)| {
            parent_ref(route_namespace, p).map_err(|e| format!("spec.parentRefs[{i}]: {e}"))
        })
        .collect()
}

pub(super) fn http_route(
    namespace: String,
    name: String,
    created: Option<String>,
    spec: serde_yaml::Value,
) -> Result<HttpRoute, String> {
    let spec: HttpRouteSpecYaml = from_spec(spec, "spec")?;
    let _ = spec.hostnames;
    let parents = parents(&namespace, spec.parent_refs)?;
    let rules = if spec.rules.is_empty() {
        vec![HttpRule::default()]
    } else {
        spec.rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| rule(&namespace, i, r).map_err(|e| format!("spec.{e}")))
            .collect::<Result<_, _>>()?
    };
    Ok(HttpRoute {
        namespace,
        name,
        parents,
        rules,
        created,
        grpc: false,
    })
}

// ---- GRPCRoute ----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcRouteSpecYaml {
    #[serde(default)]
    parent_refs: Vec<ParentRefYaml>,
    /// Accepted; mesh routes match by the service they attach to.
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<GrpcRuleYaml>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcRuleYaml {
    name: Option<String>,
    #[serde(default)]
    matches: Vec<GrpcMatchYaml>,
    #[serde(default)]
    filters: Vec<FilterYaml>,
    #[serde(default)]
    backend_refs: Vec<BackendRefYaml>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcMatchYaml {
    method: Option<GrpcMethodYaml>,
    #[serde(default)]
    headers: Vec<NamedValueYaml>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcMethodYaml {
    #[serde(rename = "type")]
    kind: Option<String>,
    service: Option<String>,
    method: Option<String>,
}

/// What makes a request gRPC: its content type.
const GRPC_CONTENT_TYPE: &str = "application/grpc(\\+[^;]*)?(;.*)?";

/// A GRPCMethodMatch as the path it names: `/<service>/<method>`.
fn grpc_method(m: GrpcMethodYaml) -> Result<(PathMatch, (usize, usize)), String> {
    let (service, method) = (m.service.unwrap_or_default(), m.method.unwrap_or_default());
    if service.is_empty() && method.is_empty() {
        return Err("method match needs a service, a method or both".into());
    }
    let rank = (service.len(), method.len());
    match m.kind.as_deref().unwrap_or("Exact") {
        "Exact" => {
            let service_ok = service.is_empty()
                || service.split('.').all(|part| {
                    !part.is_empty()
                        && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        && !part.as_bytes()[0].is_ascii_digit()
                });
            if !service_ok {
                return Err(format!(
                    "method.service {service:?} is not a gRPC service name (package.Service)"
                ));
            }
            let method_ok = method.is_empty()
                || (method
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !method.as_bytes()[0].is_ascii_digit());
            if !method_ok {
                return Err(format!(
                    "method.method {method:?} is not a gRPC method name"
                ));
            }
            let path = match (service.is_empty(), method.is_empty()) {
                (false, false) => PathMatch::Exact(format!("/{service}/{method}")),
                (false, true) => PathMatch::Prefix(format!("/{service}")),
                (true, _) => PathMatch::RegularExpression(format!("/[^/]+/{method}")),
            };
            Ok((path, rank))
        }
        "RegularExpression" => {
            let part = |re: &str| -> Result<String, String> {
                if re.is_empty() {
                    Ok("[^/]+".into())
                } else {
                    regex_ok(re)?;
                    Ok(format!("(?:{re})"))
                }
            };
            let path = format!("/{}/{}", part(&service)?, part(&method)?);
            Ok((PathMatch::RegularExpression(path), rank))
        }
        other => Err(format!(
            "method match type {other:?} is not Exact or RegularExpression"
        )),
    }
}

fn grpc_match(m: GrpcMatchYaml) -> Result<HttpMatch, String> {
    let (path, rank) = match m.method {
        Some(method) => {
            let (path, rank) = grpc_method(method)?;
            (path, Some(rank))
        }
        None => (PathMatch::Prefix("/".into()), Some((0, 0))),
    };
    let mut headers: Vec<ValueMatch> = m
        .headers
        .into_iter()
        .map(|h| value_match("header", h))
        .collect::<Result<_, _>>()?;
    headers.push(ValueMatch {
        name: "content-type".into(),
        value: GRPC_CONTENT_TYPE.into(),
        regex: true,
    });
    Ok(HttpMatch {
        path,
        headers,
        query_params: Vec::new(),
        method: None,
        grpc_method: rank,
    })
}

fn grpc_rule(route_namespace: &str, index: usize, r: GrpcRuleYaml) -> Result<HttpRule, String> {
    let at = |field: &str, e: String| format!("rules[{index}].{field}: {e}");
    let _ = r.name;
    let matches = if r.matches.is_empty() {
        // Every gRPC request.
        vec![GrpcMatchYaml::default()]
    } else {
        r.matches
    };
    let filters = r
        .filters
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let at_filter = |e: String| at(&format!("filters[{i}]"), e);
            if !matches!(
                f.kind.as_str(),
                "RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestMirror"
            ) {
                return Err(at_filter(format!(
                    "filter type {:?} is not RequestHeaderModifier, ResponseHeaderModifier or \
                     RequestMirror (what a GRPCRoute may use)",
                    f.kind
                )));
            }
            filter(route_namespace, f).map_err(at_filter)
        })
        .collect::<Result<_, _>>()?;
    Ok(HttpRule {
        matches: matches
            .into_iter()
            .enumerate()
            .map(|(i, m)| grpc_match(m).map_err(|e| at(&format!("matches[{i}]"), e)))
            .collect::<Result<_, _>>()?,
        filters,
        backends: r
            .backend_refs
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                backend_ref(route_namespace, b).map_err(|e| at(&format!("backendRefs[{i}]"), e))
            })
            .collect::<Result<_, _>>()?,
        request_timeout_ms: None,
        backend_timeout_ms: None,
        retry: None,
    })
}

pub(super) fn grpc_route(
    namespace: String,
    name: String,
    created: Option<String>,
    spec: serde_yaml::Value,
) -> Result<HttpRoute, String> {
    let spec: GrpcRouteSpecYaml = from_spec(spec, "spec")?;
    let _ = spec.hostnames;
    let parents = parents(&namespace, spec.parent_refs)?;
    let rules = if spec.rules.is_empty() {
        vec![grpc_rule(&namespace, 0, GrpcRuleYaml::default()).map_err(|e| format!("spec.{e}"))?]
    } else {
        spec.rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| grpc_rule(&namespace, i, r).map_err(|e| format!("spec.{e}")))
            .collect::<Result<_, _>>()?
    };
    Ok(HttpRoute {
        namespace,
        name,
        parents,
        rules,
        created,
        grpc: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_are_checked_as_the_spec_writes_them() {
        let cases = [
            ("*", Ok("*")),
            ("https://shop.test", Ok("https://shop.test")),
            ("HTTPS://Shop.Test", Ok("https://shop.test")),
            ("https://*.example.com", Ok("https://*.example.com")),
            ("http://shop.test:8080", Ok("http://shop.test:8080")),
            ("ftp://shop.test", Err(())),
            ("shop.test", Err(())),
            ("https://", Err(())),
            ("https://shop.test/path", Err(())),
            ("https://shop.test:99999", Err(())),
            ("https://sh*p.test", Err(())),
        ];
        for (origin, expected) in cases {
            assert_eq!(
                cors_origin(origin).map_err(|_| ()),
                expected.map(str::to_owned),
                "{origin}"
            );
        }
    }

    #[test]
    fn mirror_shares_come_from_percent_or_fraction() {
        let mirror = |extra: &str| {
            let yaml = format!(
                "type: RequestMirror\nrequestMirror: {{backendRef: {{name: sink, port: 80}}{extra}}}"
            );
            let f: FilterYaml = serde_yaml::from_str(&yaml).expect("filter YAML");
            match filter("shop", f) {
                Ok(HttpFilter::Mirror {
                    parts_per_million, ..
                }) => Ok(parts_per_million),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        };
        assert_eq!(mirror(""), Ok(1_000_000));
        assert_eq!(mirror(", percent: 25"), Ok(250_000));
        assert_eq!(mirror(", fraction: {numerator: 1}"), Ok(10_000));
        assert_eq!(
            mirror(", fraction: {numerator: 1, denominator: 3}"),
            Ok(333_333)
        );
        for bad in [
            ", percent: 101",
            ", fraction: {numerator: 2, denominator: 1}",
            ", fraction: {numerator: 1, denominator: 0}",
            ", percent: 5, fraction: {numerator: 1}",
        ] {
            assert!(mirror(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn durations_follow_gep_2257() {
        let cases = [
            ("10s", Ok(10_000)),
            ("500ms", Ok(500)),
            ("1m30s", Ok(90_000)),
            ("1h", Ok(3_600_000)),
            ("0s", Ok(0)),
            ("1h1m1s1ms", Ok(3_661_001)),
            ("", Err(())),
            ("10", Err(())),
            ("1.5s", Err(())),
            ("-1s", Err(())),
            ("123456s", Err(())),
            ("1h1m1s1ms1h", Err(())),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration_ms(text).map_err(drop), expected, "{text:?}");
        }
    }
}
