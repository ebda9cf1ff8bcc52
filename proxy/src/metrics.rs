//! Prometheus metrics with Istio's names and labels.
//!
//! The TCP families are the ones Istio's dashboards read
//! (`istio_tcp_connections_opened_total`, `…_closed_total`,
//! `istio_tcp_sent_bytes_total` = bytes from the destination to the source,
//! `istio_tcp_received_bytes_total` = bytes from the source to the
//! destination), labelled from the workloads at both ends and reported by
//! each end (`reporter` = `source` or `destination`). Byte counters advance
//! as data flows, not only when a connection closes.

use std::sync::{Arc, Mutex};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use weft_proto::spiffe::Identity;

use crate::{
    peer_metadata::PeerMetadata,
    state::{Service, Workload},
};

/// Labels of the `istio_tcp_*` families, as Istio defines them.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

/// Which end of a connection reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
    /// A waypoint, between the two.
    Waypoint,
}

/// What is known about one connection's two ends.
pub struct Ends<'a> {
    pub reporter: Reporter,
    pub source: Option<&'a Workload>,
    pub source_identity: Option<&'a Identity>,
    pub destination: Option<&'a Workload>,
    pub destination_identity: Option<&'a Identity>,
    pub service: Option<&'a Service>,
    /// Whether the connection is mutual TLS (HBONE).
    pub mtls: bool,
}

const UNKNOWN: &str = "unknown";

impl TcpLabels {
    pub fn new(ends: &Ends<'_>) -> Self {
        let or_unknown =
            |v: Option<&str>| v.filter(|s| !s.is_empty()).unwrap_or(UNKNOWN).to_owned();
        let src = ends.source;
        let dst = ends.destination;
        let principal =
            |id: Option<&Identity>| id.map(|i| i.to_string()).unwrap_or_else(|| UNKNOWN.into());
        Self {
            reporter: match ends.reporter {
                Reporter::Source => "source",
                Reporter::Destination => "destination",
                Reporter::Waypoint => "waypoint",
            }
            .into(),
            source_workload: or_unknown(src.map(|w| w.workload_name.as_str())),
            source_canonical_service: or_unknown(src.map(|w| w.canonical_name.as_str())),
            source_canonical_revision: or_unknown(src.map(|w| w.canonical_revision.as_str())),
            source_workload_namespace: or_unknown(src.map(|w| w.namespace.as_str())),
            source_principal: principal(ends.source_identity),
            source_app: or_unknown(src.map(|w| w.canonical_name.as_str())),
            source_version: or_unknown(src.map(|w| w.canonical_revision.as_str())),
            source_cluster: or_unknown(src.map(|w| w.cluster_id.as_str())),
            destination_service: or_unknown(ends.service.map(|s| s.hostname.as_str())),
            destination_service_namespace: or_unknown(ends.service.map(|s| s.namespace.as_str())),
            destination_service_name: or_unknown(ends.service.map(|s| s.name.as_str())),
            destination_workload: or_unknown(dst.map(|w| w.workload_name.as_str())),
            destination_canonical_service: or_unknown(dst.map(|w| w.canonical_name.as_str())),
            destination_canonical_revision: or_unknown(dst.map(|w| w.canonical_revision.as_str())),
            destination_workload_namespace: or_unknown(dst.map(|w| w.namespace.as_str())),
            destination_principal: principal(ends.destination_identity),
            destination_app: or_unknown(dst.map(|w| w.canonical_name.as_str())),
            destination_version: or_unknown(dst.map(|w| w.canonical_revision.as_str())),
            destination_cluster: or_unknown(dst.map(|w| w.cluster_id.as_str())),
            request_protocol: "tcp".into(),
            response_flags: "-".into(),
            connection_security_policy: if ends.mtls { "mutual_tls" } else { "unknown" }.into(),
        }
    }
}

impl TcpLabels {
    /// Fills the source's labels from what it said of itself (`baggage`)
    /// where this end does not know the source.
    pub fn with_source_metadata(mut self, meta: &PeerMetadata) -> Self {
        let fill = |label: &mut String, value: &str| {
            if label == UNKNOWN && !value.is_empty() {
                *label = value.to_owned();
            }
        };
        fill(&mut self.source_workload, &meta.workload);
        fill(&mut self.source_workload_namespace, &meta.namespace);
        fill(&mut self.source_canonical_service, &meta.canonical_service);
        fill(
            &mut self.source_canonical_revision,
            &meta.canonical_revision,
        );
        fill(&mut self.source_app, &meta.canonical_service);
        fill(&mut self.source_version, &meta.canonical_revision);
        fill(&mut self.source_cluster, &meta.cluster);
        self
    }
}

