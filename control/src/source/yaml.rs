//! Kubernetes-style YAML → [`Object`]s.
//!
//! The serde types here mirror the YAML users write and never leave this
//! module: each document is checked and converted into the domain types of
//! [`crate::objects`]. A bad document becomes a [`DocumentError`] naming the
//! file, the document's position, the object (when its kind and name could be
//! read) and what is wrong; the other documents are unaffected.

mod gateway;
mod istio_networking;

pub use gateway::parse_duration_ms;

use std::{collections::BTreeMap, fmt, net::IpAddr, path::Path};

use ipnet::IpNet;
use serde::Deserialize;

use crate::objects::{
    AuthorizationPolicy, AuthzAction, AuthzRule, ClusterIp, Condition, Container, Kind, Labels,
    MtlsMode, Namespace, Object, ObjectKey, Operation, PeerAuthentication, Pod, Service,
    ServicePort, Source, StringPattern, TargetPort,
};

/// A document that could not become an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DocumentError {
    /// The file, or where else the object came from.
    pub file: String,
    /// 1-based position of the document in its file (0 when not from a file).
    pub document: usize,
    /// The object, when its kind, namespace and name could be read.
    pub key: Option<ObjectKey>,
    pub reason: String,
}

impl fmt::Display for DocumentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Document 0: the object did not come from a file (the Kubernetes
        // source names the API server here).
        match (self.document, &self.key) {
            (0, Some(key)) => write!(f, "{} ({key})", self.file)?,
            (0, None) => write!(f, "{}", self.file)?,
            (n, Some(key)) => write!(f, "{} (document {n}, {key})", self.file)?,
            (n, None) => write!(f, "{} (document {n})", self.file)?,
        }
        write!(f, ": {}", self.reason)
    }
}

impl std::error::Error for DocumentError {}

/// Parses every document of a YAML file. Empty documents are skipped.
pub fn parse_file(path: &Path, text: &str) -> Vec<Result<Object, DocumentError>> {
    let file = path.display().to_string();
    let mut out = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let position = index + 1;
        let error = |key: Option<ObjectKey>, reason: String| DocumentError {
            file: file.clone(),
            document: position,
            key,
            reason,
        };
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(value) => value,
            Err(err) => {
                out.push(Err(error(None, format!("not valid YAML: {err}"))));
                // After a syntax error the parser cannot find later documents.
                break;
            }
        };
        out.push(parse_document(value).map_err(|(key, reason)| error(key, reason)));
    }
    out
}

type DocResult<T> = Result<T, (Option<ObjectKey>, String)>;

