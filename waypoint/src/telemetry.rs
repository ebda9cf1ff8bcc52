//! Istio's request metrics as a waypoint reports them
//! (`reporter="waypoint"`): the source from the HBONE peer (its workload
//! by address, else what it said in `baggage`), the destination from the
//! endpoint chosen and the service routed to.

use std::sync::Arc;

use weft_proto::spiffe::Identity;
use weft_proxy::{
    metrics::{Ends, Reporter, RequestLabels, RequestMetrics, TcpLabels},
    peer_metadata::PeerMetadata,
    state::{Service, Workload},
};

use crate::access_log::RequestLog;

/// What one request's metrics are labelled with, filled in as the
/// request is routed.
pub struct RequestMeter {
    metrics: RequestMetrics,
    source: Option<Arc<Workload>>,
    source_identity: Identity,
    source_metadata: PeerMetadata,
    /// The service the request went to (the addressed one until a route
    /// chooses a backend).
    pub service: Option<Arc<Service>>,
    /// The endpoint that answered.
    pub destination: Option<Arc<Workload>>,
}

impl RequestMeter {
    pub fn new(
        metrics: RequestMetrics,
        source: Option<Arc<Workload>>,
        source_identity: Identity,
        source_metadata: PeerMetadata,
        service: Option<Arc<Service>>,
    ) -> Self {
        Self {
            metrics,
            source,
            source_identity,
            source_metadata,
            service,
            destination: None,
        }
    }

    /// Counts the finished request `log` describes.
    pub fn record(&self, log: &RequestLog, duration_ms: f64) {
        let mut ends = TcpLabels::new(&Ends {
            reporter: Reporter::Waypoint,
            source: self.source.as_deref(),
            source_identity: Some(&self.source_identity),
            destination: self.destination.as_deref(),
            destination_identity: self.destination.as_deref().map(|w| &w.identity),
            service: self.service.as_deref(),
            mtls: true,
        })
        .with_source_metadata(&self.source_metadata);
        ends.request_protocol = if log.grpc { "grpc" } else { "http" }.into();
        ends.response_flags = log.flags.into();
        let labels = RequestLabels {
            ends,
            response_code: log.status.to_string(),
            grpc_response_status: log
                .grpc
                .then(|| log.grpc_status.map(|c| c.to_string()))
                .flatten()
                .unwrap_or_default(),
        };
        self.metrics
            .record(&labels, duration_ms, log.bytes_received(), log.bytes_sent);
    }
}

impl std::fmt::Debug for RequestMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMeter")
            .field("source", &self.source.as_ref().map(|w| &w.name))
            .field("service", &self.service.as_ref().map(|s| s.key()))
            .field("destination", &self.destination.as_ref().map(|w| &w.name))
            .finish_non_exhaustive()
    }
}
