//! What every per-pod listener shares: config state, certificates, the
//! HBONE pool and trust, and the pods themselves.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use prometheus_client::metrics::counter::Counter;

use weft_proto::spiffe::Identity;
use weft_proxy::{
    hbone::{pool::Pool, tls::TrustBundle},
    identity::CertificateManager,
    metrics::Metrics,
    state::{ProxyState, Workload},
};

use crate::{limits::PodSlot, netns::InpodNetns};

/// Connections one pod may hold unless `--max-connections-per-pod` says.
pub const DEFAULT_CONNECTIONS_PER_POD: usize = 20_000;

/// How long a connection waits for ztunnel's first configuration.
pub const CONFIG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// ztunnel has no configuration from the control service yet.
#[derive(Debug, thiserror::Error)]
#[error(
    "no configuration from the control service yet (waited {}s); is it reachable?",
    CONFIG_WAIT.as_secs()
)]
pub struct NoConfig;

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
    /// How pods' traffic is captured.
    pub capture: Arc<crate::capture::Capture>,
    /// What is refused before proxying, and how it is counted.
    pub guard: crate::guard::Guard,
    /// Open files and each pod's share of connections.
    pub limits: crate::limits::Limits,
    /// The enrolled pods by address: destinations on this node.
    local_pods: RwLock<HashMap<IpAddr, Arc<PodContext>>>,
    /// Whether same-node connections are spliced (else copied).
    splice: bool,
    /// Bytes and connections the same-node splice moved in the kernel.
    pub spliced_bytes: Counter,
    pub spliced_connections: Counter,
    /// The xDS stream's state: nothing is proxied before the first sync.
    xds: tokio::sync::watch::Receiver<weft_proxy::xds::XdsStatus>,
    /// Chooses services' endpoints (round robin) and waypoints' pods.
    pub balancer: weft_proxy::balance::Balancer,
}

impl Proxy {
    pub fn new(
        node: String,
        state: Arc<ProxyState>,
        certs: CertificateManager,
        trust: TrustBundle,
        metrics: Metrics,
        capture: Arc<crate::capture::Capture>,
        xds: tokio::sync::watch::Receiver<weft_proxy::xds::XdsStatus>,
    ) -> Self {
        let (spliced_bytes, spliced_connections) = (Counter::default(), Counter::default());
        metrics.register(
            "weft_ztunnel_spliced_bytes",
            "Bytes (both ways) that same-node connections moved inside the kernel (splice), not copied through ztunnel",
            spliced_bytes.clone(),
        );
        metrics.register(
            "weft_ztunnel_spliced_connections",
            "Same-node connections joined inside the kernel (splice)",
            spliced_connections.clone(),
        );
        Self {
            node,
            state,
            certs,
            pool: Pool::default(),
            trust,
            ports: Ports::default(),
            connections: Arc::new(crate::connections::Connections::new(metrics.tcp.clone())),
            guard: crate::guard::Guard::new(&metrics),
            limits: crate::limits::Limits {
                open_files: 0,
                connections_per_pod: DEFAULT_CONNECTIONS_PER_POD,
            },
            metrics,
            capture,
            local_pods: RwLock::default(),
            splice: true,
            spliced_bytes,
            spliced_connections,
            xds,
            balancer: Default::default(),
        }
    }

    /// Runs with `limits` (open files, each pod's share).
    pub fn with_limits(mut self, limits: crate::limits::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Takes a place in `pod`'s share for one more connection.
    pub fn claim(&self, pod: &PodContext) -> Result<PodSlot, crate::guard::Refusal> {
        let limit = self.limits.connections_per_pod;
        pod.share
            .claim(limit)
            .ok_or_else(|| crate::guard::Refusal::PodShare {
                pod: format!("{}/{}", pod.info.namespace, pod.info.name),
                limit,
            })
    }

    /// Splices same-node connections (`true`, the default) or copies them.
    pub fn with_splice(mut self, splice: bool) -> Self {
        self.splice = splice;
        self
    }

    pub fn splices(&self) -> bool {
        self.splice
    }

    /// Waits until the first full configuration from the control service
    /// has arrived (at most [`CONFIG_WAIT`]). Until then a destination or a
    /// policy may simply be unknown yet: proxying would pass traffic that
    /// belongs in the mesh, or allow what a policy denies.
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

    /// The workload the control service describes for `pod`, if the
    /// description agrees with the pod's namespace (every address it gives
    /// the pod is one the namespace holds). One that disagrees counts as
    /// none: stale (the pod's sandbox was recreated with a new address the
    /// control service has not heard of yet) or another pod's.
    pub fn pod_workload(&self, pod: &PodContext) -> Option<Arc<Workload>> {
        self.described(pod)
            .filter(|w| unheld_address(w, &pod.info.ips).is_none())
    }

    fn described(&self, pod: &PodContext) -> Option<Arc<Workload>> {
        self.state
            .workload_for_pod(&pod.info.uid, &pod.info.namespace, &pod.info.name)
    }

    /// An address the control service gives `pod` that its namespace does
    /// not hold, if it describes the pod at all.
    pub fn pod_contradicted(&self, pod: &PodContext) -> Option<IpAddr> {
        self.described(pod)
            .and_then(|w| unheld_address(&w, &pod.info.ips))
    }

    /// Waits (at most [`CONFIG_WAIT`]) until the control service has
    /// described `pod`: a pod is often enrolled a moment before its
    /// workload arrives over xDS. Whether it is known now.
    pub async fn pod_known(&self, pod: &PodContext) -> bool {
        let mut changes = self.state.subscribe();
        if self.pod_workload(pod).is_some() {
            return true;
        }
        let arrived = tokio::time::timeout(CONFIG_WAIT, async {
            while changes.changed().await.is_ok() {
                if self.pod_workload(pod).is_some() {
                    return true;
                }
            }
            false
        });
        arrived.await.unwrap_or(false)
    }

    /// The pod of this node at `ip`, if one is enrolled.
    pub fn local_pod(&self, ip: IpAddr) -> Option<Arc<PodContext>> {
        self.local_pods
            .read()
            .expect("local pods lock")
            .get(&ip)
            .cloned()
    }

    /// Records an enrolled pod's addresses (`Some`), or forgets them.
    pub fn set_local_pod(&self, ips: &[IpAddr], pod: Option<Arc<PodContext>>) {
        let mut pods = self.local_pods.write().expect("local pods lock");
        for ip in ips {
            match &pod {
                Some(pod) => {
                    pods.insert(*ip, pod.clone());
                }
                None => {
                    pods.remove(ip);
                }
            }
        }
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

/// The first of `workload`'s addresses that is not among `held` (a pod
/// namespace's addresses).
pub fn unheld_address(workload: &Workload, held: &[IpAddr]) -> Option<IpAddr> {
    workload.ips.iter().find(|ip| !held.contains(ip)).copied()
}

/// A pod ztunnel serves.
pub struct PodContext {
    pub info: PodInfo,
    pub identity: Identity,
    pub netns: InpodNetns,
    /// The namespace as the kernel programs name it.
    pub cookie: crate::capture::ebpf::NetnsCookie,
    /// The connections it holds in ztunnel (outbound from it, inbound to it).
    pub share: Arc<crate::limits::PodShare>,
}

impl PodContext {
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.info.ips.contains(&ip)
    }
}
