//! The Kubernetes objects Weft reads, as plain domain types.
//!
//! Sources (the local YAML directory now, Kubernetes later) convert their
//! input into these once; translation into workload-API resources works only
//! on these.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;

/// Labels or a selector's `matchLabels`.
pub type Labels = BTreeMap<String, String>;

/// The namespace label that enrolls a namespace (or, on a pod, a pod).
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// The value of [`DATAPLANE_MODE_LABEL`] that enrolls.
pub const DATAPLANE_MODE_AMBIENT: &str = "ambient";
/// The name of Istio's injected sidecar container: a pod that has one is
/// never enrolled in ambient mode.
pub const SIDECAR_CONTAINER: &str = "istio-proxy";
/// The value of [`DATAPLANE_MODE_LABEL`] that opts a pod out.
pub const DATAPLANE_MODE_NONE: &str = "none";

/// Which kind of object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    AuthorizationPolicy,
    PeerAuthentication,
    Gateway,
    HttpRoute,
    GrpcRoute,
    ReferenceGrant,
    VirtualService,
    DestinationRule,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
        })
    }
}

/// Identifies an object: kind, namespace ("" for cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

impl Namespace {
    /// Whether the namespace is enrolled in the mesh.
    pub fn is_ambient(&self) -> bool {
        self.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some(DATAPLANE_MODE_AMBIENT)
    }
}

/// A container's command line and named ports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// Declared ports: (name, containerPort).
    pub ports: Vec<(String, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node_name: String,
    pub service_account: String,
    pub containers: Vec<Container>,
    /// Runs Istio's sidecar proxy (a container named
    /// [`SIDECAR_CONTAINER`]): its traffic is the sidecar's, never ambient's.
    pub has_sidecar: bool,
    /// Assigned by the runtime; a pod without one is not yet addressable.
    pub ips: Vec<IpAddr>,
    /// Finished (`status.phase` Succeeded or Failed): no longer a workload,
    /// and its addresses may already belong to another pod.
    pub terminated: bool,
    /// Runs in its node's network namespace (`spec.hostNetwork`): its
    /// addresses are the node's, and it is never in the mesh.
    pub host_network: bool,
}

impl Pod {
    /// Whether the pod is in the mesh: its own `istio.io/dataplane-mode`
    /// label wins (`none` opts out), else its namespace's.
    pub fn is_enrolled(&self, namespace: Option<&Namespace>) -> bool {
        // A host-network pod shares its node's namespace: capturing it
        // would capture the node.
        if self.has_sidecar || self.host_network {
            return false;
        }
        match self.labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
            Some(DATAPLANE_MODE_AMBIENT) => true,
            Some(DATAPLANE_MODE_NONE) => false,
            _ => namespace.is_some_and(Namespace::is_ambient),
        }
    }

    /// The port a (possibly named) target port resolves to on this pod.
    pub fn resolve_port(&self, target: &TargetPort) -> Option<u16> {
        match target {
            TargetPort::Number(port) => Some(*port),
            TargetPort::Name(name) => self
                .containers
                .iter()
                .flat_map(|c| &c.ports)
                .find(|(port_name, _)| port_name == name)
                .map(|(_, port)| *port),
        }
    }
}

/// A Service port's `targetPort`: a number, or the name of a container port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: TargetPort,
    /// `appProtocol`, as written.
    pub app_protocol: Option<String>,
}

/// What a Service port carries, as Istio reads it: `appProtocol` first,
/// else the port name's prefix (`http-web`, `grpc`, `tcp-db`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortProtocol {
    /// Not declared: the waypoint looks at the first bytes.
    Detect,
    /// HTTP/1.1 (or HTTP/2 with prior knowledge).
    Http,
    Http2,
    /// Not HTTP: carried at L4 at once.
    Tcp,
}

