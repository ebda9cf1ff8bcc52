//! Istio's `security.istio.io` kinds → [`crate::objects`]:
//! AuthorizationPolicy and PeerAuthentication.
//!
//! These serde types are also the schema of the CRDs Weft ships
//! ([`crate::crds`] derives them with `schemars`): the API server checks
//! what it can (field names, types, enums, required fields) when a user
//! applies an object, and the functions here check the rest (patterns,
//! CIDRs, ports, combinations) for either source. Doc comments become the
//! descriptions `kubectl explain` prints.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::Deserialize;

use super::from_spec;
use crate::objects::{
    AuthorizationPolicy, AuthzAction, AuthzRule, Condition, Labels, MtlsMode, Operation,
    PeerAuthentication, Source, StringPattern,
};

// ---- AuthorizationPolicy ----

/// Which workloads a policy applies to and what it allows or denies.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct AuthzSpecYaml {
    /// The workloads (pods, by label) the policy applies to; without a
    /// selector or targetRefs it applies to every workload of its namespace
    /// (every workload of the mesh in the root namespace).
    selector: Option<SelectorYaml>,
    /// One object the policy is attached to (use targetRefs).
    target_ref: Option<TargetRefYaml>,
    /// The objects the policy is attached to instead of a selector: a
    /// waypoint Gateway, or a Service behind a waypoint.
    #[serde(default)]
    target_refs: Vec<TargetRefYaml>,
    /// ALLOW (the default), DENY, AUDIT or CUSTOM.
    #[schemars(extend("enum" = ["ALLOW", "DENY", "AUDIT", "CUSTOM"]))]
    action: Option<String>,
    /// The external authorizer of a CUSTOM policy.
    provider: Option<ProviderYaml>,
    /// A request matches the policy when it matches any rule; a policy
    /// without rules matches nothing (ALLOW with an empty rule `{}`
    /// matches everything).
    #[serde(default)]
    rules: Vec<RuleYaml>,
}

/// Selects pods by their labels.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SelectorYaml {
    /// Labels a pod must all have.
    #[serde(default)]
    match_labels: Labels,
}

/// An object of the policy's own namespace.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct TargetRefYaml {
    /// The object's API group: `gateway.networking.k8s.io` for a Gateway,
    /// empty for a Service.
    #[serde(default)]
    group: String,
    /// Gateway or Service.
    kind: String,
    /// The object's name.
    name: String,
    /// Not allowed: a policy targets objects of its own namespace.
    namespace: Option<String>,
}

/// An external authorization provider named in the mesh config.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ProviderYaml {
    /// The provider's name.
    name: String,
}

/// Matches a request when all of its parts match: any `from`, any `to`,
/// every `when`; a missing part matches everything.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
struct RuleYaml {
    /// Where the request comes from.
    #[serde(default)]
    from: Vec<FromYaml>,
    /// What the request asks for.
    #[serde(default)]
    to: Vec<ToYaml>,
    /// Further conditions on the request's attributes.
    #[serde(default)]
    when: Vec<ConditionYaml>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct FromYaml {
    /// The peer: identities, namespaces, addresses.
    #[serde(default)]
    source: SourceYaml,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ToYaml {
    /// The destination: ports, and (behind a waypoint) hosts, methods,
    /// paths.
    #[serde(default)]
    operation: OperationYaml,
}

/// Each field matches when any of its values does and its `not` twin's
/// values do not; values may start or end with `*`.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SourceYaml {
    /// Peer identities (`<trust domain>/ns/<namespace>/sa/<account>`).
    principals: Option<Vec<String>>,
    not_principals: Option<Vec<String>>,
    /// Namespaces of the peer's identity.
    namespaces: Option<Vec<String>>,
    not_namespaces: Option<Vec<String>>,
    /// The peer's address: IPs or CIDR blocks.
    ip_blocks: Option<Vec<String>>,
    not_ip_blocks: Option<Vec<String>>,
    /// JWT principals (needs a waypoint).
    request_principals: Option<Vec<String>>,
    not_request_principals: Option<Vec<String>>,
    /// The original client's address (needs a waypoint).
    remote_ip_blocks: Option<Vec<String>>,
    not_remote_ip_blocks: Option<Vec<String>>,
}

/// Each field matches when any of its values does and its `not` twin's
/// values do not.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OperationYaml {
    /// Destination ports, as strings ("8080").
    ports: Option<Vec<String>>,
    not_ports: Option<Vec<String>>,
    /// HTTP hosts (needs a waypoint).
    hosts: Option<Vec<String>>,
    not_hosts: Option<Vec<String>>,
    /// HTTP methods (needs a waypoint).
    methods: Option<Vec<String>>,
    not_methods: Option<Vec<String>>,
    /// HTTP paths (needs a waypoint).
    paths: Option<Vec<String>>,
    not_paths: Option<Vec<String>>,
}

