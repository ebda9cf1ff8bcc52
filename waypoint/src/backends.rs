//! How the waypoint treats a backend service, as its DestinationRule says
//! (`weft.l7.v1.BackendPolicy`): the load-balancing algorithm (round robin,
//! least request by the power of two choices, random), a cap on requests in
//! flight (past it: 503, flag `UO`), and outlier detection — an endpoint
//! that answers 5xx (or cannot be reached) so many times in a row is
//! ejected for the base ejection time, longer each time it is ejected
//! again, never more than the maximum share of the service's endpoints.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, Instant},
};

use foldhash::HashMap;
use serde::Serialize;
use weft_proto::{weft::l7::v1 as pb, BACKEND_POLICY_TYPE_URL};
use weft_proxy::{
    balance::{Balancer, Endpoint},
    state::{ProxyState, Service},
    xds::handlers::{decode, Received, ResourceHandler, Versions},
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outlier {
    pub consecutive_errors: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct BackendPolicy {
    pub algorithm: Algorithm,
    /// 0: unlimited.
    pub max_requests: u32,
    pub outlier: Option<Outlier>,
    pub source: String,
}

impl TryFrom<pb::BackendPolicy> for BackendPolicy {
    type Error = String;
    fn try_from(p: pb::BackendPolicy) -> Result<Self, String> {
        let algorithm = match pb::backend_policy::LoadBalancer::try_from(p.load_balancer) {
            Ok(pb::backend_policy::LoadBalancer::RoundRobin) => Algorithm::RoundRobin,
            Ok(pb::backend_policy::LoadBalancer::LeastRequest) => Algorithm::LeastRequest,
            Ok(pb::backend_policy::LoadBalancer::Random) => Algorithm::Random,
            Err(_) => return Err(format!("unknown load balancer {}", p.load_balancer)),
        };
        let outlier = p.outlier_detection.map(|o| Outlier {
            consecutive_errors: o.consecutive_errors,
            base_ejection: Duration::from_millis(o.base_ejection_ms),
            max_ejection_percent: o.max_ejection_percent.min(100),
        });
        Ok(Self {
            algorithm,
            max_requests: p.max_requests,
            outlier,
            source: p.source,
        })
    }
}

/// What the waypoint has seen of one endpoint.
#[derive(Debug, Default)]
struct Health {
    errors_in_a_row: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// Backend policies (from xDS) and what the waypoint has seen of each
/// service's endpoints.
#[derive(Default)]
pub struct Backends {
    policies: RwLock<BTreeMap<String, Arc<BackendPolicy>>>,
    /// By service, then endpoint.
    health: Mutex<HashMap<String, HashMap<SocketAddr, Health>>>,
    in_flight: Mutex<HashMap<String, Arc<AtomicU32>>>,
    endpoint_load: Mutex<HashMap<SocketAddr, Arc<AtomicU32>>>,
}

/// A request's place in its service's cap and its endpoint's load; given
/// back when dropped.
pub struct InFlight {
    counter: Arc<AtomicU32>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request's places (in its service's
/// cap, on its endpoint) until it ends.
pub struct Held<B> {
    inner: B,
    _held: [Option<InFlight>; 2],
}

impl<B> Held<B> {
    pub fn new(inner: B, held: [Option<InFlight>; 2]) -> Self {
        Self { inner, _held: held }
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PickError {
    #[error("{0}")]
    Balance(#[from] weft_proxy::balance::BalanceError),
    #[error("service {service} has {limit} requests in flight, its DestinationRule's limit ({source_rule}); refused (overflow)")]
    Overflow {
        service: String,
        limit: u32,
        source_rule: String,
    },
}

/// One service the waypoint forwards to, as `/config_dump` shows it.
#[derive(Debug, Serialize)]
pub struct BackendView {
    /// `namespace/hostname`.
    pub service: String,
    pub policy: Option<Arc<BackendPolicy>>,
    pub in_flight: u32,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Serialize)]
pub struct EndpointView {
    /// `namespace/name` of the workload.
    pub workload: String,
    pub address: String,
    /// As the workload API says.
    pub healthy: bool,
    /// How much longer outlier detection keeps it out, if it is ejected.
    pub ejected_for_ms: Option<u64>,
}

impl Backends {
    /// What the waypoint knows of `service` and its `endpoints`.
    pub fn view(
        &self,
        service: &str,
        endpoints: &[Arc<weft_proxy::state::Workload>],
    ) -> BackendView {
        let now = Instant::now();
        let health = self.health.lock().expect("health lock");
        let ejected = |ip: std::net::IpAddr| {
            health
                .get(service)
                .into_iter()
                .flatten()
                .filter(|(addr, _)| addr.ip() == ip)
                .filter_map(|(_, h)| h.ejected_until.filter(|u| *u > now))
                .max()
                .map(|until| (until - now).as_millis() as u64)
        };
        BackendView {
            service: service.to_owned(),
            policy: self.policy(service),
            in_flight: Self::counter(&self.in_flight, service).load(Ordering::Acquire),
            endpoints: endpoints
                .iter()
                .flat_map(|w| {
                    w.ips.iter().map(|ip| EndpointView {
                        workload: format!("{}/{}", w.namespace, w.name),
                        address: ip.to_string(),
                        healthy: w.healthy,
                        ejected_for_ms: ejected(*ip),
                    })
                })
                .collect(),
        }
    }

    pub fn policy(&self, service: &str) -> Option<Arc<BackendPolicy>> {
        self.policies
            .read()
            .expect("policies lock")
            .get(service)
            .cloned()
    }

    fn counter(map: &Mutex<HashMap<String, Arc<AtomicU32>>>, key: &str) -> Arc<AtomicU32> {
        let mut map = map.lock().expect("counters lock");
        match map.get(key) {
            Some(counter) => counter.clone(),
            None => map.entry(key.to_owned()).or_default().clone(),
        }
    }

    /// Takes a place for one request to `service`, unless its cap is full.
    pub fn admit(&self, service: &str) -> Result<InFlight, PickError> {
        let counter = Self::counter(&self.in_flight, service);
        if let Some(policy) = self.policy(service).filter(|p| p.max_requests > 0) {
            let limit = policy.max_requests;
            counter
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < limit).then_some(n + 1)
                })
                .map_err(|_| PickError::Overflow {
                    service: service.to_owned(),
                    limit,
                    source_rule: policy.source.clone(),
                })?;
        } else {
            counter.fetch_add(1, Ordering::AcqRel);
        }
        Ok(InFlight { counter })
    }

    /// An endpoint of `service` (whose key is `key`) for `port`, as its
    /// policy chooses, skipping ejected ones, and how many endpoints the
    /// service has; the returned guard counts the request on the endpoint
    /// (least request) until dropped.
    pub fn pick(
        &self,
        balancer: &Balancer,
        state: &ProxyState,
        service: &Service,
        port: u16,
    ) -> Result<(Endpoint, InFlight, usize), PickError> {
        let key = service.key();
        let policy = self.policy(key);
        let algorithm = policy.as_ref().map(|p| p.algorithm).unwrap_or_default();
        let mut candidates = balancer.service_endpoints(state, service, port)?;
        let endpoints = candidates.len();
        {
            let health = self.health.lock().expect("health lock");
            if let Some(seen) = health.get(key) {
                let now = Instant::now();
                let live = |e: &Endpoint| {
                    seen.get(&e.addr)
                        .and_then(|h| h.ejected_until)
                        .is_none_or(|until| until <= now)
                };
                // With every endpoint ejected, the service is not
                // abandoned: all of them are tried (Envoy's panic mode).
                if candidates.iter().any(live) {
                    candidates.retain(live);
                }
            }
        }
        let mut load = self.endpoint_load.lock().expect("load lock");
        let mut load_of = |e: &Endpoint| -> Arc<AtomicU32> {
            match load.get(&e.addr) {
                Some(counter) => counter.clone(),
                None => load.entry(e.addr).or_default().clone(),
            }
        };
        let chosen = match algorithm {
            Algorithm::RoundRobin => {
                let at = balancer.next_position(key);
                candidates.swap_remove(at % candidates.len())
            }
            Algorithm::Random => candidates.swap_remove(rand::random_range(0..candidates.len())),
            Algorithm::LeastRequest => {
                let a = rand::random_range(0..candidates.len());
                let b = rand::random_range(0..candidates.len());
                let load_a = load_of(&candidates[a]).load(Ordering::Acquire);
                let load_b = load_of(&candidates[b]).load(Ordering::Acquire);
                candidates.swap_remove(if load_b < load_a { b } else { a })
            }
        };
        let counter = load_of(&chosen);
        counter.fetch_add(1, Ordering::AcqRel);
        Ok((chosen, InFlight { counter }, endpoints))
    }

    /// Records how an attempt to `endpoint` of `service` went (`ok`: an
    /// answer below 500); ejects it when its policy says so.
    pub fn record(&self, service: &str, endpoint: SocketAddr, ok: bool, endpoints: usize) {
        let Some(outlier) = self.policy(service).and_then(|p| p.outlier.clone()) else {
            return;
        };
        if outlier.consecutive_errors == 0 {
            return;
        }
        let mut health = self.health.lock().expect("health lock");
        if !health.contains_key(service) {
            health.insert(service.to_owned(), HashMap::default());
        }
        let seen = health.get_mut(service).expect("inserted above");
        let now = Instant::now();
        let ejected_now = seen
            .values()
            .filter(|h| h.ejected_until.is_some_and(|u| u > now))
            .count();
        let entry = seen.entry(endpoint).or_default();
        if ok {
            entry.errors_in_a_row = 0;
            return;
        }
        entry.errors_in_a_row += 1;
        // Envoy's rule: one endpoint may always be ejected, more only
        // within the share.
        let under_cap = ejected_now == 0
            || (ejected_now + 1) * 100 <= endpoints * outlier.max_ejection_percent as usize;
        if entry.errors_in_a_row >= outlier.consecutive_errors
            && entry.ejected_until.is_none_or(|u| u <= now)
            && under_cap
        {
            entry.ejections += 1;
            entry.errors_in_a_row = 0;
            let duration = outlier.base_ejection * entry.ejections.min(10);
            entry.ejected_until = Some(now + duration);
            tracing::warn!(%service, %endpoint, ejection_ms = duration.as_millis() as u64, "endpoint ejected (outlier detection)");
        }
    }
}

/// Applies `weft.l7.v1.BackendPolicy` resources.
pub struct BackendsHandler {
    backends: Arc<Backends>,
    versions: Versions,
}

impl BackendsHandler {
    pub fn new(backends: Arc<Backends>) -> Self {
        Self {
            backends,
            versions: Versions::default(),
        }
    }
}

impl ResourceHandler for BackendsHandler {
    fn type_url(&self) -> &'static str {
        BACKEND_POLICY_TYPE_URL
    }

    fn apply(&self, updates: Vec<Received>, removals: &[String]) -> Vec<(String, String)> {
        let mut rejected = Vec::new();
        let mut policies = self.backends.policies.write().expect("policies lock");
        for r in updates {
            match decode::<pb::BackendPolicy>(BACKEND_POLICY_TYPE_URL, &r)
                .and_then(BackendPolicy::try_from)
            {
                Ok(p) => {
                    policies.insert(r.name.clone(), Arc::new(p));
                    self.versions.set(&r.name, &r.version);
                }
                Err(reason) => {
                    tracing::warn!(resource = %r.name, %reason, "rejected a backend policy (NACK)");
                    rejected.push((r.name, reason));
                }
            }
        }
        for name in removals {
            policies.remove(name);
            self.versions.remove(name);
        }
        rejected
    }

    fn versions(&self) -> BTreeMap<String, String> {
        self.versions.all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_outlier(backends: &Backends, errors: u32, percent: u32) {
        backends.policies.write().unwrap().insert(
            "shop/web".into(),
            Arc::new(BackendPolicy {
                outlier: Some(Outlier {
                    consecutive_errors: errors,
                    base_ejection: Duration::from_secs(30),
                    max_ejection_percent: percent,
                }),
                max_requests: 2,
                ..Default::default()
            }),
        );
    }

    #[test]
    fn errors_in_a_row_eject_within_the_share_and_a_success_forgives() {
        let backends = Backends::default();
        with_outlier(&backends, 3, 50);
        let (a, b): (SocketAddr, SocketAddr) = (
            "198.18.2.2:80".parse().unwrap(),
            "198.18.2.3:80".parse().unwrap(),
        );
        let ejected = |addr| {
            backends
                .health
                .lock()
                .unwrap()
                .get("shop/web")
                .and_then(|seen| seen.get(&addr))
                .and_then(|h| h.ejected_until)
                .is_some()
        };
        backends.record("shop/web", a, false, 2);
        backends.record("shop/web", a, false, 2);
        backends.record("shop/web", a, true, 2);
        backends.record("shop/web", a, false, 2);
        assert!(!ejected(a), "a success in between forgives");
        backends.record("shop/web", a, false, 2);
        backends.record("shop/web", a, false, 2);
        assert!(ejected(a), "three in a row eject");
        for _ in 0..3 {
            backends.record("shop/web", b, false, 2);
        }
        assert!(!ejected(b), "never more than half of two endpoints");
        // Istio's default share, 10 %, still lets one of two go.
        let backends = Backends::default();
        with_outlier(&backends, 1, 10);
        backends.record("shop/web", a, false, 2);
        assert!(backends.health.lock().unwrap()["shop/web"][&a]
            .ejected_until
            .is_some());
    }

    #[test]
    fn requests_past_the_cap_overflow() {
        let backends = Backends::default();
        with_outlier(&backends, 0, 0);
        let first = backends.admit("shop/web").unwrap();
        let _second = backends.admit("shop/web").unwrap();
        assert!(matches!(
            backends.admit("shop/web"),
            Err(PickError::Overflow { .. })
        ));
        drop(first);
        assert!(backends.admit("shop/web").is_ok(), "a place given back");
    }
}
