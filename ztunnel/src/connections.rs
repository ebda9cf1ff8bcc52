//! The connections ztunnel is proxying right now: for `/config_dump` and
//! `weft ztunnel-config connections`, for the `istio_tcp_*` metrics, and, for
//! inbound ones, for re-deciding them when policy changes.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::SystemTime,
};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use tokio::sync::watch;
use weft_proxy::{
    authz::Decision,
    metrics::{ConnectionMeter, TcpLabels, TcpMetrics},
};

use crate::{authorization::Attributes, proxy::Proxy};

/// One open connection, as `/config_dump` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ConnectionSummary {
    pub direction: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub src_identity: Option<String>,
    pub dst_identity: Option<String>,
    pub started: SystemTime,
    /// Source → destination bytes so far.
    pub bytes_request: u64,
    /// Destination → source bytes so far.
    pub bytes_response: u64,
}

/// What a connection is registered with.
pub struct Opening {
    pub direction: &'static str,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub src_identity: Option<String>,
    pub dst_identity: Option<String>,
    pub labels: TcpLabels,
    /// Set for inbound connections: what policy decides them on.
    pub policy: Option<Attributes>,
}

struct Entry {
    summary: ConnectionSummary,
    request: Counter,
    response: Counter,
    policy: Option<Attributes>,
    revoke: watch::Sender<Option<String>>,
}

/// The table of open connections, and the denials so far.
pub struct Connections {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
    denials: Mutex<BTreeMap<String, u64>>,
    metrics: TcpMetrics,
}

/// Keeps a connection in the table; dropping it removes it and counts it
/// closed.
pub struct Tracking {
    id: u64,
    table: Arc<Connections>,
    closed: Counter,
    revoked: watch::Receiver<Option<String>>,
    /// Where the copy loop counts the connection's bytes.
    pub meter: ConnectionMeter,
}

impl Tracking {
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

impl Drop for Tracking {
    fn drop(&mut self) {
        self.table
            .open
            .lock()
            .expect("connections lock")
            .remove(&self.id);
        self.closed.inc();
    }
}

impl Connections {
    pub fn new(metrics: TcpMetrics) -> Self {
        Self {
            next: AtomicU64::new(0),
            open: Mutex::default(),
            denials: Mutex::default(),
            metrics,
        }
    }

    pub fn open(self: &Arc<Self>, opening: Opening) -> Tracking {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (revoke, revoked) = watch::channel(None);
        let (request, response) = (Counter::default(), Counter::default());
        self.metrics.opened.get_or_create(&opening.labels).inc();
        let meter = ConnectionMeter {
            request: vec![
                self.metrics
                    .received_bytes
                    .get_or_create(&opening.labels)
                    .clone(),
                request.clone(),
            ],
            response: vec![
                self.metrics
                    .sent_bytes
                    .get_or_create(&opening.labels)
                    .clone(),
                response.clone(),
            ],
        };
        let closed = self.metrics.closed.get_or_create(&opening.labels).clone();
        let summary = ConnectionSummary {
            direction: opening.direction,
            src: opening.src,
            dst: opening.dst,
            src_identity: opening.src_identity,
            dst_identity: opening.dst_identity,
            started: SystemTime::now(),
            bytes_request: 0,
            bytes_response: 0,
        };
        self.open.lock().expect("connections lock").insert(
            id,
            Entry {
                summary,
                request,
                response,
                policy: opening.policy,
                revoke,
            },
        );
        Tracking {
            id,
            table: self.clone(),
            closed,
            revoked,
            meter,
        }
    }

    /// The open connections, oldest first.
    pub fn list(&self) -> Vec<ConnectionSummary> {
        let open = self.open.lock().expect("connections lock");
        let mut list: Vec<ConnectionSummary> = open
            .values()
            .map(|e| ConnectionSummary {
                bytes_request: e.request.get(),
                bytes_response: e.response.get(),
                ..e.summary.clone()
            })
            .collect();
        list.sort_by_key(|c| c.started);
        list
    }

    pub fn len(&self) -> usize {
        self.open.lock().expect("connections lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counts a denial by `policy`.
    pub fn denied(&self, policy: &str) {
        *self
            .denials
            .lock()
            .expect("connections lock")
            .entry(policy.to_owned())
            .or_default() += 1;
    }

    /// Denials so far, by policy.
    pub fn denials(&self) -> BTreeMap<String, u64> {
        self.denials.lock().expect("connections lock").clone()
    }

    /// Decides every open inbound connection again; revokes denied ones.
    pub fn reevaluate(&self, proxy: &Proxy) {
        let open = self.open.lock().expect("connections lock");
        for entry in open.values() {
            let Some(attrs) = &entry.policy else { continue };
            if entry.revoke.borrow().is_some() {
                continue;
            }
            if let Decision::Deny { reason, .. } = crate::authorization::decide(proxy, attrs) {
                self.denied(&reason.policy());
                entry
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