/// Converts one document (already parsed into a value) into an object, or
/// says what is wrong and, when it could be read, which object it was.
pub(crate) fn parse_document(value: serde_yaml::Value) -> DocResult<Object> {
    let header: Header = serde_path_to_error::deserialize(value.clone()).map_err(|err| {
        let path = err.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" (at {path})")
        };
        (
            None,
            format!("not a Kubernetes object{at}: {}", err.into_inner()),
        )
    })?;
    let kind = match header.kind.as_str() {
        "Namespace" => Kind::Namespace,
        "Pod" => Kind::Pod,
        "Service" => Kind::Service,
        "AuthorizationPolicy" => Kind::AuthorizationPolicy,
        "PeerAuthentication" => Kind::PeerAuthentication,
        "Gateway" => Kind::Gateway,
        "HTTPRoute" => Kind::HttpRoute,
        "GRPCRoute" => Kind::GrpcRoute,
        "ReferenceGrant" => Kind::ReferenceGrant,
        "VirtualService" => Kind::VirtualService,
        "DestinationRule" => Kind::DestinationRule,
        other => {
            return Err((
                None,
                format!(
                    "kind {other:?} is not supported here (supported: Namespace, Pod, Service, \
                     AuthorizationPolicy, PeerAuthentication, Gateway, HTTPRoute, GRPCRoute, ReferenceGrant, \
                     VirtualService, DestinationRule)"
                ),
            ))
        }
    };
    let expected_group = match kind {
        Kind::AuthorizationPolicy | Kind::PeerAuthentication => "security.istio.io/",
        Kind::Gateway | Kind::HttpRoute | Kind::GrpcRoute | Kind::ReferenceGrant => {
            "gateway.networking.k8s.io/"
        }
        Kind::VirtualService | Kind::DestinationRule => "networking.istio.io/",
        _ => "",
    };
    let group_ok = if expected_group.is_empty() {
        header.api_version == "v1"
    } else {
        header.api_version.starts_with(expected_group)
    };
    let meta = header
        .metadata
        .ok_or_else(|| (None, format!("{kind} has no metadata")))?;
    let name = meta
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| (None, format!("{kind} has no metadata.name")))?;
    let namespace = match kind {
        Kind::Namespace => String::new(),
        _ => meta.namespace.unwrap_or_else(|| "default".into()),
    };
    let key = ObjectKey {
        kind,
        namespace: namespace.clone(),
        name: name.clone(),
    };
    let fail = |reason: String| (Some(key.clone()), reason);
    if !group_ok {
        let wanted = if expected_group.is_empty() {
            "v1".to_owned()
        } else {
            format!("{expected_group}v1")
        };
        return Err(fail(format!(
            "apiVersion {:?} is not {wanted}",
            header.api_version
        )));
    }
    check_name(&name).map_err(&fail)?;
    if !namespace.is_empty() {
        check_name(&namespace).map_err(|r| fail(format!("namespace: {r}")))?;
    }
    let labels = meta.labels;
    let created = meta.creation_timestamp;
    let spec = value
        .get("spec")
        .cloned()
        .unwrap_or(serde_yaml::Value::Null);
    let object = match kind {
        Kind::Namespace => Object::Namespace(Namespace { name, labels }),
        Kind::Pod => {
            let status = value
                .get("status")
                .cloned()
                .unwrap_or(serde_yaml::Value::Null);
            Object::Pod(pod(namespace, name, labels, spec, status).map_err(&fail)?)
        }
        Kind::Service => Object::Service(service(namespace, name, labels, spec).map_err(&fail)?),
        Kind::AuthorizationPolicy => {
            Object::AuthorizationPolicy(authorization_policy(namespace, name, spec).map_err(&fail)?)
        }
        Kind::PeerAuthentication => {
            Object::PeerAuthentication(peer_authentication(namespace, name, spec).map_err(&fail)?)
        }
        Kind::Gateway => {
            Object::Gateway(gateway::gateway(namespace, name, labels, spec).map_err(&fail)?)
        }
        Kind::GrpcRoute => {
            Object::GrpcRoute(gateway::grpc_route(namespace, name, created, spec).map_err(&fail)?)
        }
        Kind::HttpRoute => {
            Object::HttpRoute(gateway::http_route(namespace, name, created, spec).map_err(&fail)?)
        }
        Kind::ReferenceGrant => {
            Object::ReferenceGrant(gateway::reference_grant(namespace, name, spec).map_err(&fail)?)
        }
        Kind::VirtualService => Object::VirtualService(
            istio_networking::virtual_service(namespace, name, spec).map_err(&fail)?,
        ),
        Kind::DestinationRule => Object::DestinationRule(
            istio_networking::destination_rule(namespace, name, spec).map_err(&fail)?,
        ),
    };
    Ok(object)
}

/// Kubernetes names: lowercase letters, digits, '-' and '.', at most 253.
fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name {name:?} is not a valid Kubernetes name (lowercase letters, digits, '-', '.')"
        ))
    }
}

