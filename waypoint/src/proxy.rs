//! What every connection through the waypoint shares: who the waypoint is,
//! the mesh's state from xDS, its certificate, the HBONE pool and the
//! endpoint balancer.

use std::{net::SocketAddr, sync::Arc};

use weft_proto::spiffe::Identity;
use weft_proxy::{
    balance::Balancer,
    hbone::{pool::Pool, tls::TrustBundle},
    identity::CertificateManager,
    peer_metadata::PeerMetadata,
    state::{GatewayAddress, ProxyState, Service, Workload},
    xds::XdsStatus,
};

/// How long a request waits for the waypoint's first configuration.
pub const CONFIG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The waypoint has no configuration from the control service yet.
#[derive(Debug, thiserror::Error)]
#[error(
    "no configuration from the control service yet (waited {}s); is it reachable?",
    CONFIG_WAIT.as_secs()
)]
pub struct NoConfig;

/// Shared by all of the waypoint's proxying.
pub struct Waypoint {
    /// `namespace/name` of the waypoint's Gateway.
    pub name: String,
    pub namespace: String,
    pub gateway: String,
    pub identity: Identity,
    /// The workload uid this waypoint's tunnels leave from (pool key).
    pub source_workload: String,
    pub state: Arc<ProxyState>,
    pub certs: CertificateManager,
    pub trust: TrustBundle,
    pub pool: Pool,
    /// Upstream HTTP connections kept for reuse.
    pub http_pool: Arc<crate::http_pool::HttpPool>,
    pub balancer: Balancer,
    /// The routes of the services behind the waypoint.
    pub routes: Arc<crate::routes::RouteTable>,
    /// The L7 policies waypoints enforce.
    pub policies: Arc<crate::policy::PolicyTable>,
    /// Backend services' policies and what is seen of their endpoints.
    pub backends: Arc<crate::backends::Backends>,
    /// How request paths are made canonical.
    pub path_normalization: crate::normalize::PathNormalization,
    /// The waypoint's Prometheus registry and its request families.
    pub metrics: weft_proxy::metrics::Metrics,
    pub request_metrics: weft_proxy::metrics::RequestMetrics,
    /// Where request spans go, and the share of new traces sampled.
    pub tracer: weft_proxy::otlp::Exporter,
    pub trace_sampling: f64,
    xds: tokio::sync::watch::Receiver<XdsStatus>,
}

/// What an onward tunnel's CONNECT says of the traffic it carries.
#[derive(Clone, Debug)]
pub struct Tunnel {
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// The headers as text: part of the key kept upstream connections are
    /// pooled by, so a reused one says the same of its requests as a new
    /// one would.
    pub key: Arc<str>,
}

impl Tunnel {
    pub fn new(headers: Vec<(http::HeaderName, http::HeaderValue)>) -> Self {
        let key: String = headers
            .iter()
            .map(|(n, v)| format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        Self {
            headers,
            key: key.into(),
        }
    }
}

/// Where a CONNECT through the waypoint is headed.
#[derive(Clone, Debug)]
pub enum Target {
    /// A service, by VIP and port: the waypoint chooses the endpoint.
    Service { service: Arc<Service>, port: u16 },
    /// A pod, by its address.
    Workload {
        workload: Arc<Workload>,
        addr: SocketAddr,
    },
}

impl Target {
    /// The name to log (`namespace/hostname` or the workload's).
    pub fn name(&self) -> String {
        match self {
            Target::Service { service, .. } => service.key().to_owned(),
            Target::Workload { workload, .. } => {
                format!("{}/{}", workload.namespace, workload.name)
            }
        }
    }
}

impl Waypoint {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        namespace: String,
        gateway: String,
        identity: Identity,
        source_workload: String,
        state: Arc<ProxyState>,
        certs: CertificateManager,
        trust: TrustBundle,
        routes: Arc<crate::routes::RouteTable>,
        policies: Arc<crate::policy::PolicyTable>,
        backends: Arc<crate::backends::Backends>,
        xds: tokio::sync::watch::Receiver<XdsStatus>,
    ) -> Self {
        let metrics = weft_proxy::metrics::Metrics::default();
        Self {
            name: format!("{namespace}/{gateway}"),
            namespace,
            gateway,
            identity,
            source_workload,
            state,
            certs,
            trust,
            pool: Pool::default(),
            http_pool: Arc::default(),
            balancer: Balancer::default(),
            routes,
            policies,
            backends,
            path_normalization: Default::default(),
            request_metrics: weft_proxy::metrics::RequestMetrics::register(&metrics),
            metrics,
            tracer: Default::default(),
            trace_sampling: 1.0,
            xds,
        }
    }

