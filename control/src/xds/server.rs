//! Delta ADS (`envoy.service.discovery.v3.AggregatedDiscoveryService/
//! DeltaAggregatedResources`).
//!
//! Per stream, per type URL, the server keeps what the client subscribed to
//! (wildcard `*` and/or names) and the version of each resource it sent.
//! Whenever the store changes it sends each client exactly the difference:
//! new or changed resources, and the names of removed ones. A first request
//! for a type (and any newly named resource) is always answered, even with
//! nothing, so a client can tell it is in sync. On reconnect the client's
//! `initial_resource_versions` seed the "sent" state, so unchanged resources
//! are not sent again.
//!
//! ACKs and NACKs are matched by nonce. A NACK is logged with the client's
//! message and counted in [`ClientStatus`]; the server does not resend the
//! rejected versions (the client keeps its last good copy) and sends the
//! next version when the resource changes.

use std::{
    collections::{BTreeMap, BTreeSet},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::SystemTime,
};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weft_proto::envoy::service::discovery::v3::{
    aggregated_discovery_service_server::AggregatedDiscoveryService, DeltaDiscoveryRequest,
    DeltaDiscoveryResponse, Resource,
};

use super::store::{XdsSnapshot, XdsStore};
use crate::auth::Authenticator;

/// What the server knows about one connected proxy.
#[derive(Clone, Debug)]
pub struct ClientStatus {
    /// The node the proxy authenticated as.
    pub node: String,
    /// The proxy's own id (`Node.id`).
    pub proxy_id: String,
    pub connected_at: SystemTime,
    pub acks: u64,
    pub nacks: u64,
    /// The message of the most recent NACK.
    pub last_nack: Option<String>,
}

/// The xDS service.
#[derive(Clone)]
pub struct XdsServer {
    store: Arc<XdsStore>,
    credentials: Arc<Authenticator>,
    clients: Arc<Mutex<BTreeMap<u64, ClientStatus>>>,
    next_id: Arc<AtomicU64>,
    shutdown: watch::Receiver<bool>,
}