impl ServicePort {
    pub fn protocol(&self) -> PortProtocol {
        // appProtocol replaces the name entirely; either is read up to its
        // first '-' (`http-web`), except the names that contain one.
        let declared = self
            .app_protocol
            .as_deref()
            .unwrap_or(&self.name)
            .to_ascii_lowercase();
        let prefix = match declared.as_str() {
            "grpc-web" | "kubernetes.io/ws" => return PortProtocol::Http,
            "kubernetes.io/h2c" => return PortProtocol::Http2,
            "kubernetes.io/wss" => return PortProtocol::Tcp,
            other => other.split('-').next().unwrap_or_default(),
        };
        match prefix {
            "http" => PortProtocol::Http,
            "http2" | "grpc" => PortProtocol::Http2,
            "tcp" | "tls" | "https" | "mongo" | "mysql" | "redis" => PortProtocol::Tcp,
            _ => PortProtocol::Detect,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `None` selects nothing (endpoints are managed elsewhere).
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
    /// The VIP; `None` when unset (the control service allocates one).
    pub cluster_ip: ClusterIp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterIp {
    /// Not given: allocate one.
    Unset,
    /// `clusterIP: None`: a headless service.
    Headless,
    Ip(IpAddr),
}

/// The label that sends an object's traffic through a waypoint: on a
/// Service, a Pod or a Namespace (the object's own label wins; `none` opts
/// out).
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// With [`USE_WAYPOINT_LABEL`]: the waypoint's namespace, when it is not
/// the object's own.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// On a waypoint Gateway: which traffic it takes (`service`, the default,
/// `workload`, `all` or `none`).
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// The Gateway class of waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// On a waypoint's pods and Service: the Gateway they belong to.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Which traffic a waypoint takes (`istio.io/waypoint-for`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WaypointFor {
    /// Traffic addressed to a Service (Istio's default).
    #[default]
    Service,
    /// Traffic addressed to a pod.
    Workload,
    All,
    None,
}

impl WaypointFor {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "service" => Ok(Self::Service),
            "workload" => Ok(Self::Workload),
            "all" => Ok(Self::All),
            "none" => Ok(Self::None),
            other => Err(format!(
                "{WAYPOINT_FOR_LABEL}={other:?} is not one of service, workload, all, none"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Workload => "workload",
            Self::All => "all",
            Self::None => "none",
        }
    }

    pub fn takes_services(self) -> bool {
        matches!(self, Self::Service | Self::All)
    }

    pub fn takes_workloads(self) -> bool {
        matches!(self, Self::Workload | Self::All)
    }
}

/// A Gateway API listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub name: String,
    pub port: u16,
    pub protocol: String,
}

/// A `gateway.networking.k8s.io` Gateway; of class [`WAYPOINT_CLASS`], a
/// waypoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub class: String,
    pub listeners: Vec<Listener>,
}

impl Gateway {
    pub fn is_waypoint(&self) -> bool {
        self.class == WAYPOINT_CLASS
    }

    /// Which traffic the waypoint takes (a bad label was refused at parse).
    pub fn waypoint_for(&self) -> WaypointFor {
        self.labels
            .get(WAYPOINT_FOR_LABEL)
            .and_then(|v| WaypointFor::parse(v).ok())
            .unwrap_or_default()
    }
}

/// What a route attaches to (`parentRefs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParentRef {
    /// A Service (GAMMA): traffic addressed to it, on `port` if given.
    Service {
        namespace: String,
        name: String,
        port: Option<u16>,
        /// `sectionName`: a port of the Service, by name.
        section: Option<String>,
    },
    /// A Gateway (a waypoint, or another gateway).
    Gateway {
        namespace: String,
        name: String,
        port: Option<u16>,
        /// `sectionName`: a listener, by name.
        section: Option<String>,
    },
}

/// `HTTPPathMatch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// Matched by segment (`/a` matches `/a` and `/a/b`, not `/ab`).
    Prefix(String),
    RegularExpression(String),
}

