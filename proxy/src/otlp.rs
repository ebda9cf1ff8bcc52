//! Exporting spans over OTLP/gRPC: finished spans are queued and sent in
//! batches by a background task, so a slow or absent collector costs a
//! request nothing; when the queue is full, spans are dropped and counted.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use tokio::sync::mpsc;
use weft_proto::opentelemetry::proto::collector::trace::v1::{
    self as otlp, any_value, trace_service_client::TraceServiceClient,
};

use crate::trace_context::TraceContext;

/// Spans waiting to be sent, at most.
const QUEUE: usize = 4096;
/// Spans per export, at most.
const BATCH: usize = 512;
/// How long a span waits for its batch to fill.
const LINGER: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("OTLP endpoint {endpoint:?} is not a URL such as http://collector:4317: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
}

/// One finished span.
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    pub context: TraceContext,
    pub name: String,
    /// A server span (a request received) rather than a client one.
    pub server: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Value)>,
    pub error: bool,
}

/// Where spans go: nowhere, or a collector.
#[derive(Clone, Default)]
pub struct Exporter {
    queue: Option<mpsc::Sender<FinishedSpan>>,
    dropped: Arc<AtomicU64>,
}

impl Exporter {
    /// An exporter to the collector at `endpoint` (`http://host:4317`),
    /// naming this proxy `service_name` (`service.name`) with `resource`
    /// attributes. Connects lazily and keeps retrying; must be called in a
    /// Tokio runtime.
    pub fn start(
        endpoint: &str,
        service_name: &str,
        resource: Vec<(&'static str, String)>,
    ) -> Result<Self, OtlpError> {
        let bad = |reason: String| OtlpError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason,
        };
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut attributes = vec![key_value("service.name", Value::Str(service_name.into()))];
        attributes.extend(
            resource
                .into_iter()
                .map(|(key, value)| key_value(key, Value::Str(value))),
        );
        let resource = otlp::Resource {
            attributes,
            dropped_attributes_count: 0,
        };
        tokio::spawn(send_batches(
            TraceServiceClient::new(channel),
            resource,
            rx,
            endpoint.to_owned(),
        ));
        Ok(Self {
            queue: Some(tx),
            dropped: Arc::default(),
        })
    }

    /// Whether spans go anywhere.
    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues `span` (dropped if it was not sampled, or the queue is full).
    pub fn export(&self, span: FinishedSpan) {
        let Some(queue) = &self.queue else { return };
        if !span.context.sampled {
            return;
        }
        if queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Spans dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn send_batches(
    mut client: TraceServiceClient<tonic::transport::Channel>,
    resource: otlp::Resource,
    mut rx: mpsc::Receiver<FinishedSpan>,
    endpoint: String,
) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len();
        let request = otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "weft".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: batch.into_iter().map(to_proto).collect(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match client.export(request).await {
            Ok(_) => {
                if std::mem::replace(&mut failing, false) {
                    tracing::info!(%endpoint, "exporting spans again");
                }
            }
            Err(status) => {
                // Said once per outage, not per batch.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%endpoint, spans = count, error = %status.message(), "could not export spans; dropping them until the collector answers");
                }
            }
        }
    }
}

fn to_proto(span: FinishedSpan) -> otlp::Span {
    let nanos = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
    };
    otlp::Span {
        trace_id: span.context.trace_id.to_vec(),
        span_id: span.context.span_id.to_vec(),
        trace_state: span.context.state.clone().unwrap_or_default(),
        parent_span_id: span
            .context
            .parent_id
            .map(|p| p.to_vec())
            .unwrap_or_default(),
        name: span.name,
        kind: if span.server {
            otlp::SpanKind::Server
        } else {
            otlp::SpanKind::Client
        } as i32,
        start_time_unix_nano: nanos(span.start),
        end_time_unix_nano: nanos(span.end),
        attributes: span
            .attributes
            .into_iter()
            .map(|(key, value)| key_value(key, value))
            .collect(),
        dropped_attributes_count: 0,
        status: Some(otlp::Status {
            message: String::new(),
            code: if span.error {
                otlp::StatusCode::Error
            } else {
                otlp::StatusCode::Unset
            } as i32,
        }),
    }
}

fn key_value(key: &str, value: Value) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.to_owned(),
        value: Some(otlp::AnyValue {
            value: Some(match value {
                Value::Str(s) => any_value::Value::StringValue(s),
                Value::Int(i) => any_value::Value::IntValue(i),
            }),
        }),
    }
}
