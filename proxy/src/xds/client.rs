//! The delta-ADS client.
//!
//! One stream carries every resource type the proxy needs. On each
//! (re)connect the client subscribes to every type with a wildcard and
//! reports the versions it holds, so the server sends only what changed
//! while it was away. Each response is applied resource by resource and
//! answered with an ACK, or a NACK naming every rejected resource and why
//! (the accepted ones are applied all the same). While the control service
//! is unreachable the proxy keeps serving from what it has, and retries with
//! jittered exponential backoff.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use weft_proto::{
    envoy::{
        config::core::v3::Node,
        service::discovery::v3::{
            aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
            DeltaDiscoveryRequest, DeltaDiscoveryResponse,
        },
    },
    google::rpc,
};

use super::handlers::{Received, ResourceHandler};
use crate::control::ControlPlane;

/// `google.rpc.Code.INVALID_ARGUMENT`, carried in NACKs.
const INVALID_ARGUMENT: i32 = 3;

/// What the client has achieved so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct XdsStatus {
    /// A stream is open right now.
    pub connected: bool,
    /// Every type has received its first response on some stream.
    pub synced: bool,
    pub last_update: Option<SystemTime>,
    /// Why the last stream ended or failed to start.
    pub last_error: Option<String>,
    pub acks: u64,
    pub nacks: u64,
}

/// Runs the xDS session for a proxy.
pub struct XdsClient {
    control: ControlPlane,
    node: Node,
    handlers: Vec<Arc<dyn ResourceHandler>>,
    status: watch::Sender<XdsStatus>,
    /// Backoff between reconnects: starts at `min`, doubles up to `max`.
    pub backoff: (Duration, Duration),
}

impl XdsClient {
    pub fn new(control: ControlPlane, node: Node, handlers: Vec<Arc<dyn ResourceHandler>>) -> Self {
        Self {
            control,
            node,
            handlers,
            status: watch::channel(XdsStatus::default()).0,
            backoff: (Duration::from_millis(100), Duration::from_secs(15)),
        }
    }

    /// Follows the client's status.
    pub fn status(&self) -> watch::Receiver<XdsStatus> {
        self.status.subscribe()
    }

    /// Runs forever: connect, serve the stream, back off, reconnect.
    pub async fn run(self) {
        let mut delay = self.backoff.0;
        loop {
            let outcome = self.session().await;
            let (productive, reason) = match outcome {
                Ok(productive) => (
                    productive,
                    "the control service closed the stream".to_owned(),
                ),
                Err(SessionError { productive, reason }) => (productive, reason),
            };
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_error = Some(reason.clone());
            });
            if productive {
                delay = self.backoff.0;
            }
            // Full jitter over [delay/2, delay], so a fleet of proxies does
            // not reconnect in lockstep after a control-service restart.
            let jittered = delay.mul_f64(0.5 + rand::random::<f64>() / 2.0);
            tracing::warn!(%reason, retry_in = ?jittered, "xDS stream down; serving the last config");
            tokio::time::sleep(jittered).await;
            delay = (delay * 2).min(self.backoff.1);
        }
    }

    fn initial_requests(&self) -> Vec<DeltaDiscoveryRequest> {
        self.handlers
            .iter()
            .enumerate()
            .map(|(i, handler)| DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.node.clone()),
                type_url: handler.type_url().to_owned(),
                resource_names_subscribe: vec!["*".to_owned()],
                initial_resource_versions: handler.versions().into_iter().collect(),
                ..Default::default()
            })
            .collect()
    }

    /// One stream. `Ok(true)`/`productive`: at least one response arrived.
    async fn session(&self) -> Result<bool, SessionError> {
        let fail = |productive, reason: String| SessionError { productive, reason };
        let channel = self
            .control
            .connect()
            .await
            .map_err(|e| fail(false, e.to_string()))?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (requests, outbound) = mpsc::channel(16);
        for request in self.initial_requests() {
            requests
                .try_send(request)
                .expect("the queue holds the initial requests");
        }
        let mut inbound = client
            .delta_aggregated_resources(ReceiverStream::new(outbound))
            .await
            .map_err(|status| {
                fail(
                    false,
                    format!(
                        "the control service refused the stream: {}",
                        status.message()
                    ),
                )
            })?
            .into_inner();
        self.status.send_modify(|s| s.connected = true);
        tracing::info!(address = %self.control.address, "xDS stream open");
        let mut pending: BTreeSet<&'static str> =
            self.handlers.iter().map(|h| h.type_url()).collect();
        let mut productive = false;
        loop {
            let response = match inbound.message().await {
                Ok(Some(response)) => response,
                Ok(None) => return Ok(productive),
                Err(status) => {
                    return Err(fail(
                        productive,
                        format!("xDS stream failed: {}", status.message()),
                    ))
                }
            };
            productive = true;
            let type_url = response.type_url.clone();
            let ack = self.apply(response);
            if ack.error_detail.is_some() {
                self.status.send_modify(|s| s.nacks += 1);
            } else {
                self.status.send_modify(|s| s.acks += 1);
            }
            if requests.send(ack).await.is_err() {
                return Err(fail(productive, "the request stream closed".into()));
            }
            pending.remove(type_url.as_str());
            self.status.send_modify(|s| {
                s.last_update = Some(SystemTime::now());
                if pending.is_empty() && !s.synced {
                    tracing::info!("xDS initial sync complete");
                    s.synced = true;
                }
            });
        }
    }

    /// Applies a response and builds its ACK or NACK.
    fn apply(&self, response: DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        let mut ack = DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        };
        let Some(handler) = self
            .handlers
            .iter()
            .find(|h| h.type_url() == response.type_url)
        else {
            ack.error_detail = Some(rpc::Status {
                code: INVALID_ARGUMENT,
                message: format!("this proxy does not handle {}", response.type_url),
                details: Vec::new(),
            });
            return ack;
        };
        let updates: Vec<Received> = response
            .resources
            .into_iter()
            .map(|r| Received {
                name: r.name,
                version: r.version,
                resource: r.resource,
            })
            .collect();
        let (count, removed) = (updates.len(), response.removed_resources.len());
        let rejected = handler.apply(updates, &response.removed_resources);
        tracing::debug!(type_url = %response.type_url, nonce = %response.nonce, updated = count - rejected.len(), removed, rejected = rejected.len(), "xDS update applied");
        if !rejected.is_empty() {
            let message = rejected
                .iter()
                .map(|(name, reason)| format!("{name}: {reason}"))
                .collect::<Vec<_>>()
                .join("; ");
            tracing::warn!(type_url = %response.type_url, %message, "rejected resources (NACK); keeping their previous versions");
            ack.error_detail = Some(rpc::Status {
                code: INVALID_ARGUMENT,
                message,
                details: Vec::new(),
            });
        }
        ack
    }
}

struct SessionError {
    productive: bool,
    reason: String,
}

/// The `Node` a proxy announces: its id, kind and node name.
pub fn proxy_node(kind: &str, node_name: &str, id: &str) -> Node {
    let string = |s: &str| prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(s.to_owned())),
    };
    Node {
        id: id.to_owned(),
        cluster: String::new(),
        metadata: Some(prost_types::Struct {
            fields: BTreeMap::from([
                ("NODE_NAME".to_owned(), string(node_name)),
                ("PROXY_KIND".to_owned(), string(kind)),
            ]),
        }),
        user_agent_name: format!("weft-{kind}"),
    }
}
