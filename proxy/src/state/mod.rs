//! The proxy's view of the mesh: workloads, services and policies received
//! over xDS, with the lookups the data path needs (by IP, by VIP:port, by
//! name). Readers take a short read lock and get `Arc`s, so a lookup never
//! waits on a config update for long and never copies a workload.

pub mod policy;
pub mod workload;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{Arc, RwLock},
};

use foldhash::HashMap;

use serde::Serialize;
use tokio::sync::watch;

pub use policy::{Authorization, PolicyAction, PolicyScope};
pub use workload::{
    AddressResource, GatewayAddress, PortMapping, Service, TunnelProtocol, Workload,
};

#[derive(Default)]
struct Inner {
    workloads: HashMap<String, Arc<Workload>>,
    /// The workloads (uids) claiming each address, in arrival order. Two
    /// claims on one address are a conflict (a stale pod, an IP reused too
    /// early): lookups by that address find nobody rather than whichever
    /// came last.
    workload_by_ip: HashMap<IpAddr, Vec<String>>,
    /// (namespace, name) → uid, for finding the workload of a pod ztunnel
    /// serves.
    workload_by_name: HashMap<(String, String), String>,
    services: HashMap<String, Arc<Service>>,
    /// Each service's workloads (by the services they say they back),
    /// ordered by uid: kept as workloads change, so choosing an endpoint
    /// never walks every workload.
    endpoints: HashMap<String, Arc<[Arc<Workload>]>>,
    service_by_vip: HashMap<IpAddr, String>,
    /// Address resource name → the key it was stored under (uid or service key).
    address_names: HashMap<String, AddressKey>,
    policies: HashMap<String, Arc<Authorization>>,
    /// Policy names by the namespace they cover (GLOBAL under `None`);
    /// selector-scoped ones are reached through the workloads listing them.
    policy_scopes: HashMap<Option<String>, std::collections::BTreeSet<String>>,
}

impl Inner {
    /// Puts `workload` (uid `uid`) among `service`'s endpoints, in uid
    /// order, or takes it out (`None`).
    fn index_endpoint(&mut self, service: &str, workload: Option<&Arc<Workload>>, uid: &str) {
        let mut list: Vec<Arc<Workload>> = self
            .endpoints
            .get(service)
            .map(|l| l.to_vec())
            .unwrap_or_default();
        list.retain(|w| w.uid != uid);
        if let Some(w) = workload {
            let at = list.partition_point(|e| e.uid.as_str() < uid);
            list.insert(at, w.clone());
        }
        if list.is_empty() {
            self.endpoints.remove(service);
        } else {
            self.endpoints.insert(service.to_owned(), list.into());
        }
    }

    fn scope_key(policy: &Authorization) -> Option<Option<String>> {
        match policy.scope {
            PolicyScope::Global => Some(None),
            PolicyScope::Namespace => Some(Some(policy.namespace.clone())),
            PolicyScope::WorkloadSelector => None,
        }
    }

    fn unindex(&mut self, name: &str) {
        if let Some(old) = self.policies.get(name) {
            if let Some(key) = Self::scope_key(old) {
                if let Some(set) = self.policy_scopes.get_mut(&key) {
                    set.remove(name);
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum AddressKey {
    Workload(String),
    Service(String),
}

/// Shared, concurrently readable state.
pub struct ProxyState {
    inner: RwLock<Inner>,
    /// Bumped after every applied change.
    changes: watch::Sender<u64>,
}

impl Default for ProxyState {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            changes: watch::channel(0).0,
        }
    }
}

impl std::fmt::Debug for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.read();
        f.debug_struct("ProxyState")
            .field("workloads", &inner.workloads.len())
            .field("services", &inner.services.len())
            .field("policies", &inner.policies.len())
            .finish()
    }
}

/// A serializable copy of the state, for `/config_dump`.
#[derive(Debug, Serialize)]
pub struct StateDump {
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Arc<Service>>,
    pub policies: Vec<Arc<Authorization>>,
}

impl ProxyState {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("state lock poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().expect("state lock poisoned")
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Notified after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The workload that owns `ip`; none when no workload or more than one
    /// claims it (see [`ProxyState::address_claims`]).
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        let inner = self.read();
        match inner.workload_by_ip.get(&ip)?.as_slice() {
            [uid] => inner.workloads.get(uid).cloned(),
            _ => None,
        }
    }

    /// The uids of every workload claiming `ip` (more than one is a
    /// conflict the control service should not have sent).
    pub fn address_claims(&self, ip: IpAddr) -> Vec<String> {
        self.read()
            .workload_by_ip
            .get(&ip)
            .cloned()
            .unwrap_or_default()
    }