/// A header or query-parameter match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueMatch {
    pub name: String,
    pub value: String,
    pub regex: bool,
}

/// `HTTPRouteMatch`: every present field must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpMatch {
    pub path: PathMatch,
    pub headers: Vec<ValueMatch>,
    pub query_params: Vec<ValueMatch>,
    pub method: Option<String>,
    /// For a GRPCRoute's match: the characters of its service and method,
    /// which order gRPC rules (the path above is compiled from them).
    pub grpc_method: Option<(usize, usize)>,
}

impl Default for HttpMatch {
    /// The spec's default: every request (`PathPrefix /`).
    fn default() -> Self {
        Self {
            path: PathMatch::Prefix("/".into()),
            headers: Vec::new(),
            query_params: Vec::new(),
            method: None,
            grpc_method: None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// A path change: `ReplaceFullPath` or `ReplacePrefixMatch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    Full(String),
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HttpFilter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    Redirect {
        scheme: Option<String>,
        hostname: Option<String>,
        port: Option<u16>,
        path: Option<PathModifier>,
        status: u16,
    },
    Rewrite {
        hostname: Option<String>,
        path: Option<PathModifier>,
    },
    Mirror {
        backend: BackendRef,
        /// Share of requests mirrored, in millionths.
        parts_per_million: u32,
    },
    Cors(CorsPolicy),
}

/// HTTPRoute's `CORS` filter, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorsPolicy {
    /// `*`, or `scheme://host[:port]` with an optional `*.` host prefix.
    pub allow_origins: Vec<String>,
    pub allow_credentials: bool,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub max_age_seconds: u32,
}

/// A `backendRef`: a Service and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    /// Kind of the referent; only `Service` (core group) is resolvable.
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub port: Option<u16>,
    pub weight: u32,
    pub filters: Vec<HttpFilter>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRetry {
    pub attempts: Option<u32>,
    pub codes: Vec<u16>,
    pub backoff_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpRule {
    /// Empty: the default match (every request).
    pub matches: Vec<HttpMatch>,
    pub filters: Vec<HttpFilter>,
    pub backends: Vec<BackendRef>,
    pub request_timeout_ms: Option<u64>,
    pub backend_timeout_ms: Option<u64>,
    pub retry: Option<HttpRetry>,
}

/// A Gateway API HTTPRoute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    pub namespace: String,
    pub name: String,
    pub parents: Vec<ParentRef>,
    pub rules: Vec<HttpRule>,
    /// `metadata.creationTimestamp`, for precedence between routes (the
    /// oldest first); files without one sort after those with one.
    pub created: Option<String>,
    /// A GRPCRoute, compiled to the same rules: its matches name gRPC
    /// methods as paths and match gRPC requests only.
    pub grpc: bool,
}

impl HttpRoute {
    /// `HTTPRoute` or `GRPCRoute`, for messages.
    pub fn kind_name(&self) -> &'static str {
        if self.grpc {
            "GRPCRoute"
        } else {
            "HTTPRoute"
        }
    }
}

/// A `ReferenceGrant`: objects of the `from` kinds in the `from`
/// namespaces may refer to the `to` objects of the grant's own namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceGrant {
    pub namespace: String,
    pub name: String,
    /// (group, kind, namespace).
    pub from: Vec<(String, String, String)>,
    /// (group, kind, name: `None` for any).
    pub to: Vec<(String, String, Option<String>)>,
}

impl ReferenceGrant {
    /// Whether an object of `group`/`kind` in `from_namespace` may refer to
    /// `to_group`/`to_kind` `name` in the grant's namespace.
    pub fn allows(
        &self,
        group: &str,
        kind: &str,
        from_namespace: &str,
        to_group: &str,
        to_kind: &str,
        name: &str,
    ) -> bool {
        self.from
            .iter()
            .any(|(g, k, n)| g == group && k == kind && n == from_namespace)
            && self.to.iter().any(|(g, k, n)| {
                g == to_group && k == to_kind && n.as_deref().is_none_or(|n| n == name)
            })
    }
}

