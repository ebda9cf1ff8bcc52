//! Istio's request metrics as a waypoint reports them
//! (`reporter="waypoint"`): the source from the HBONE peer (its workload
//! by address, else what it said in `baggage`), the destination from the
//! endpoint chosen and the service routed to. And the request's span, for
//! OTLP.

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use weft_proto::spiffe::Identity;
use weft_proxy::{
    metrics::{Ends, Reporter, RequestLabels, RequestMetrics, RequestSeries, TcpLabels},
    otlp::{Exporter, FinishedSpan, Value},
    peer_metadata::PeerMetadata,
    state::{Service, Workload},
    trace_context::TraceContext,
};

use crate::access_log::RequestLog;

/// The caller's side of one connection's request metrics, worked out
/// once for all its requests, and the series they were counted in, kept
/// for the next ones (a keep-alive connection's requests mostly share
/// one).
pub struct SourceMeter {
    metrics: RequestMetrics,
    source: Option<Arc<Workload>>,
    identity: Identity,
    metadata: PeerMetadata,
    series: Mutex<Vec<(SeriesKey, RequestSeries)>>,
}

/// Series kept per connection, at most.
const SERIES_KEPT: usize = 16;

/// What, besides the caller, decides a request's labels. Service and
/// workload compare by pointer: a changed one (new labels) is a new
/// `Arc` from the state, so a series is never reused for what it no longer
/// describes.
struct SeriesKey {
    service: Option<Arc<Service>>,
    destination: Option<Arc<Workload>>,
    grpc: bool,
    flags: &'static str,
    status: u16,
    grpc_status: Option<u16>,
}

impl SeriesKey {
    fn same(&self, other: &SeriesKey) -> bool {
        fn same_arc<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        same_arc(&self.service, &other.service)
            && same_arc(&self.destination, &other.destination)
            && (self.grpc, self.flags, self.status, self.grpc_status)
                == (other.grpc, other.flags, other.status, other.grpc_status)
    }
}

impl SourceMeter {
    pub fn new(
        metrics: RequestMetrics,
        source: Option<Arc<Workload>>,
        identity: Identity,
        metadata: PeerMetadata,
    ) -> Self {
        Self {
            metrics,
            source,
            identity,
            metadata,
            series: Mutex::default(),
        }
    }

    /// The series for `key`: a kept one, or one labelled afresh.
    fn series(&self, key: SeriesKey) -> RequestSeries {
        let mut kept = self.series.lock().expect("series lock");
        if let Some((_, series)) = kept.iter().find(|(k, _)| k.same(&key)) {
            return series.clone();
        }
        let mut ends = TcpLabels::new(&Ends {
            reporter: Reporter::Waypoint,
            source: self.source.as_deref(),
            source_identity: Some(&self.identity),
            destination: key.destination.as_deref(),
            destination_identity: key.destination.as_deref().map(|w| &w.identity),
            service: key.service.as_deref(),
            mtls: true,
        })
        .with_source_metadata(&self.metadata);
        ends.request_protocol = if key.grpc { "grpc" } else { "http" }.into();
        ends.response_flags = key.flags.into();
        let labels = RequestLabels {
            ends,
            response_code: key.status.to_string(),
            grpc_response_status: key.grpc_status.map(|c| c.to_string()).unwrap_or_default(),
        };
        let series = self.metrics.series(&labels);
        if kept.len() >= SERIES_KEPT {
            kept.remove(0);
        }
        kept.push((key, series.clone()));
        series
    }
}

/// What one request's metrics are labelled with, filled in as the
/// request is routed.
pub struct RequestMeter {
    source: Arc<SourceMeter>,
    /// The service the request went to (the addressed one until a route
    /// chooses a backend).
    pub service: Option<Arc<Service>>,
    /// The endpoint that answered.
    pub destination: Option<Arc<Workload>>,
}

impl RequestMeter {
    pub fn new(source: Arc<SourceMeter>, service: Option<Arc<Service>>) -> Self {
        Self {
            source,
            service,
            destination: None,
        }
    }

    /// Counts the finished request `log` describes.
    pub fn record(&self, log: &RequestLog, duration_ms: f64) {
        let series = self.source.series(SeriesKey {
            service: self.service.clone(),
            destination: self.destination.clone(),
            grpc: log.grpc,
            flags: log.flags,
            status: log.status,
            grpc_status: log.grpc.then_some(log.grpc_status).flatten(),
        });
        series.record(duration_ms, log.bytes_received(), log.bytes_sent);
    }
}

impl std::fmt::Debug for RequestMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestMeter")
            .field("source", &self.source.source.as_ref().map(|w| &w.name))
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
            ("http.method", text(log.method.as_str())),
            (
                "http.url",
                text(&format!("{}{}", log.authority(), log.path)),
            ),
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
            attributes.push(("upstream_address", text(&upstream.to_string())));
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weft_proxy::{metrics::Metrics, state::TunnelProtocol};

    use super::*;

    fn workload(revision: &str) -> Arc<Workload> {
        Arc::new(Workload {
            uid: "shop/web-0".into(),
            name: "web-0".into(),
            namespace: "shop".into(),
            ips: vec!["198.18.0.9".parse().unwrap()],
            identity: "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap(),
            node: "n1".into(),
            protocol: TunnelProtocol::Hbone,
            canonical_name: "web".into(),
            canonical_revision: revision.into(),
            workload_name: "web".into(),
            cluster_id: "c".into(),
            services: BTreeMap::new(),
            authorization_policies: Vec::new(),
            healthy: true,
            host_network: false,
            waypoint: None,
        })
    }

    /// `istio_requests_total` samples: (destination revision, code, count).
    fn totals(metrics: &Metrics) -> Vec<(String, String, String)> {
        let label = |line: &str, name: &str| {
            let start = line.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            line[start..].split('"').next().unwrap().to_owned()
        };
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .map(|l| {
                (
                    label(l, "destination_canonical_revision"),
                    label(l, "response_code"),
                    l.rsplit(' ').next().unwrap().to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn a_connections_requests_share_series_until_what_labels_them_changes() {
        let metrics = Metrics::default();
        let source = Arc::new(SourceMeter::new(
            RequestMetrics::register(&metrics),
            None,
            "spiffe://cluster.local/ns/shop/sa/client".parse().unwrap(),
            PeerMetadata::default(),
        ));
        let record = |destination: &Arc<Workload>, status: u16| {
            let mut log = RequestLog::new(
                http::Method::GET,
                http::uri::PathAndQuery::from_static("/"),
                "HTTP/1.1",
                Some(http::HeaderValue::from_static("web")),
                "198.18.0.1:1".into(),
                "client".into(),
                "shop/web".into(),
            );
            log.status = status;
            let mut meter = RequestMeter::new(source.clone(), None);
            meter.destination = Some(destination.clone());
            meter.record(&log, 1.0);
        };
        let v1 = workload("v1");
        for status in [200, 200, 503, 200] {
            record(&v1, status);
        }
        // The same endpoint, relabelled: a new `Arc` from the state.
        let v2 = workload("v2");
        record(&v2, 200);
        let mut seen = totals(&metrics);
        seen.sort();
        let row = |rev: &str, code: &str, n: &str| (rev.to_owned(), code.to_owned(), n.to_owned());
        assert_eq!(
            seen,
            [
                row("v1", "200", "3"),
                row("v1", "503", "1"),
                row("v2", "200", "1")
            ]
        );
    }
}
