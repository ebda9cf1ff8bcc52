//! L4 authorization at the destination: every inbound connection (HBONE,
//! with the peer's identity, or plaintext, without) is decided against the
//! policies that apply to the destination workload, and stays registered
//! while it is open so a policy change can cut it.
//!
//! Live re-evaluation: whenever the proxy state changes (a policy, or a
//! workload's list of policies), every open inbound connection is decided
//! again; one that would now be denied is closed at once, with the reason
//! in its access-log line.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::watch;
use weft_proto::spiffe::Identity;
use weft_proxy::authz::{evaluate, Connection, Decision};

use crate::proxy::{PodContext, Proxy};

/// An inbound connection's attributes, kept for re-evaluation.
#[derive(Clone, Debug)]
pub struct Attributes {
    pub src_ip: IpAddr,
    pub src_identity: Option<Identity>,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// The destination pod's namespace (for namespace-scoped policies when
    /// the control service has not described the workload yet).
    pub dst_namespace: String,
}

/// Decides a connection to `attrs.dst_ip` (a workload of this node).
pub fn decide(proxy: &Proxy, attrs: &Attributes) -> Decision {
    let (namespace, selected) = match proxy.state.workload_by_ip(attrs.dst_ip) {
        Some(w) => (w.namespace.clone(), w.authorization_policies.clone()),
        None => (attrs.dst_namespace.clone(), Vec::new()),
    };
    let policies = proxy.state.policies_for(&namespace, &selected);
    evaluate(
        &policies,
        &Connection {
            src_ip: attrs.src_ip,
            src_identity: attrs.src_identity.as_ref(),
            dst_ip: attrs.dst_ip,
            dst_port: attrs.dst_port,
        },
    )
}

struct Tracked {
    attrs: Attributes,
    revoke: watch::Sender<Option<String>>,
}

/// The open inbound connections, and the denials so far.
#[derive(Default)]
pub struct Registry {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Tracked>>,
    denials: Mutex<BTreeMap<String, u64>>,
}

/// Keeps a connection registered; dropping it unregisters.
pub struct Registration {
    id: u64,
    registry: Arc<Registry>,
    revoked: watch::Receiver<Option<String>>,
}

impl Registration {
    /// Resolves with the reason once a policy change revokes the
    /// connection (never, otherwise).
    pub async fn revoked(&mut self) -> String {
        let reason = match self.revoked.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry
            .open
            .lock()
            .expect("registry lock")
            .remove(&self.id);
    }
}

impl Registry {
    pub fn register(self: &Arc<Self>, attrs: Attributes) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (revoke, revoked) = watch::channel(None);
        self.open
            .lock()
            .expect("registry lock")
            .insert(id, Tracked { attrs, revoke });
        Registration {
            id,
            registry: self.clone(),
            revoked,
        }
    }

    /// Counts a denial by `policy`.
    pub fn denied(&self, policy: &str) {
        *self
            .denials
            .lock()
            .expect("registry lock")
            .entry(policy.to_owned())
            .or_default() += 1;
    }

    /// Denials so far, by policy.
    pub fn denials(&self) -> BTreeMap<String, u64> {
        self.denials.lock().expect("registry lock").clone()
    }

    pub fn open_connections(&self) -> usize {
        self.open.lock().expect("registry lock").len()
    }

    /// Decides every open connection again; revokes the denied ones.
    pub fn reevaluate(&self, proxy: &Proxy) {
        let open = self.open.lock().expect("registry lock");
        for tracked in open.values() {
            if let Decision::Deny { reason, .. } = decide(proxy, &tracked.attrs) {
                self.denied(&reason.policy());
                tracked
                    .revoke
                    .send_replace(Some(format!("closed on a policy change: {reason}")));
            }
        }
    }

    /// Re-evaluates after every state change, until the state is dropped.
    pub async fn watch(self: Arc<Self>, proxy: Arc<Proxy>) {
        let mut changes = proxy.state.subscribe();
        while changes.changed().await.is_ok() {
            self.reevaluate(&proxy);
        }
    }
}

/// The attributes of a connection into `pod`.
pub fn attributes(
    pod: &PodContext,
    src_ip: IpAddr,
    src_identity: Option<Identity>,
    dst: std::net::SocketAddr,
) -> Attributes {
    Attributes {
        src_ip,
        src_identity,
        dst_ip: dst.ip(),
        dst_port: dst.port(),
        dst_namespace: pod.info.namespace.clone(),
    }
}