/// Istio's string match (`exact`, `prefix`, `regex`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IstioMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

/// An Istio `HTTPMatchRequest`, the parts a fault's match uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IstioHttpMatch {
    pub uri: Option<IstioMatch>,
    /// (lower-case name, match).
    pub headers: Vec<(String, IstioMatch)>,
    pub method: Option<IstioMatch>,
}

/// Istio's `HTTPFaultInjection`; shares of requests in thousandths of a
/// percent (`percentage.value` 12.5 is 12_500).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fault {
    /// (delay in milliseconds, share).
    pub delay: Option<(u64, u32)>,
    /// (HTTP status, share).
    pub abort: Option<(u16, u32)>,
}

/// One `http[]` entry of a VirtualService.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IstioHttpRoute {
    /// Empty: every request.
    pub matches: Vec<IstioHttpMatch>,
    pub fault: Option<Fault>,
    /// Fields Weft does not apply (route, timeout, retries…): a
    /// VirtualService is honoured for its faults; routing is HTTPRoute's.
    pub ignored: Vec<String>,
}

/// An Istio VirtualService (`networking.istio.io`), for its faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualService {
    pub namespace: String,
    pub name: String,
    pub hosts: Vec<String>,
    pub http: Vec<IstioHttpRoute>,
    /// Top-level fields Weft does not apply (`tcp`, `tls`, `gateways`, …).
    pub ignored: Vec<String>,
}

/// DestinationRule `trafficPolicy.loadBalancer.simple`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
}

/// An Istio DestinationRule's traffic policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DestinationRule {
    pub namespace: String,
    pub name: String,
    pub host: String,
    pub load_balancer: LoadBalancer,
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub consecutive_errors: Option<u32>,
    pub base_ejection_ms: Option<u64>,
    pub max_ejection_percent: Option<u32>,
    /// Fields Weft does not apply (subsets, tls, …).
    pub ignored: Vec<String>,
}

/// `AuthorizationPolicy.spec.action`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthzAction {
    #[default]
    Allow,
    Deny,
    Audit,
    Custom,
}

/// A string matcher as Istio writes them: exact, `prefix*`, `*suffix` or `*`.
/// Parsed once; never turned into a regular expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StringPattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// `*`: any non-empty value.
    Presence,
}

impl StringPattern {
    /// Istio's rule: a single `*` at the start or the end, or alone.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Presence);
        }
        if text.is_empty() {
            return Err("an empty string matches nothing; remove it or use \"*\"".into());
        }
        if text.matches('*').count() > 1 {
            return Err(format!(
                "{text:?}: only one '*' is allowed, at the start or the end"
            ));
        }
        if let Some(suffix) = text.strip_prefix('*') {
            Ok(Self::Suffix(suffix.to_owned()))
        } else if let Some(prefix) = text.strip_suffix('*') {
            Ok(Self::Prefix(prefix.to_owned()))
        } else if text.contains('*') {
            Err(format!(
                "{text:?}: '*' is allowed only at the start or the end"
            ))
        } else {
            Ok(Self::Exact(text.to_owned()))
        }
    }
}

/// `rules[].from[].source`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Source {
    pub principals: Vec<StringPattern>,
    pub not_principals: Vec<StringPattern>,
    pub namespaces: Vec<StringPattern>,
    pub not_namespaces: Vec<StringPattern>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
    /// The original client's address (a waypoint knows it from the tunnel).
    pub remote_ip_blocks: Vec<IpNet>,
    pub not_remote_ip_blocks: Vec<IpNet>,
    /// `requestPrincipals` / `notRequestPrincipals` (JWT), which no Weft
    /// proxy validates: a rule using them fails closed.
    pub request_principals: bool,
    /// L7-only attributes present (requestPrincipals, remoteIpBlocks, …),
    /// by field name: a node proxy cannot evaluate them.
    pub l7_fields: Vec<String>,
}