/// Labels of the `istio_request*` families: the TCP ones (with
/// `request_protocol` `http` or `grpc`) plus the response's.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    #[prometheus(flatten)]
    pub ends: TcpLabels,
    pub response_code: String,
    pub grpc_response_status: String,
}

/// Envoy's default histogram buckets (milliseconds), which Istio's
/// dashboards are built on.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's buckets for body sizes (bytes).
const SIZE_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn size_histogram() -> Histogram {
    Histogram::new(SIZE_BUCKETS)
}

type Histograms = Family<RequestLabels, Histogram, fn() -> Histogram>;

/// The `istio_request*` families an L7 proxy reports.
#[derive(Clone)]
pub struct RequestMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Histograms,
    pub request_bytes: Histograms,
    pub response_bytes: Histograms,
}

impl RequestMetrics {
    /// The families, registered in `metrics`.
    pub fn register(metrics: &Metrics) -> Self {
        let this = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(size_histogram),
            response_bytes: Family::new_with_constructor(size_histogram),
        };
        metrics.register(
            "istio_requests",
            "Total number of requests handled",
            this.requests.clone(),
        );
        metrics.register(
            "istio_request_duration_milliseconds",
            "Time from the first byte of a request to the last of its response, in milliseconds",
            this.duration.clone(),
        );
        metrics.register(
            "istio_request_bytes",
            "Sizes of request bodies, in bytes",
            this.request_bytes.clone(),
        );
        metrics.register(
            "istio_response_bytes",
            "Sizes of response bodies, in bytes",
            this.response_bytes.clone(),
        );
        this
    }

    /// Records one finished request.
    pub fn record(&self, labels: &RequestLabels, duration_ms: f64, received: u64, sent: u64) {
        self.series(labels).record(duration_ms, received, sent);
    }

    /// The series `labels` name in the four families (created if new),
    /// to record requests in without looking them up again.
    pub fn series(&self, labels: &RequestLabels) -> RequestSeries {
        RequestSeries {
            requests: self.requests.get_or_create(labels).clone(),
            duration: self.duration.get_or_create(labels).clone(),
            request_bytes: self.request_bytes.get_or_create(labels).clone(),
            response_bytes: self.response_bytes.get_or_create(labels).clone(),
        }
    }
}

/// One label set's series in the `istio_request*` families: handles that
/// share their values with the registered families.
#[derive(Clone, Debug)]
pub struct RequestSeries {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl RequestSeries {
    /// Records one finished request.
    pub fn record(&self, duration_ms: f64, received: u64, sent: u64) {
        self.requests.inc();
        self.duration.observe(duration_ms);
        self.request_bytes.observe(received as f64);
        self.response_bytes.observe(sent as f64);
    }
}

/// The `istio_tcp_*` families.
#[derive(Clone, Default)]
pub struct TcpMetrics {
    pub opened: Family<TcpLabels, Counter>,
    pub closed: Family<TcpLabels, Counter>,
    pub sent_bytes: Family<TcpLabels, Counter>,
    pub received_bytes: Family<TcpLabels, Counter>,
}

/// A proxy's metrics registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    pub tcp: TcpMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let tcp = TcpMetrics::default();
        registry.register(
            "istio_tcp_connections_opened",
            "Total number of TCP connections opened",
            tcp.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "Total number of TCP connections closed",
            tcp.closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Total number of bytes sent from the destination to the source of a TCP connection",
            tcp.sent_bytes.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Total number of bytes received by the destination from the source of a TCP connection",
            tcp.received_bytes.clone(),
        );
        Self {
            registry: Arc::new(Mutex::new(registry)),
            tcp,
        }
    }
}

impl Metrics {
    /// Registers another metric (the proxy's own).
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry
            .lock()
            .expect("metrics lock")
            .register(name, help, metric);
    }

    /// The OpenMetrics text of everything registered.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(
            &mut out,
            &self.registry.lock().expect("metrics lock"),
        )
        .expect("writing to a String cannot fail");
        out
    }
}

/// The counters one connection advances: its TCP family entries, plus any
/// of its own (for the connections table).
#[derive(Clone, Default)]
pub struct ConnectionMeter {
    /// Source → destination bytes.
    pub request: Vec<Counter>,
    /// Destination → source bytes.
    pub response: Vec<Counter>,
}

impl ConnectionMeter {
    pub fn add_request(&self, n: u64) {
        for c in &self.request {
            c.inc_by(n);
        }
    }

    pub fn add_response(&self, n: u64) {
        for c in &self.response {
            c.inc_by(n);
        }
    }
}