/// One attribute of the request, matched against values.
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConditionYaml {
    /// `source.ip`, `source.namespace`, `source.principal`,
    /// `destination.ip`, `destination.port`, or (behind a waypoint)
    /// `request.headers[NAME]`, `request.auth.*`, …
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

pub(super) fn authorization_policy(
    namespace: String,
    name: String,
    spec: serde_yaml::Value,
) -> Result<AuthorizationPolicy, String> {
    let spec: AuthzSpecYaml = from_spec(spec, "spec")?;
    let action = match spec.action.as_deref() {
        None | Some("ALLOW") => AuthzAction::Allow,
        Some("DENY") => AuthzAction::Deny,
        Some("AUDIT") => AuthzAction::Audit,
        Some("CUSTOM") => AuthzAction::Custom,
        Some(other) => {
            return Err(format!(
                "spec.action {other:?} is not ALLOW, DENY, AUDIT or CUSTOM"
            ))
        }
    };
    match &spec.provider {
        Some(provider) if provider.name.is_empty() => {
            return Err("spec.provider.name is required".into())
        }
        None if action == AuthzAction::Custom => {
            return Err("spec.action CUSTOM needs spec.provider".into())
        }
        _ => {}
    }
    let mut target_refs: Vec<String> = spec.target_refs.iter().map(describe_ref).collect();
    if let Some(target) = &spec.target_ref {
        target_refs.push(describe_ref(target));
    }
    let targets = spec
        .target_refs
        .iter()
        .chain(spec.target_ref.as_ref())
        .enumerate()
        .map(|(i, t)| policy_target(t).map_err(|r| format!("spec.targetRefs[{i}]: {r}")))
        .collect::<Result<Vec<_>, _>>()?;
    if spec.selector.is_some() && !target_refs.is_empty() {
        return Err("spec.selector and spec.targetRef(s) cannot both be set".into());
    }
    let rules = spec
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, rule)| authz_rule(rule).map_err(|r| format!("spec.rules[{i}].{r}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AuthorizationPolicy {
        namespace,
        name,
        selector: spec.selector.map(|s| s.match_labels),
        target_refs,
        targets,
        action,
        rules,
    })
}

/// A `targetRef` (a namespace other than the policy's is not allowed, as
/// in Istio).
fn policy_target(target: &TargetRefYaml) -> Result<crate::objects::PolicyTarget, String> {
    use crate::objects::PolicyTarget;
    if target.name.is_empty() {
        return Err("name is required".into());
    }
    if target.namespace.is_some() {
        return Err(
            "namespace is not allowed: a policy targets objects of its own namespace".into(),
        );
    }
    let name = target.name.clone();
    Ok(match (target.group.as_str(), target.kind.as_str()) {
        ("gateway.networking.k8s.io", "Gateway") => PolicyTarget::Gateway { name },
        ("" | "core", "Service") => PolicyTarget::Service { name },
        (group, kind) => PolicyTarget::Other(format!("{group}/{kind} {name}")),
    })
}

fn describe_ref(target: &TargetRefYaml) -> String {
    format!("{}/{}", target.kind, target.name)
}

fn authz_rule(rule: RuleYaml) -> Result<AuthzRule, String> {
    let mut from = Vec::new();
    for (i, f) in rule.from.into_iter().enumerate() {
        from.push(source(f.source).map_err(|r| format!("from[{i}].source.{r}"))?);
    }
    let mut to = Vec::new();
    for (i, t) in rule.to.into_iter().enumerate() {
        to.push(operation(t.operation).map_err(|r| format!("to[{i}].operation.{r}"))?);
    }
    let mut when = Vec::new();
    for (i, c) in rule.when.into_iter().enumerate() {
        when.push(condition(c).map_err(|r| format!("when[{i}]: {r}"))?);
    }
    Ok(AuthzRule { from, to, when })
}