fn from_spec<T: for<'de> Deserialize<'de> + Default>(
    spec: serde_yaml::Value,
    what: &str,
) -> Result<T, String> {
    if spec.is_null() {
        return Ok(T::default());
    }
    // The path names the offending field ("ports[0].port"), which serde's
    // own message does not.
    serde_path_to_error::deserialize(spec).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." {
            format!("{what}: {inner}")
        } else {
            format!("{what}.{path}: {inner}")
        }
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: String,
    kind: String,
    metadata: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    labels: Labels,
    #[serde(rename = "creationTimestamp")]
    creation_timestamp: Option<String>,
}

// ---- Pod ----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodSpecYaml {
    node_name: Option<String>,
    service_account_name: Option<String>,
    #[serde(default)]
    containers: Vec<ContainerYaml>,
    #[serde(default)]
    init_containers: Vec<ContainerYaml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerYaml {
    name: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    ports: Vec<ContainerPortYaml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPortYaml {
    name: Option<String>,
    container_port: u16,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatusYaml {
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs", default)]
    pod_ips: Vec<PodIpYaml>,
    phase: Option<String>,
}

#[derive(Deserialize)]
struct PodIpYaml {
    ip: String,
}

fn pod(
    namespace: String,
    name: String,
    labels: Labels,
    spec: serde_yaml::Value,
    status: serde_yaml::Value,
) -> Result<Pod, String> {
    let spec: PodSpecYaml = from_spec(spec, "spec")?;
    let status: PodStatusYaml = from_spec(status, "status")?;
    let node_name = spec
        .node_name
        .filter(|n| !n.is_empty())
        .ok_or("spec.nodeName is required (which node runs the pod)")?;
    let mut ips = Vec::new();
    for text in status
        .pod_ip
        .iter()
        .chain(status.pod_ips.iter().map(|p| &p.ip))
    {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| format!("status.podIP {text:?} is not an IP address"))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    // Istio's injected proxy, as a container or a native sidecar.
    let has_sidecar = spec
        .containers
        .iter()
        .chain(&spec.init_containers)
        .any(|c| c.name == crate::objects::SIDECAR_CONTAINER);
    let containers = spec
        .containers
        .into_iter()
        .map(|c| Container {
            name: c.name,
            command: c.command,
            args: c.args,
            ports: c
                .ports
                .into_iter()
                .map(|p| (p.name.unwrap_or_default(), p.container_port))
                .collect(),
        })
        .collect();
    Ok(Pod {
        namespace,
        name,
        labels,
        node_name,
        service_account: spec
            .service_account_name
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        containers,
        has_sidecar,
        ips,
        // A pod that has finished keeps its IP in its status, but the IP
        // is free for another pod.
        terminated: matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")),
    })
}

// ---- Service ----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ServiceSpecYaml {
    selector: Option<Labels>,
    #[serde(default)]
    ports: Vec<ServicePortYaml>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServicePortYaml {
    name: Option<String>,
    port: u16,
    target_port: Option<IntOrString>,
    protocol: Option<String>,
    app_protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(u16),
    Str(String),
}

fn service(
    namespace: String,
    name: String,
    labels: Labels,
    spec: serde_yaml::Value,
) -> Result<Service, String> {
    let spec: ServiceSpecYaml = from_spec(spec, "spec")?;
    let mut ports = Vec::new();
    for (i, p) in spec.ports.into_iter().enumerate() {
        if p.port == 0 {
            return Err(format!("spec.ports[{i}].port must be 1-65535"));
        }
        match p.protocol.as_deref() {
            None | Some("TCP") => {}
            // Valid Kubernetes, but the mesh carries TCP only: such ports
            // keep working outside it.
            Some("UDP" | "SCTP") => continue,
            Some(other) => {
                return Err(format!(
                    "spec.ports[{i}].protocol {other:?} is not TCP, UDP or SCTP"
                ))
            }
        }
        let target_port = match p.target_port {
            None => TargetPort::Number(p.port),
            Some(IntOrString::Int(0)) => {
                return Err(format!("spec.ports[{i}].targetPort must be 1-65535"))
            }
            Some(IntOrString::Int(n)) => TargetPort::Number(n),
            Some(IntOrString::Str(s)) => match s.parse::<u16>() {
                Ok(n) if n > 0 => TargetPort::Number(n),
                _ => TargetPort::Name(s),
            },
        };
        ports.push(ServicePort {
            name: p.name.unwrap_or_default(),
            port: p.port,
            target_port,
            app_protocol: p.app_protocol.filter(|a| !a.is_empty()),
        });
    }
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") => ClusterIp::Unset,
        Some("None") => ClusterIp::Headless,
        Some(text) => ClusterIp::Ip(
            text.parse()
                .map_err(|_| format!("spec.clusterIP {text:?} is not an IP address or \"None\""))?,
        ),
    };
    Ok(Service {
        namespace,
        name,
        labels,
        selector: spec.selector,
        ports,
        cluster_ip,
    })
}

// ---- AuthorizationPolicy ----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AuthzSpecYaml {
    selector: Option<SelectorYaml>,
    target_ref: Option<serde_yaml::Value>,
    #[serde(default)]
    target_refs: Vec<serde_yaml::Value>,
    action: Option<String>,
    provider: Option<serde_yaml::Value>,
    #[serde(default)]
    rules: Vec<RuleYaml>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SelectorYaml {
    #[serde(default)]
    match_labels: Labels,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RuleYaml {
    #[serde(default)]
    from: Vec<FromYaml>,
    #[serde(default)]
    to: Vec<ToYaml>,
    #[serde(default)]
    when: Vec<ConditionYaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FromYaml {
    #[serde(default)]
    source: SourceYaml,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToYaml {
    #[serde(default)]
    operation: OperationYaml,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SourceYaml {
    principals: Option<Vec<String>>,
    not_principals: Option<Vec<String>>,
    namespaces: Option<Vec<String>>,
    not_namespaces: Option<Vec<String>>,
    ip_blocks: Option<Vec<String>>,
    not_ip_blocks: Option<Vec<String>>,
    request_principals: Option<Vec<String>>,
    not_request_principals: Option<Vec<String>>,
    remote_ip_blocks: Option<Vec<String>>,
    not_remote_ip_blocks: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OperationYaml {
    ports: Option<Vec<String>>,
    not_ports: Option<Vec<String>>,
    hosts: Option<Vec<String>>,
    not_hosts: Option<Vec<String>>,
    methods: Option<Vec<String>>,
    not_methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    not_paths: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConditionYaml {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    not_values: Vec<String>,
}

fn authorization_policy(
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
    if action == AuthzAction::Custom && spec.provider.is_none() {
        return Err("spec.action CUSTOM needs spec.provider".into());
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

/// A `targetRef`: `{group, kind, name}` (a namespace other than the
/// policy's is not allowed, as in Istio).
fn policy_target(value: &serde_yaml::Value) -> Result<crate::objects::PolicyTarget, String> {
    use crate::objects::PolicyTarget;
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let name = field("name")
        .filter(|n| !n.is_empty())
        .ok_or("name is required")?;
    let kind = field("kind").ok_or("kind is required")?;
    let group = field("group").unwrap_or_default();
    if field("namespace").is_some() {
        return Err(
            "namespace is not allowed: a policy targets objects of its own namespace".into(),
        );
    }
    Ok(match (group.as_str(), kind.as_str()) {
        ("gateway.networking.k8s.io", "Gateway") => PolicyTarget::Gateway { name },
        ("" | "core", "Service") => PolicyTarget::Service { name },
        _ => PolicyTarget::Other(format!("{group}/{kind} {name}")),
    })
}

fn describe_ref(value: &serde_yaml::Value) -> String {
    let field = |k: &str| {
        value
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_owned()
    };
    format!("{}/{}", field("kind"), field("name"))
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

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PeerAuthnSpecYaml {
    selector: Option<SelectorYaml>,
    mtls: Option<MtlsYaml>,
    #[serde(default)]
    port_level_mtls: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MtlsYaml {
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

fn peer_authentication(
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
