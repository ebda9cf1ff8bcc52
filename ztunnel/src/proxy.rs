//! What every per-pod listener shares: config state, certificates, the
//! HBONE pool and trust, and the pods themselves.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use weft_proto::spiffe::Identity;
use weft_proxy::{
    hbone::{pool::Pool, tls::TrustBundle},
    identity::CertificateManager,
    metrics::Metrics,
    state::{ProxyState, Workload},
};

use crate::netns::InpodNetns;

/// Ports ztunnel listens on inside every enrolled pod (Istio's).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub hbone: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            outbound: 15001,
            inbound_plaintext: 15006,
            hbone: weft_proxy::hbone::HBONE_PORT,
        }
    }
}

impl Ports {
    /// Whether `port` is one of ztunnel's own (never a destination).
    pub fn is_own(&self, port: u16) -> bool {
        [
            self.outbound,
            self.inbound_plaintext,
            self.hbone,
            15000,
            15020,
            15021,
        ]
        .contains(&port)
    }
}

/// Shared by all of ztunnel's proxying.
pub struct Proxy {
    pub node: String,
    pub state: Arc<ProxyState>,
    pub certs: CertificateManager,
    pub pool: Pool,
    pub trust: TrustBundle,
    pub ports: Ports,
    /// Open connections (for status, metrics and live policy
    /// re-evaluation) and denials.
    pub connections: Arc<crate::connections::Connections>,
    pub metrics: Metrics,
    /// Round-robin position per service.
    next_endpoint: Mutex<HashMap<String, usize>>,
}

impl Proxy {
    pub fn new(
        node: String,
        state: Arc<ProxyState>,
        certs: CertificateManager,
        trust: TrustBundle,
        metrics: Metrics,
    ) -> Self {
        Self {
            node,
            state,
            certs,
            pool: Pool::default(),
            trust,
            ports: Ports::default(),
            connections: Arc::new(crate::connections::Connections::new(metrics.tcp.clone())),
            metrics,
            next_endpoint: Mutex::default(),
        }
    }

    /// The next of `endpoints` for `service`, in turn.
    pub fn pick(&self, service: &str, endpoints: &[Arc<Workload>]) -> Option<Arc<Workload>> {
        if endpoints.is_empty() {
            return None;
        }
        let mut next = self.next_endpoint.lock().expect("lb lock");
        let position = next.entry(service.to_owned()).or_insert(0);
        let chosen = endpoints[*position % endpoints.len()].clone();
        *position = position.wrapping_add(1);
        Some(chosen)
    }
}

/// What the node agent told ztunnel about a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub ips: Vec<IpAddr>,
}

/// A pod ztunnel serves.
pub struct PodContext {
    pub info: PodInfo,
    pub identity: Identity,
    pub netns: InpodNetns,
}

impl PodContext {
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.info.ips.contains(&ip)
    }
}