    /// The tunnel onward for `client`'s traffic: `forwarded` with the
    /// client and the service it reached, and the waypoint's own
    /// `baggage`.
    pub fn tunnel(&self, client: SocketAddr, service_host: Option<&str>) -> Tunnel {
        let own = PeerMetadata {
            cluster: String::new(),
            namespace: self.namespace.clone(),
            workload: self.gateway.clone(),
            canonical_service: self.gateway.clone(),
            canonical_revision: "latest".into(),
        };
        Tunnel::new(weft_proxy::peer_metadata::connect_headers(
            client,
            service_host,
            Some(&own),
        ))
    }

    /// Waits until the first full configuration has arrived.
    pub async fn config_ready(&self) -> Result<(), NoConfig> {
        if self.xds.borrow().synced {
            return Ok(());
        }
        let mut xds = self.xds.clone();
        let synced = tokio::time::timeout(CONFIG_WAIT, async {
            xds.wait_for(|s| s.synced).await.is_ok()
        })
        .await;
        match synced {
            Ok(true) => Ok(()),
            _ => Err(NoConfig),
        }
    }

    pub fn xds(&self) -> XdsStatus {
        self.xds.borrow().clone()
    }

    /// Every service this waypoint forwards to: those bound to it and the
    /// backends their routes name, with policies and endpoints.
    pub fn backends_view(&self) -> Vec<crate::backends::BackendView> {
        let mut keys: std::collections::BTreeSet<String> = self
            .state
            .dump()
            .services
            .iter()
            .filter(|s| s.waypoint.as_ref().is_some_and(|w| self.is_self(w)))
            .map(|s| s.key().to_owned())
            .collect();
        for routes in self.routes.dump().values() {
            keys.extend(
                routes
                    .routes
                    .iter()
                    .flat_map(|r| &r.backends)
                    .filter(|b| !b.service.is_empty())
                    .map(|b| b.service.clone()),
            );
        }
        keys.iter()
            .map(|key| self.backends.view(key, &self.state.endpoints(key)))
            .collect()
    }

    /// Whether `address` (a service's or a workload's waypoint) is this
    /// waypoint: its Service, by VIP or hostname.
    pub fn is_self(&self, address: &GatewayAddress) -> bool {
        match address {
            GatewayAddress::Ip { ip, .. } => self
                .state
                .service_by_ip(*ip)
                .is_some_and(|s| s.namespace == self.namespace && s.name == self.gateway),
            GatewayAddress::Hostname {
                namespace,
                hostname,
                ..
            } => {
                *namespace == self.namespace
                    && hostname
                        .strip_prefix(&format!("{}.{}.svc", self.gateway, self.namespace))
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
            }
        }
    }

    /// What `authority` names, if it is a destination this waypoint
    /// serves: a service or pod whose traffic is bound to it. Anything else
    /// is refused, so that no client can use the waypoint to reach (with
    /// the waypoint's identity) what it was not put in front of.
    pub fn target(&self, authority: SocketAddr) -> Result<Target, TargetError> {
        if let Some((service, _)) = self.state.service_by_vip(authority) {
            return match &service.waypoint {
                Some(w) if self.is_self(w) => Ok(Target::Service {
                    service,
                    port: authority.port(),
                }),
                _ => Err(TargetError::NotBound {
                    destination: service.key().to_owned(),
                    waypoint: self.name.clone(),
                }),
            };
        }
        match self.state.workload_by_ip(authority.ip()) {
            Some(workload) => match &workload.waypoint {
                Some(w) if self.is_self(w) => Ok(Target::Workload {
                    workload,
                    addr: authority,
                }),
                _ => Err(TargetError::NotBound {
                    destination: format!("{}/{}", workload.namespace, workload.name),
                    waypoint: self.name.clone(),
                }),
            },
            None => Err(TargetError::Unknown(authority)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{0} is neither a service VIP nor a workload of the mesh")]
    Unknown(SocketAddr),
    #[error("{destination} does not use waypoint {waypoint}")]
    NotBound {
        destination: String,
        waypoint: String,
    },
}
