//! One structured line per connection, when it ends.
//!
//! Field names follow Istio's ztunnel (`src.addr`, `src.identity`,
//! `dst.addr`, `dst.hbone_addr`, `dst.service`, `dst.workload`,
//! `dst.identity`, `direction`, `bytes_sent`, `bytes_recv`, `duration`,
//! `error`; `bytes_sent` is what the source sent towards the destination,
//! `bytes_recv` what came back), emitted as a `tracing` event with target `access`, so the log
//! format (text or JSON) is the subscriber's. `bytes_spliced` says how many
//! of the bytes (both ways) the kernel moved without ztunnel copying them
//! (a same-node splice; 0 otherwise).

use std::{net::SocketAddr, time::Instant};

/// What is known about one proxied connection.
#[derive(Debug)]
pub struct ConnectionLog {
    pub direction: &'static str,
    pub src_addr: SocketAddr,
    pub src_workload: Option<String>,
    pub src_namespace: Option<String>,
    pub src_identity: Option<String>,
    pub dst_addr: SocketAddr,
    pub dst_hbone_addr: Option<SocketAddr>,
    pub dst_service: Option<String>,
    pub dst_workload: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_identity: Option<String>,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    /// Bytes (both ways) moved by the kernel splice, not copied by ztunnel.
    pub bytes_spliced: u64,
    /// The policy that denied the connection, if one did.
    pub policy: Option<String>,
    /// AUDIT policies that matched.
    pub audited: Vec<String>,
    /// Whether the connection went to a waypoint (then `dst.workload` is
    /// the waypoint's).
    pub waypoint: bool,
    started: Instant,
}

impl ConnectionLog {
    pub fn new(direction: &'static str, src_addr: SocketAddr, dst_addr: SocketAddr) -> Self {
        Self {
            direction,
            src_addr,
            src_workload: None,
            src_namespace: None,
            src_identity: None,
            dst_addr,
            dst_hbone_addr: None,
            dst_service: None,
            dst_workload: None,
            dst_namespace: None,
            dst_identity: None,
            bytes_sent: 0,
            bytes_recv: 0,
            bytes_spliced: 0,
            policy: None,
            audited: Vec::new(),
            waypoint: false,
            started: Instant::now(),
        }
    }

    /// Emits the line; `error` is why the connection failed, if it did.
    pub fn finish(self, error: Option<&dyn std::fmt::Display>) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let opt = |v: &Option<String>| v.clone().unwrap_or_default();
        let hbone = self
            .dst_hbone_addr
            .map(|a| a.to_string())
            .unwrap_or_default();
        let policy = opt(&self.policy);
        let audit = self.audited.join(",");
        match error {
            None => tracing::info!(
                target: "access",
                direction = self.direction,
                src.addr = %self.src_addr,
                src.workload = %opt(&self.src_workload),
                src.namespace = %opt(&self.src_namespace),
                src.identity = %opt(&self.src_identity),
                dst.addr = %self.dst_addr,
                dst.hbone_addr = %hbone,
                dst.service = %opt(&self.dst_service),
                dst.workload = %opt(&self.dst_workload),
                dst.namespace = %opt(&self.dst_namespace),
                dst.identity = %opt(&self.dst_identity),
                bytes_sent = self.bytes_sent,
                bytes_recv = self.bytes_recv,
                bytes_spliced = self.bytes_spliced,
                duration_ms,
                audit = %audit,
                waypoint = self.waypoint,
                "connection complete"
            ),
            Some(error) => tracing::warn!(
                target: "access",
                direction = self.direction,
                src.addr = %self.src_addr,
                src.workload = %opt(&self.src_workload),
                src.namespace = %opt(&self.src_namespace),
                src.identity = %opt(&self.src_identity),
                dst.addr = %self.dst_addr,
                dst.hbone_addr = %hbone,
                dst.service = %opt(&self.dst_service),
                dst.workload = %opt(&self.dst_workload),
                dst.namespace = %opt(&self.dst_namespace),
                dst.identity = %opt(&self.dst_identity),
                bytes_sent = self.bytes_sent,
                bytes_recv = self.bytes_recv,
                bytes_spliced = self.bytes_spliced,
                duration_ms,
                audit = %audit,
                waypoint = self.waypoint,
                policy = %policy,
                error = %error,
                "connection failed"
            ),
        }
    }
}