impl XdsServer {
    /// `shutdown` turning true ends every open stream.
    pub fn new(
        store: Arc<XdsStore>,
        credentials: Arc<Authenticator>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            store,
            credentials,
            clients: Arc::default(),
            next_id: Arc::default(),
            shutdown,
        }
    }

    /// The proxies connected right now.
    pub fn clients(&self) -> Vec<ClientStatus> {
        self.clients
            .lock()
            .expect("clients lock")
            .values()
            .cloned()
            .collect()
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type DeltaAggregatedResourcesStream = ResponseStream;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let node = self
            .credentials
            .authenticate(request.metadata())
            .await?
            .node()
            .to_owned();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.clients.lock().expect("clients lock").insert(
            id,
            ClientStatus {
                node: node.clone(),
                proxy_id: String::new(),
                connected_at: SystemTime::now(),
                acks: 0,
                nacks: 0,
                last_nack: None,
            },
        );
        let (tx, rx) = mpsc::channel(16);
        let connection = Connection {
            id,
            node,
            clients: self.clients.clone(),
            snapshots: self.store.subscribe(),
            subscriptions: BTreeMap::new(),
            nonce: 0,
            tx,
            shutdown: self.shutdown.clone(),
        };
        tokio::spawn(connection.run(request.into_inner()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One client's subscription to one type.
#[derive(Default)]
struct Subscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// name → version the client holds.
    sent: BTreeMap<String, String>,
    /// Named resources reported as absent, so they are reported once.
    reported_missing: BTreeSet<String>,
}

struct Connection {
    id: u64,
    node: String,
    clients: Arc<Mutex<BTreeMap<u64, ClientStatus>>>,
    snapshots: watch::Receiver<Arc<XdsSnapshot>>,
    subscriptions: BTreeMap<String, Subscription>,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    shutdown: watch::Receiver<bool>,
}

impl Connection {
    async fn run(mut self, mut inbound: Streaming<DeltaDiscoveryRequest>) {
        tracing::info!(node = %self.node, conn = self.id, "xDS client connected");
        let mut shutdown = self.shutdown.clone();
        let stop = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stop);
        let reason = loop {
            tokio::select! {
                _ = &mut stop => break "server shutting down".to_owned(),
                message = inbound.message() => match message {
                    Ok(Some(request)) => {
                        if let Err(reason) = self.on_request(request).await {
                            break reason;
                        }
                    }
                    Ok(None) => break "client closed the stream".to_owned(),
                    Err(status) => break format!("stream error: {}", status.message()),
                },
                changed = self.snapshots.changed() => {
                    if changed.is_err() {
                        break "server shutting down".to_owned();
                    }
                    let snapshot = self.snapshots.borrow_and_update().clone();
                    let types: Vec<String> = self.subscriptions.keys().cloned().collect();
                    let mut failure = None;
                    for type_url in types {
                        if let Err(reason) = self.push(&type_url, &snapshot, false).await {
                            failure = Some(reason);
                            break;
                        }
                    }
                    if let Some(reason) = failure {
                        break reason;
                    }
                }
            }
        };
        tracing::info!(node = %self.node, conn = self.id, %reason, "xDS client disconnected");
        self.clients.lock().expect("clients lock").remove(&self.id);
    }

    fn status(&self, update: impl FnOnce(&mut ClientStatus)) {
        if let Some(status) = self.clients.lock().expect("clients lock").get_mut(&self.id) {
            update(status);
        }
    }

    async fn on_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), String> {
        if let Some(node) = &request.node {
            if !node.id.is_empty() {
                let id = node.id.clone();
                self.status(|s| s.proxy_id = id);
            }
        }
        let type_url = request.type_url.clone();
        if type_url.is_empty() {
            return Ok(());
        }
        if !request.response_nonce.is_empty() {
            match &request.error_detail {
                Some(error) => {
                    tracing::warn!(
                        node = %self.node, conn = self.id, %type_url, nonce = %request.response_nonce,
                        error = %error.message, "xDS client rejected resources (NACK)"
                    );
                    let message = error.message.clone();
                    self.status(|s| {
                        s.nacks += 1;
                        s.last_nack = Some(message);
                    });
                }
                None => self.status(|s| s.acks += 1),
            }
        }
        let first = !self.subscriptions.contains_key(&type_url);
        let subscription = self.subscriptions.entry(type_url.clone()).or_default();
        let mut force = first;
        if first {
            // An initial request with no names is a wildcard subscription.
            if request.resource_names_subscribe.is_empty()
                && request.resource_names_unsubscribe.is_empty()
            {
                subscription.wildcard = true;
            }
            subscription.sent = request
                .initial_resource_versions
                .clone()
                .into_iter()
                .collect();
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                subscription.wildcard = true;
            } else {
                subscription.names.insert(name.clone());
                // Answer every newly subscribed name, even if unchanged.
                subscription.sent.remove(name);
                subscription.reported_missing.remove(name);
            }
            force = true;
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                subscription.wildcard = false;
            } else {
                subscription.names.remove(name);
                subscription.reported_missing.remove(name);
                if !subscription.wildcard {
                    subscription.sent.remove(name);
                }
            }
        }
        let snapshot = self.snapshots.borrow().clone();
        self.push(&type_url, &snapshot, force).await
    }

    /// Sends the difference between what the client holds and the snapshot.
    async fn push(
        &mut self,
        type_url: &str,
        snapshot: &XdsSnapshot,
        force: bool,
    ) -> Result<(), String> {
        let Some(subscription) = self.subscriptions.get_mut(type_url) else {
            return Ok(());
        };
        let empty = BTreeMap::new();
        let available = snapshot.of_type(type_url).unwrap_or_else(|| {
            tracing::debug!(%type_url, "subscription to a type this server does not serve");
            &empty
        });
        let mut resources = Vec::new();
        let wanted = |name: &str| subscription.wildcard || subscription.names.contains(name);
        for (name, versioned) in available {
            if wanted(name) && subscription.sent.get(name) != Some(&versioned.version) {
                resources.push(Resource {
                    version: versioned.version.clone(),
                    resource: Some(versioned.resource.clone()),
                    name: name.clone(),
                    aliases: Vec::new(),
                    ttl: None,
                });
            }
        }
        let mut removed: Vec<String> = subscription
            .sent
            .keys()
            .filter(|name| !available.contains_key(*name) || !wanted(name))
            .cloned()
            .collect();
        for name in &subscription.names {
            if !available.contains_key(name)
                && !subscription.reported_missing.contains(name)
                && !removed.contains(name)
            {
                removed.push(name.clone());
            }
        }
        if resources.is_empty() && removed.is_empty() && !force {
            return Ok(());
        }
        for name in &removed {
            subscription.sent.remove(name);
            if subscription.names.contains(name) {
                subscription.reported_missing.insert(name.clone());
            }
        }
        for resource in &resources {
            subscription
                .sent
                .insert(resource.name.clone(), resource.version.clone());
            subscription.reported_missing.remove(&resource.name);
        }
        self.nonce += 1;
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.generation.to_string(),
            resources,
            type_url: type_url.to_owned(),
            nonce: format!("{}-{}", self.id, self.nonce),
            removed_resources: removed,
        };
        tracing::debug!(
            node = %self.node, %type_url, nonce = %response.nonce,
            updated = response.resources.len(), removed = response.removed_resources.len(),
            "xDS push"
        );
        self.tx
            .send(Ok(response))
            .await
            .map_err(|_| "client went away".to_owned())
    }
}