fn patterns(field: &str, values: Option<Vec<String>>) -> Result<Vec<StringPattern>, String> {
    values
        .unwrap_or_default()
        .iter()
        .map(|v| StringPattern::parse(v).map_err(|r| format!("{field}: {r}")))
        .collect()
}

fn ip_blocks(field: &str, values: Option<Vec<String>>) -> Result<Vec<IpNet>, String> {
    values
        .unwrap_or_default()
        .iter()
        .map(|v| parse_cidr(v).map_err(|r| format!("{field}: {r}")))
        .collect()
}

/// A CIDR block, or a single address (a /32 or /128).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net);
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))
}

fn ports(field: &str, values: Option<Vec<String>>) -> Result<Vec<u16>, String> {
    values
        .unwrap_or_default()
        .iter()
        .map(|v| match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("{field}: {v:?} is not a port number (1-65535)")),
        })
        .collect()
}

fn present(name: &str, values: &Option<Vec<String>>) -> Option<String> {
    values.as_ref().map(|_| name.to_owned())
}

fn source(s: SourceYaml) -> Result<Source, String> {
    let l7_fields = [
        present("requestPrincipals", &s.request_principals),
        present("notRequestPrincipals", &s.not_request_principals),
        present("remoteIpBlocks", &s.remote_ip_blocks),
        present("notRemoteIpBlocks", &s.not_remote_ip_blocks),
    ]
    .into_iter()
    .flatten()
    .collect();
    Ok(Source {
        principals: patterns("principals", s.principals)?,
        not_principals: patterns("notPrincipals", s.not_principals)?,
        namespaces: patterns("namespaces", s.namespaces)?,
        not_namespaces: patterns("notNamespaces", s.not_namespaces)?,
        ip_blocks: ip_blocks("ipBlocks", s.ip_blocks)?,
        not_ip_blocks: ip_blocks("notIpBlocks", s.not_ip_blocks)?,
        request_principals: s.request_principals.is_some() || s.not_request_principals.is_some(),
        remote_ip_blocks: ip_blocks("remoteIpBlocks", s.remote_ip_blocks)?,
        not_remote_ip_blocks: ip_blocks("notRemoteIpBlocks", s.not_remote_ip_blocks)?,
        l7_fields,
    })
}

fn operation(o: OperationYaml) -> Result<Operation, String> {
    let l7_fields = [
        present("hosts", &o.hosts),
        present("notHosts", &o.not_hosts),
        present("methods", &o.methods),
        present("notMethods", &o.not_methods),
        present("paths", &o.paths),
        present("notPaths", &o.not_paths),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Methods are HTTP tokens, compared as written.
    if let Some(bad) = o.methods.iter().chain(&o.not_methods).flatten().find(|m| {
        m.is_empty()
            || !m
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'*' || b == b'-')
    }) {
        return Err(format!("methods: {bad:?} is not an HTTP method"));
    }
    Ok(Operation {
        ports: ports("ports", o.ports)?,
        not_ports: ports("notPorts", o.not_ports)?,
        hosts: patterns("hosts", o.hosts)?,
        not_hosts: patterns("notHosts", o.not_hosts)?,
        methods: patterns("methods", o.methods)?,
        not_methods: patterns("notMethods", o.not_methods)?,
        paths: patterns("paths", o.paths)?,
        not_paths: patterns("notPaths", o.not_paths)?,
        l7_fields,
    })
}

