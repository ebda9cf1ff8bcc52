//! Istio's request metrics as a waypoint reports them
//! (`reporter="waypoint"`): the source from the HBONE peer (its workload
//! by address, else what it said in `baggage`), the destination from the
//! endpoint chosen and the service routed to. And the request's span, for
//! OTLP.

use std::{sync::Arc, time::SystemTime};

use weft_proto::spiffe::Identity;
use weft_proxy::{
    metrics::{Ends, Reporter, RequestLabels, RequestMetrics, TcpLabels},
    otlp::{Exporter, FinishedSpan, Value},
    peer_metadata::PeerMetadata,
    state::{Service, Workload},
    trace_context::TraceContext,
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

/// The span the waypoint makes for one request, exported when the request
/// is done.
pub struct RequestSpan {
    exporter: Exporter,
    pub context: TraceContext,
    /// `host:port/*`, Istio's operation name.
    name: String,
    started: SystemTime,
}

impl RequestSpan {
    pub fn new(exporter: Exporter, context: TraceContext, name: String) -> Self {
        Self {
            exporter,
            context,
            name,
            started: SystemTime::now(),
        }
    }

    /// Exports the span, with what `log` says of the request.
    pub fn finish(self, log: &RequestLog) {
        let text = |s: &str| Value::Str(s.to_owned());
        let mut attributes = vec![
            ("http.method", text(&log.method)),
            ("http.url", text(&format!("{}{}", log.authority, log.path))),
            ("http.protocol", text(log.protocol)),
            ("http.status_code", Value::Int(i64::from(log.status))),
            ("response_flags", text(log.flags)),
            ("request_size", Value::Int(log.bytes_received() as i64)),
            ("response_size", Value::Int(log.bytes_sent as i64)),
            ("peer.address", text(&log.src_addr)),
            ("downstream_principal", text(&log.src_identity)),
            ("upstream_cluster", text(&log.destination)),
            ("component", text("proxy")),
        ];
        if let Some(upstream) = &log.upstream {
            attributes.push(("upstream_address", text(upstream)));
        }
        if let Some(code) = log.grpc_status {
            attributes.push(("grpc.status_code", Value::Int(i64::from(code))));
        }
        self.exporter.export(FinishedSpan {
            context: self.context,
            name: self.name,
            server: true,
            start: self.started,
            end: SystemTime::now(),
            attributes,
            error: log.status >= 500 || log.status == 0,
        });
    }
}

impl std::fmt::Debug for RequestSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSpan")
            .field("traceparent", &self.context.traceparent())
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