    /// The workload of a pod a node proxy serves: by its uid, else by its
    /// namespace and name (a node agent may name pods by their Kubernetes
    /// UID, the workload API by `cluster//Pod/ns/name`).
    pub fn workload_for_pod(
        &self,
        uid: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<Workload>> {
        let inner = self.read();
        if let Some(w) = inner.workloads.get(uid) {
            return Some(w.clone());
        }
        let uid = inner
            .workload_by_name
            .get(&(namespace.to_owned(), name.to_owned()))?;
        inner.workloads.get(uid).cloned()
    }

    pub fn workload(&self, uid: &str) -> Option<Arc<Workload>> {
        self.read().workloads.get(uid).cloned()
    }

    /// The service reached at `addr` (a VIP and one of its ports).
    pub fn service_by_vip(&self, addr: SocketAddr) -> Option<(Arc<Service>, PortMapping)> {
        let inner = self.read();
        let key = inner.service_by_vip.get(&addr.ip())?;
        let service = inner.services.get(key)?;
        let port = service.port(addr.port())?;
        Some((service.clone(), port))
    }

    /// The service with VIP `ip` (any port).
    pub fn service_by_ip(&self, ip: IpAddr) -> Option<Arc<Service>> {
        let inner = self.read();
        let key = inner.service_by_vip.get(&ip)?;
        inner.services.get(key).cloned()
    }

    /// A service by `namespace/hostname`.
    pub fn service(&self, key: &str) -> Option<Arc<Service>> {
        self.read().services.get(key).cloned()
    }

    /// The workloads backing a service (`namespace/hostname`).
    pub fn endpoints(&self, service_key: &str) -> Arc<[Arc<Workload>]> {
        self.read()
            .endpoints
            .get(service_key)
            .cloned()
            .unwrap_or_else(|| Arc::new([]))
    }

    pub fn policy(&self, key: &str) -> Option<Arc<Authorization>> {
        self.read().policies.get(key).cloned()
    }

    /// The policies that apply to a workload in `namespace` that lists
    /// `selected` (its selector-scoped policies): every GLOBAL one, every
    /// NAMESPACE one of its namespace, and the listed ones.
    pub fn policies_for(&self, namespace: &str, selected: &[String]) -> Vec<Arc<Authorization>> {
        let inner = self.read();
        let scoped = [None, Some(namespace.to_owned())];
        let mut out: Vec<Arc<Authorization>> = scoped
            .iter()
            .filter_map(|key| inner.policy_scopes.get(key))
            .flatten()
            .filter_map(|name| inner.policies.get(name))
            .cloned()
            .collect();
        out.extend(
            selected
                .iter()
                .filter_map(|key| inner.policies.get(key))
                .filter(|p| p.scope == PolicyScope::WorkloadSelector)
                .cloned(),
        );
        out
    }

    /// Workloads on `node`.
    pub fn workloads_on(&self, node: &str) -> Vec<Arc<Workload>> {
        let mut found: Vec<_> = self
            .read()
            .workloads
            .values()
            .filter(|w| w.node == node)
            .cloned()
            .collect();
        found.sort_by(|a, b| a.uid.cmp(&b.uid));
        found
    }

    pub fn dump(&self) -> StateDump {
        let inner = self.read();
        let mut workloads: Vec<_> = inner.workloads.values().cloned().collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut services: Vec<_> = inner.services.values().cloned().collect();
        services.sort_by(|a, b| a.key().cmp(b.key()));
        let mut policies: Vec<_> = inner.policies.values().cloned().collect();
        policies.sort_by_key(|p| p.key());
        StateDump {
            workloads,
            services,
            policies,
        }
    }

    /// Inserts or replaces the Address resource `name`.
    pub fn upsert_address(&self, name: &str, address: AddressResource) {
        let mut inner = self.write();
        remove_address_locked(&mut inner, name);
        match address {
            AddressResource::Workload(w) => {
                // A host-network pod's addresses are its node's, not its own.
                let own_ips = if w.host_network { &[][..] } else { &w.ips[..] };
                for ip in own_ips {
                    let claims = inner.workload_by_ip.entry(*ip).or_default();
                    if !claims.contains(&w.uid) {
                        claims.push(w.uid.clone());
                    }
                    if claims.len() > 1 {
                        tracing::warn!(address = %ip, workloads = ?claims, "workloads share an address; it is treated as nobody's until only one claims it");
                    }
                }
                inner
                    .workload_by_name
                    .insert((w.namespace.clone(), w.name.clone()), w.uid.clone());
                inner
                    .address_names
                    .insert(name.to_owned(), AddressKey::Workload(w.uid.clone()));
                let w: Arc<Workload> = Arc::from(w);
                for service in w.services.keys() {
                    inner.index_endpoint(service, Some(&w), &w.uid);
                }
                inner.workloads.insert(w.uid.clone(), w);
            }
            AddressResource::Service(s) => {
                let key = s.key().to_owned();
                for vip in &s.vips {
                    inner.service_by_vip.insert(*vip, key.clone());
                }
                inner
                    .address_names
                    .insert(name.to_owned(), AddressKey::Service(key.clone()));
                inner.services.insert(key, Arc::new(s));
            }
        }
        drop(inner);
        self.changed();
    }

    /// Removes the Address resource `name` (absent names are ignored).
    pub fn remove_address(&self, name: &str) {
        let removed = remove_address_locked(&mut self.write(), name);
        if removed {
            self.changed();
        }
    }

    pub fn upsert_policy(&self, name: &str, policy: Authorization) {
        let mut inner = self.write();
        inner.unindex(name);
        if let Some(key) = Inner::scope_key(&policy) {
            inner
                .policy_scopes
                .entry(key)
                .or_default()
                .insert(name.to_owned());
        }
        inner.policies.insert(name.to_owned(), Arc::new(policy));
        drop(inner);
        self.changed();
    }

    pub fn remove_policy(&self, name: &str) {
        let mut inner = self.write();
        inner.unindex(name);
        let removed = inner.policies.remove(name).is_some();
        drop(inner);
        if removed {
            self.changed();
        }
    }

    /// Names of the Address resources held.
    pub fn address_names(&self) -> Vec<String> {
        self.read().address_names.keys().cloned().collect()
    }

    /// Names of the policies held.
    pub fn policy_names(&self) -> Vec<String> {
        self.read().policies.keys().cloned().collect()
    }

    /// Counts, for logs and status.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let inner = self.read();
        BTreeMap::from([
            ("workloads", inner.workloads.len()),
            ("services", inner.services.len()),
            ("policies", inner.policies.len()),
        ])
    }
}

fn remove_address_locked(inner: &mut Inner, name: &str) -> bool {
    match inner.address_names.remove(name) {
        Some(AddressKey::Workload(uid)) => {
            if let Some(old) = inner.workloads.remove(&uid) {
                for service in old.services.keys() {
                    inner.index_endpoint(service, None, &uid);
                }
                for ip in &old.ips {
                    // Only this workload's own claim goes: another's on the
                    // same address stays.
                    if let Some(claims) = inner.workload_by_ip.get_mut(ip) {
                        claims.retain(|claim| *claim != uid);
                        if claims.is_empty() {
                            inner.workload_by_ip.remove(ip);
                        }
                    }
                }
                let name = (old.namespace.clone(), old.name.clone());
                if inner.workload_by_name.get(&name) == Some(&uid) {
                    inner.workload_by_name.remove(&name);
                }
            }
            true
        }
        Some(AddressKey::Service(key)) => {
            if let Some(old) = inner.services.remove(&key) {
                for vip in &old.vips {
                    if inner.service_by_vip.get(vip) == Some(&key) {
                        inner.service_by_vip.remove(vip);
                    }
                }
            }
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(uid: &str, ip: [u8; 4]) -> Workload {
        Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "demo".into(),
            ips: vec![IpAddr::from(ip)],
            identity: weft_proto::spiffe::Identity::new("cluster.local", "demo", "default"),
            node: "n1".into(),
            protocol: TunnelProtocol::Hbone,
            canonical_name: String::new(),
            canonical_revision: String::new(),
            workload_name: String::new(),
            cluster_id: String::new(),
            services: BTreeMap::from([("demo/web.demo.svc.cluster.local".into(), vec![])]),
            authorization_policies: vec![],
            healthy: true,
            host_network: false,
            waypoint: None,
        }
    }

    #[test]
    fn lookups_follow_updates_and_removals() {
        let state = ProxyState::default();
        state.upsert_address(
            "a",
            AddressResource::Workload(Box::new(workload("a", [198, 18, 1, 2]))),
        );
        state.upsert_address(
            "demo/web.demo.svc.cluster.local",
            AddressResource::Service(Service::new(
                "web".into(),
                "demo".into(),
                "web.demo.svc.cluster.local".into(),
                vec![IpAddr::from([198, 19, 0, 9])],
                vec![PortMapping {
                    service_port: 80,
                    target_port: 8080,
                }],
                None,
            )),
        );
        assert_eq!(
            state.workload_by_ip([198, 18, 1, 2].into()).unwrap().uid,
            "a"
        );
        let (svc, port) = state
            .service_by_vip(SocketAddr::from(([198, 19, 0, 9], 80)))
            .unwrap();
        assert_eq!((svc.name.as_str(), port.target_port), ("web", 8080));
        assert!(state
            .service_by_vip(SocketAddr::from(([198, 19, 0, 9], 81)))
            .is_none());
        assert_eq!(state.endpoints("demo/web.demo.svc.cluster.local").len(), 1);

        // The workload moves to another IP: the old IP no longer resolves.
        state.upsert_address(
            "a",
            AddressResource::Workload(Box::new(workload("a", [198, 18, 1, 3]))),
        );
        assert!(state.workload_by_ip([198, 18, 1, 2].into()).is_none());
        assert!(state.workload_by_ip([198, 18, 1, 3].into()).is_some());
        state.remove_address("a");
        assert!(state.workload_by_ip([198, 18, 1, 3].into()).is_none());
        assert_eq!(state.counts()["workloads"], 0);
    }

    #[test]
    fn a_services_endpoints_follow_its_workloads_in_uid_order() {
        let state = ProxyState::default();
        const WEB: &str = "demo/web.demo.svc.cluster.local";
        let uids = |key: &str| -> Vec<String> {
            state.endpoints(key).iter().map(|w| w.uid.clone()).collect()
        };
        for (uid, last) in [("c", 4), ("a", 2), ("b", 3)] {
            state.upsert_address(
                uid,
                AddressResource::Workload(Box::new(workload(uid, [198, 18, 1, last]))),
            );
        }
        assert_eq!(uids(WEB), ["a", "b", "c"]);
        // An update replaces the workload in place; one that stops backing
        // the service leaves it, and joins the one it now backs.
        let mut moved = workload("b", [198, 18, 1, 9]);
        state.upsert_address("b", AddressResource::Workload(Box::new(moved.clone())));
        assert_eq!(uids(WEB), ["a", "b", "c"]);
        assert_eq!(state.endpoints(WEB)[1].ips, [IpAddr::from([198, 18, 1, 9])]);
        moved.services = BTreeMap::from([("demo/api.demo.svc.cluster.local".into(), vec![])]);
        state.upsert_address("b", AddressResource::Workload(Box::new(moved)));
        assert_eq!(uids(WEB), ["a", "c"]);
        assert_eq!(uids("demo/api.demo.svc.cluster.local"), ["b"]);
        state.remove_address("a");
        state.remove_address("c");
        assert!(uids(WEB).is_empty());
        state.remove_address("b");
        assert!(state.read().endpoints.is_empty(), "nothing left indexed");
    }

    #[test]
    fn host_network_workloads_are_not_found_by_their_nodes_address() {
        let state = ProxyState::default();
        let node_ip = IpAddr::from([198, 19, 255, 1]);
        let mut proxy = workload("kube-proxy", [198, 19, 255, 1]);
        proxy.host_network = true;
        state.upsert_address("kube-proxy", AddressResource::Workload(Box::new(proxy)));
        assert!(state.workload_by_ip(node_ip).is_none());
        assert!(state.address_claims(node_ip).is_empty());
        assert!(state
            .workload_for_pod("kube-proxy", "demo", "kube-proxy")
            .is_some());
        state.remove_address("kube-proxy");
        assert_eq!(state.counts()["workloads"], 0);
    }

    #[test]
    fn an_address_two_workloads_claim_is_nobodys_and_removing_one_claim_keeps_the_other() {
        let state = ProxyState::default();
        let ip = IpAddr::from([198, 18, 1, 2]);
        let server = workload("server", [198, 18, 1, 2]);
        let mut stale = workload("stale", [198, 18, 1, 2]);
        stale.namespace = "other".into();
        state.upsert_address("server", AddressResource::Workload(Box::new(server)));
        assert_eq!(state.workload_by_ip(ip).unwrap().uid, "server");
        state.upsert_address("stale", AddressResource::Workload(Box::new(stale)));
        assert!(state.workload_by_ip(ip).is_none(), "a conflict is nobody's");
        assert_eq!(state.address_claims(ip), ["server", "stale"]);
        // The pod is still found by who it is.
        let found = state
            .workload_for_pod("node-agent-uid", "demo", "server")
            .unwrap();
        assert_eq!(found.uid, "server");
        assert_eq!(
            state.workload_for_pod("stale", "x", "y").unwrap().uid,
            "stale"
        );
        state.remove_address("stale");
        assert_eq!(
            state.workload_by_ip(ip).unwrap().uid,
            "server",
            "the victim keeps its address"
        );
        state.remove_address("server");
        assert!(state.address_claims(ip).is_empty());
        assert!(state.workload_for_pod("", "demo", "server").is_none());
    }
}