/// `rules[].to[].operation`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Operation {
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub hosts: Vec<StringPattern>,
    pub not_hosts: Vec<StringPattern>,
    pub methods: Vec<StringPattern>,
    pub not_methods: Vec<StringPattern>,
    pub paths: Vec<StringPattern>,
    pub not_paths: Vec<StringPattern>,
    /// L7-only attributes present (hosts, methods, paths), by field name.
    pub l7_fields: Vec<String>,
}

/// `rules[].when[]`, already split by what a node proxy can evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    SourceIp {
        values: Vec<IpNet>,
        not_values: Vec<IpNet>,
    },
    SourceNamespace {
        values: Vec<StringPattern>,
        not_values: Vec<StringPattern>,
    },
    SourcePrincipal {
        values: Vec<StringPattern>,
        not_values: Vec<StringPattern>,
    },
    DestinationIp {
        values: Vec<IpNet>,
        not_values: Vec<IpNet>,
    },
    DestinationPort {
        values: Vec<u16>,
        not_values: Vec<u16>,
    },
    /// A key only an L7 proxy knows (request.headers[…], …).
    L7 {
        key: String,
        values: Vec<StringPattern>,
        not_values: Vec<StringPattern>,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthzRule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

impl AuthzRule {
    /// Names of the L7-only attributes this rule uses.
    pub fn l7_attributes(&self) -> Vec<String> {
        let mut found: Vec<String> = self
            .from
            .iter()
            .flat_map(|s| s.l7_fields.iter().map(|f| format!("from.source.{f}")))
            .chain(
                self.to
                    .iter()
                    .flat_map(|o| o.l7_fields.iter().map(|f| format!("to.operation.{f}"))),
            )
            .collect();
        found.extend(self.when.iter().filter_map(|c| match c {
            Condition::L7 { key, .. } => Some(format!("when.{key}")),
            _ => None,
        }));
        found
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub namespace: String,
    pub name: String,
    /// `None`: every workload of the namespace (or mesh, in the root namespace).
    pub selector: Option<Labels>,
    /// Set when the policy targets a waypoint/gateway/service (`targetRef(s)`),
    /// which node proxies do not enforce (`kind/name`, for logs).
    pub target_refs: Vec<String>,
    /// The same, resolved: what a waypoint enforces.
    pub targets: Vec<PolicyTarget>,
    pub action: AuthzAction,
    pub rules: Vec<AuthzRule>,
}

/// What a waypoint-enforced policy is attached to (`targetRefs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyTarget {
    /// A Gateway (a waypoint): every request through it.
    Gateway { name: String },
    /// A Service: requests addressed to it.
    Service { name: String },
    /// Any other kind (`group/kind name`): nothing Weft enforces.
    Other(String),
}

/// `PeerAuthentication` mTLS mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MtlsMode {
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuthentication {
    pub namespace: String,
    pub name: String,
    pub selector: Option<Labels>,
    pub mode: MtlsMode,
    pub port_level: BTreeMap<u16, MtlsMode>,
}

/// Any object the sources produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Object {
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    /// A GRPCRoute, in HTTPRoute's terms (`grpc` set).
    GrpcRoute(HttpRoute),
    ReferenceGrant(ReferenceGrant),
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
}

