//! ztunnel's own metrics, beside the `istio_tcp_*` families: the state of
//! its control-plane connection, its certificates, its connections, pods
//! and capture. They are set from live state at each scrape.

use std::{sync::Arc, time::SystemTime};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{family::Family, gauge::Gauge},
};
use tokio::sync::watch;
use weft_proxy::{identity::CertificateManager, metrics::Metrics, xds::XdsStatus};

use crate::{pods::Pods, proxy::Proxy};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IdentityLabel {
    identity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: String,
}

/// The gauges, and what they are read from.
pub struct Telemetry {
    metrics: Metrics,
    xds_connected: Gauge,
    xds_last_update: Gauge,
    certificate_expiry: Family<IdentityLabel, Gauge>,
    active_connections: Family<DirectionLabel, Gauge>,
    enrolled_pods: Gauge,
    capture_mode: Family<ModeLabel, Gauge>,
    bpf_programs: Gauge,
    xds: watch::Receiver<XdsStatus>,
    certs: CertificateManager,
    pods: Arc<Pods>,
    proxy: Arc<Proxy>,
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Telemetry {
    pub fn new(
        proxy: Arc<Proxy>,
        pods: Arc<Pods>,
        xds: watch::Receiver<XdsStatus>,
        certs: CertificateManager,
    ) -> Self {
        let metrics = proxy.metrics.clone();
        let telemetry = Self {
            metrics,
            xds_connected: Gauge::default(),
            xds_last_update: Gauge::default(),
            certificate_expiry: Family::default(),
            active_connections: Family::default(),
            enrolled_pods: Gauge::default(),
            capture_mode: Family::default(),
            bpf_programs: Gauge::default(),
            xds,
            certs,
            pods,
            proxy,
        };
        let m = &telemetry.metrics;
        m.register(
            "weft_ztunnel_xds_connected",
            "1 while the xDS stream to the control service is open",
            telemetry.xds_connected.clone(),
        );
        m.register(
            "weft_ztunnel_xds_last_update_timestamp_seconds",
            "When the last xDS response was applied (Unix time)",
            telemetry.xds_last_update.clone(),
        );
        m.register(
            "weft_ztunnel_certificate_expiry_timestamp_seconds",
            "When the workload certificate of an identity expires (Unix time)",
            telemetry.certificate_expiry.clone(),
        );
        m.register(
            "weft_ztunnel_active_connections",
            "Connections being proxied now",
            telemetry.active_connections.clone(),
        );
        m.register(
            "weft_ztunnel_enrolled_pods",
            "Pods this ztunnel serves",
            telemetry.enrolled_pods.clone(),
        );
        m.register(
            "weft_ztunnel_capture_mode",
            "1 for the capture mode in use",
            telemetry.capture_mode.clone(),
        );
        m.register(
            "weft_ztunnel_bpf_programs_attached",
            "Capture programs attached in the kernel (0 in iptables mode)",
            telemetry.bpf_programs.clone(),
        );
        telemetry
    }

    /// The metrics text, with every gauge read from live state.
    pub fn render(&self) -> String {
        let xds = self.xds.borrow().clone();
        self.xds_connected.set(i64::from(xds.connected));
        self.xds_last_update
            .set(xds.last_update.map(unix_seconds).unwrap_or(0));
        self.certificate_expiry.clear();
        for info in self.certs.info() {
            if let Some(not_after) = info.not_after {
                self.certificate_expiry
                    .get_or_create(&IdentityLabel {
                        identity: info.identity,
                    })
                    .set(unix_seconds(not_after));
            }
        }
        self.active_connections.clear();
        for connection in self.proxy.connections.list() {
            self.active_connections
                .get_or_create(&DirectionLabel {
                    direction: connection.direction.into(),
                })
                .inc();
        }
        self.enrolled_pods.set(self.pods.list().len() as i64);
        self.capture_mode
            .get_or_create(&ModeLabel {
                mode: self.proxy.capture.name().into(),
            })
            .set(1);
        self.bpf_programs
            .set(self.proxy.capture.attachments() as i64);
        self.metrics.render()
    }
}
