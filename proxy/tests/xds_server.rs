//! The delta-ADS server's protocol, driven by a raw gRPC client: named
//! subscriptions, absent names, unsubscribing, and resuming with
//! `initial_resource_versions` so nothing unchanged is resent.

mod support;

use std::{collections::BTreeMap, time::Duration};

use support::TestControl;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use weft_proto::{
    envoy::service::discovery::v3::{
        aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
        DeltaDiscoveryRequest, DeltaDiscoveryResponse,
    },
    ADDRESS_TYPE_URL,
};

const SERVICE: &str = "demo/server.demo.svc.cluster.local";
const CLIENT_POD: &str = "Kubernetes//Pod/demo/client";

struct Stream {
    requests: mpsc::Sender<DeltaDiscoveryRequest>,
    responses: Streaming<DeltaDiscoveryResponse>,
}

impl Stream {
    async fn open(tc: &TestControl) -> Self {
        let channel = tc.plane("n1").connect().await.unwrap();
        let (requests, rx) = mpsc::channel(8);
        let responses = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self {
            requests,
            responses,
        }
    }

    async fn send(&self, request: DeltaDiscoveryRequest) {
        self.requests.send(request).await.unwrap();
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.responses.message())
            .await
            .expect("a response within 5 s")
            .unwrap()
            .expect("the stream stays open")
    }

    async fn nothing_for(&mut self, wait: Duration) {
        if let Ok(message) = tokio::time::timeout(wait, self.responses.message()).await {
            panic!("expected silence, got {message:?}");
        }
    }

    async fn ack(&self, response: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: response.type_url.clone(),
            response_nonce: response.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
}

fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn named_subscriptions_get_exactly_what_they_name() {
    let tc = TestControl::start().await;
    let mut stream = Stream::open(&tc).await;
    stream
        .send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            resource_names_subscribe: vec![
                SERVICE.into(),
                "demo/nothing.demo.svc.cluster.local".into(),
            ],
            ..Default::default()
        })
        .await;
    let first = stream.next().await;
    assert_eq!(names(&first), [SERVICE]);
    assert_eq!(
        first.removed_resources,
        ["demo/nothing.demo.svc.cluster.local"],
        "an absent name is reported"
    );
    assert!(!first.nonce.is_empty());
    stream.ack(&first).await;

    // Subscribing to one more name sends just that one.
    stream
        .send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            resource_names_subscribe: vec![CLIENT_POD.into()],
            ..Default::default()
        })
        .await;
    let second = stream.next().await;
    assert_eq!(names(&second), [CLIENT_POD]);
    assert!(second.removed_resources.is_empty());
    assert_ne!(second.nonce, first.nonce);

    // A change to a resource not subscribed to sends nothing.
    let other = "apiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: demo}\nspec: {nodeName: n2}\nstatus: {podIP: 198.18.2.40}\n";
    std::fs::write(tc.config_dir().join("other.yaml"), other).unwrap();
    stream.nothing_for(Duration::from_millis(500)).await;

    // Unsubscribed, the client pod's removal is not reported either.
    stream
        .send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            resource_names_unsubscribe: vec![CLIENT_POD.into()],
            ..Default::default()
        })
        .await;
    let mesh = std::fs::read_to_string(tc.config_dir().join("mesh.yaml")).unwrap();
    let without_client = mesh.replace("status: {podIP: 198.18.1.2}", "");
    std::fs::write(tc.config_dir().join("mesh.yaml"), without_client).unwrap();
    stream.nothing_for(Duration::from_millis(500)).await;
}

#[tokio::test]
async fn a_resumed_stream_receives_only_what_changed() {
    let tc = TestControl::start().await;
    let mut stream = Stream::open(&tc).await;
    stream
        .send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        })
        .await;
    let first = stream.next().await;
    assert_eq!(
        first.resources.len(),
        3,
        "two pods and a service: {:?}",
        names(&first)
    );
    let held: BTreeMap<String, String> = first
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(stream);

    // While away: the client pod is deleted, the server pod changes.
    let mesh = std::fs::read_to_string(tc.config_dir().join("mesh.yaml")).unwrap();
    let changed = mesh.replace("status: {podIP: 198.18.1.2}", "").replace(
        "serviceAccountName: server",
        "serviceAccountName: server-v2",
    );
    std::fs::write(tc.config_dir().join("mesh.yaml"), changed).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut resumed = Stream::open(&tc).await;
    resumed
        .send(DeltaDiscoveryRequest {
            type_url: ADDRESS_TYPE_URL.into(),
            resource_names_subscribe: vec!["*".into()],
            initial_resource_versions: held.into_iter().collect(),
            ..Default::default()
        })
        .await;
    let response = resumed.next().await;
    assert_eq!(
        names(&response),
        ["Kubernetes//Pod/demo/server"],
        "only the changed resource"
    );
    assert_eq!(response.removed_resources, [CLIENT_POD]);
}
