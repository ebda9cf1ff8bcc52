//! Kubernetes-style YAML → [`Object`]s.
//!
//! The serde types here mirror the YAML users write and never leave this
//! module: each document is checked and converted into the domain types of
//! [`crate::objects`]. A bad document becomes a [`DocumentError`] naming the
//! file, the document's position, the object (when its kind and name could be
//! read) and what is wrong; the other documents are unaffected.

mod gateway;
mod istio_networking;
pub(crate) mod istio_security;

pub use gateway::parse_duration_ms;
pub use istio_security::parse_cidr;

use std::{fmt, net::IpAddr, path::Path};

use serde::Deserialize;

use crate::objects::{
    ClusterIp, Container, Kind, Labels, Namespace, Object, ObjectKey, Pod, Service, ServicePort,
    TargetPort,
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
        Kind::AuthorizationPolicy => Object::AuthorizationPolicy(
            istio_security::authorization_policy(namespace, name, spec).map_err(&fail)?,
        ),
        Kind::PeerAuthentication => Object::PeerAuthentication(
            istio_security::peer_authentication(namespace, name, spec).map_err(&fail)?,
        ),
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
    #[serde(default)]
    host_network: bool,
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
    let host_network = spec.host_network;
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
        host_network,
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