fn condition(c: ConditionYaml) -> Result<Condition, String> {
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(format!("key {:?} needs values or notValues", c.key));
    }
    let strings = |v: &[String]| -> Result<Vec<StringPattern>, String> {
        v.iter().map(|s| StringPattern::parse(s)).collect()
    };
    let cidrs =
        |v: &[String]| -> Result<Vec<IpNet>, String> { v.iter().map(|s| parse_cidr(s)).collect() };
    let port_list = |v: &[String]| ports(&c.key, Some(v.to_vec()));
    Ok(match c.key.as_str() {
        "source.ip" => Condition::SourceIp {
            values: cidrs(&c.values)?,
            not_values: cidrs(&c.not_values)?,
        },
        "source.namespace" => Condition::SourceNamespace {
            values: strings(&c.values)?,
            not_values: strings(&c.not_values)?,
        },
        "source.principal" => Condition::SourcePrincipal {
            values: strings(&c.values)?,
            not_values: strings(&c.not_values)?,
        },
        "destination.ip" => Condition::DestinationIp {
            values: cidrs(&c.values)?,
            not_values: cidrs(&c.not_values)?,
        },
        "destination.port" => Condition::DestinationPort {
            values: port_list(&c.values)?,
            not_values: port_list(&c.not_values)?,
        },
        key if is_known_l7_key(key) => Condition::L7 {
            key: key.to_owned(),
            values: strings(&c.values)?,
            not_values: strings(&c.not_values)?,
        },
        key => return Err(format!("unknown condition key {key:?}")),
    })
}

/// Condition keys that Istio defines and only an L7 proxy can evaluate.
fn is_known_l7_key(key: &str) -> bool {
    key.starts_with("request.headers[")
        || key.starts_with("request.auth.")
        || key.starts_with("experimental.envoy.filters.")
        || matches!(
            key,
            "remote.ip" | "source.user" | "connection.sni" | "destination.service"
        )
}

// ---- PeerAuthentication ----

/// How the workloads a policy selects accept connections: mutual TLS
/// only, or plaintext too.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PeerAuthnSpecYaml {
    /// The workloads (pods, by label) the policy applies to; without one it
    /// applies to its namespace (the whole mesh in the root namespace).
    selector: Option<SelectorYaml>,
    /// The mode for every port.
    mtls: Option<MtlsYaml>,
    /// Modes for single ports (keys are port numbers); needs a selector.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, MtlsYaml>")]
    port_level_mtls: serde_yaml::Mapping,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
struct MtlsYaml {
    /// STRICT (mutual TLS only), PERMISSIVE (plaintext too), DISABLE, or
    /// UNSET (inherit from the namespace, then the root namespace).
    #[schemars(extend("enum" = ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]))]
    mode: Option<String>,
}

fn mtls_mode(field: &str, m: Option<&MtlsYaml>) -> Result<MtlsMode, String> {
    match m.and_then(|m| m.mode.as_deref()) {
        None | Some("UNSET") => Ok(MtlsMode::Unset),
        Some("DISABLE") => Ok(MtlsMode::Disable),
        Some("PERMISSIVE") => Ok(MtlsMode::Permissive),
        Some("STRICT") => Ok(MtlsMode::Strict),
        Some(other) => Err(format!(
            "{field} {other:?} is not UNSET, DISABLE, PERMISSIVE or STRICT"
        )),
    }
}

pub(super) fn peer_authentication(
    namespace: String,
    name: String,
    spec: serde_yaml::Value,
) -> Result<PeerAuthentication, String> {
    let spec: PeerAuthnSpecYaml = from_spec(spec, "spec")?;
    let mut port_level = BTreeMap::new();
    for (port, mtls) in spec.port_level_mtls {
        let port_num = match &port {
            serde_yaml::Value::Number(n) => n.as_u64(),
            serde_yaml::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("spec.portLevelMtls key {port:?} is not a port number"))?;
        let field = format!("spec.portLevelMtls[{port_num}]");
        let mtls: MtlsYaml =
            serde_yaml::from_value(mtls).map_err(|err| format!("{field}: {err}"))?;
        port_level.insert(port_num, mtls_mode(&format!("{field}.mode"), Some(&mtls))?);
    }
    if !port_level.is_empty() && spec.selector.is_none() {
        return Err("spec.portLevelMtls needs spec.selector (Istio applies port-level settings to selected workloads only)".into());
    }
    Ok(PeerAuthentication {
        namespace,
        name,
        selector: spec.selector.map(|s| s.match_labels),
        mode: mtls_mode("spec.mtls.mode", spec.mtls.as_ref())?,
        port_level,
    })
}