impl Object {
    pub fn key(&self) -> ObjectKey {
        let (kind, namespace, name) = match self {
            Object::Namespace(o) => (Kind::Namespace, "", &o.name),
            Object::Pod(o) => (Kind::Pod, o.namespace.as_str(), &o.name),
            Object::Service(o) => (Kind::Service, o.namespace.as_str(), &o.name),
            Object::AuthorizationPolicy(o) => {
                (Kind::AuthorizationPolicy, o.namespace.as_str(), &o.name)
            }
            Object::PeerAuthentication(o) => {
                (Kind::PeerAuthentication, o.namespace.as_str(), &o.name)
            }
            Object::Gateway(o) => (Kind::Gateway, o.namespace.as_str(), &o.name),
            Object::HttpRoute(o) => (Kind::HttpRoute, o.namespace.as_str(), &o.name),
            Object::GrpcRoute(o) => (Kind::GrpcRoute, o.namespace.as_str(), &o.name),
            Object::ReferenceGrant(o) => (Kind::ReferenceGrant, o.namespace.as_str(), &o.name),
            Object::VirtualService(o) => (Kind::VirtualService, o.namespace.as_str(), &o.name),
            Object::DestinationRule(o) => (Kind::DestinationRule, o.namespace.as_str(), &o.name),
        };
        ObjectKey {
            kind,
            namespace: namespace.to_owned(),
            name: name.clone(),
        }
    }
}

/// Whether `selector` selects an object with `labels` (every pair present).
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_patterns_follow_istios_single_wildcard_rule() {
        let cases = [
            (
                "spiffe://td/ns/a/sa/b",
                Ok(StringPattern::Exact("spiffe://td/ns/a/sa/b".into())),
            ),
            (
                "spiffe://td/ns/a/*",
                Ok(StringPattern::Prefix("spiffe://td/ns/a/".into())),
            ),
            ("*/sa/b", Ok(StringPattern::Suffix("/sa/b".into()))),
            ("*", Ok(StringPattern::Presence)),
        ];
        for (text, expected) in cases {
            assert_eq!(StringPattern::parse(text), expected, "{text}");
        }
        for bad in ["a*b", "*a*", "**", "a**", ""] {
            assert!(StringPattern::parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn port_protocols_come_from_app_protocol_then_the_name() {
        let port = |name: &str, app: Option<&str>| ServicePort {
            name: name.into(),
            port: 80,
            target_port: TargetPort::Number(80),
            app_protocol: app.map(Into::into),
        };
        let cases = [
            ("http", None, PortProtocol::Http),
            ("http-web", None, PortProtocol::Http),
            ("HTTP-web", None, PortProtocol::Http),
            ("http2-api", None, PortProtocol::Http2),
            ("grpc", None, PortProtocol::Http2),
            ("grpc-web", None, PortProtocol::Http),
            ("tcp-db", None, PortProtocol::Tcp),
            ("tls", None, PortProtocol::Tcp),
            ("https-admin", None, PortProtocol::Tcp),
            ("mysql", None, PortProtocol::Tcp),
            ("web", None, PortProtocol::Detect),
            ("", None, PortProtocol::Detect),
            ("httpx", None, PortProtocol::Detect),
            // appProtocol wins over the name.
            ("tcp-db", Some("http"), PortProtocol::Http),
            ("http", Some("tcp"), PortProtocol::Tcp),
            ("web", Some("kubernetes.io/h2c"), PortProtocol::Http2),
            ("web", Some("kubernetes.io/ws"), PortProtocol::Http),
            ("web", Some("kubernetes.io/wss"), PortProtocol::Tcp),
            ("web", Some("grpc-web"), PortProtocol::Http),
            ("web", Some("http-legacy"), PortProtocol::Http),
            ("http", Some("example.com/custom"), PortProtocol::Detect),
        ];
        for (name, app, expected) in cases {
            assert_eq!(port(name, app).protocol(), expected, "{name} / {app:?}");
        }
    }

    #[test]
    fn selectors_need_every_label() {
        let labels: Labels = [("app".into(), "web".into()), ("v".into(), "1".into())].into();
        assert!(selects(&[("app".into(), "web".into())].into(), &labels));
        assert!(!selects(&[("app".into(), "db".into())].into(), &labels));
        assert!(selects(&Labels::new(), &labels));
    }
}
