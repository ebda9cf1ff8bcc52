//! What ztunnel refuses before it connects anywhere: destinations that are
//! ztunnel itself (or the pod itself), connections whose original
//! destination cannot be known, connections from ztunnel's own upstream
//! sockets, and a pod's connections beyond its share.
//!
//! Without these, one `connect()` from a pod to ztunnel's own outbound
//! listener was "captured" with that listener as its destination, passed
//! through to it, captured again, and so on until ztunnel ran out of file
//! descriptors for every pod on the node. A captured connection never has a
//! loopback destination or one of the pod's own addresses (capture leaves
//! those alone), so such a destination means the connection was not
//! captured at all: it reached a listener directly.
//!
//! Every refusal is a reset (a 4xx/5xx answer on HBONE), counted in
//! `weft_ztunnel_refused_connections_total{reason}` and written to the access
//! log at most ten times a second per reason.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tokio::net::TcpStream;
use weft_proxy::{
    log_limit::{Admit, LogLimiter},
    metrics::Metrics,
};

use crate::{access_log::ConnectionLog, capture::ebpf::NetnsCookie, proxy::Ports};

/// Why ztunnel refused a connection before proxying it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{dst} is ztunnel's own endpoint or the pod's own address; a captured connection \
         never goes there, so this one reached ztunnel directly (refused)"
    )]
    OwnEndpoint { dst: SocketAddr },
    #[error(
        "the original destination of a connection to {listener} is unknown ({reason}); \
         refused rather than sent to ztunnel's own listener"
    )]
    NoOriginalDestination {
        listener: SocketAddr,
        reason: String,
    },
    #[error("the connection comes from ztunnel's own upstream socket {peer}: a loop (refused)")]
    OwnSocket { peer: SocketAddr },
    #[error(
        "pod {pod} already holds {limit} connections, its share of ztunnel \
         (--max-connections-per-pod); refused until some close"
    )]
    PodShare { pod: String, limit: usize },
}

/// Every `reason` label, for status pages.
pub const REASONS: [&str; 4] = [
    "own_endpoint",
    "no_original_destination",
    "own_socket",
    "pod_share",
];

impl Refusal {
    /// The `reason` label, and the kind of log line it is limited as.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::OwnEndpoint { .. } => "own_endpoint",
            Refusal::NoOriginalDestination { .. } => "no_original_destination",
            Refusal::OwnSocket { .. } => "own_socket",
            Refusal::PodShare { .. } => "pod_share",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// Whether `ip` is loopback, unspecified or one of the pod's own addresses
/// (IPv4-mapped addresses count as their IPv4 address).
fn is_pod_itself(ip: IpAddr, pod_ips: &[IpAddr]) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || ip.is_unspecified() || pod_ips.contains(&ip)
}

/// Outbound: `original` is where a connection accepted on `listener` was
/// headed.
pub fn outbound_destination(
    pod_ips: &[IpAddr],
    listener: SocketAddr,
    original: SocketAddr,
) -> Result<(), Refusal> {
    // iptables reports the connection's own destination when it did not
    // redirect it: the listener itself.
    if original == listener {
        return Err(Refusal::NoOriginalDestination {
            listener,
            reason: "it was not redirected".into(),
        });
    }
    if is_pod_itself(original.ip(), pod_ips) {
        return Err(Refusal::OwnEndpoint { dst: original });
    }
    Ok(())
}

/// Inbound (plaintext, or an HBONE CONNECT authority): `dst` must be the
/// application, never one of ztunnel's ports or loopback.
pub fn inbound_destination(ports: &Ports, dst: SocketAddr) -> Result<(), Refusal> {
    let ip = dst.ip().to_canonical();
    if ports.is_own(dst.port()) || ip.is_loopback() || ip.is_unspecified() {
        return Err(Refusal::OwnEndpoint { dst });
    }
    Ok(())
}

/// The local addresses of ztunnel's upstream sockets inside pods, by pod
/// network namespace.
#[derive(Clone, Default)]
pub struct OwnSockets {
    set: Arc<Mutex<HashSet<(NetnsCookie, SocketAddr)>>>,
}

/// One registered upstream socket; unregistered when dropped.
pub struct OwnSocket {
    set: Arc<Mutex<HashSet<(NetnsCookie, SocketAddr)>>>,
    key: (NetnsCookie, SocketAddr),
}

impl Drop for OwnSocket {
    fn drop(&mut self) {
        self.set.lock().expect("own sockets lock").remove(&self.key);
    }
}

impl OwnSockets {
    /// Registers an upstream socket bound to `local` in `netns`. Call it
    /// before the connection can reach a listener (right after the port is
    /// chosen), so no accept can see it unregistered.
    pub fn register(&self, netns: NetnsCookie, local: SocketAddr) -> OwnSocket {
        let key = (netns, local);
        self.set.lock().expect("own sockets lock").insert(key);
        OwnSocket {
            set: self.set.clone(),
            key,
        }
    }

    pub fn contains(&self, netns: NetnsCookie, peer: SocketAddr) -> bool {
        self.set
            .lock()
            .expect("own sockets lock")
            .contains(&(netns, peer))
    }
}

/// Refusal bookkeeping shared by every listener.
pub struct Guard {
    pub own_sockets: OwnSockets,
    refused: Family<RefusalLabels, Counter>,
    log: LogLimiter,
}

impl Guard {
    pub fn new(metrics: &Metrics) -> Self {
        let refused = Family::<RefusalLabels, Counter>::default();
        metrics.register(
            "weft_ztunnel_refused_connections",
            "Connections ztunnel refused before proxying them: to its own endpoints, without an \
             original destination, from its own sockets, or beyond a pod's share",
            refused.clone(),
        );
        Self {
            own_sockets: OwnSockets::default(),
            refused,
            log: LogLimiter::default(),
        }
    }

    /// Counts `refusal` and writes its access-log line (rate-limited).
    pub fn record(&self, log: ConnectionLog, refusal: &Refusal) {
        self.refused
            .get_or_create(&RefusalLabels {
                reason: refusal.reason(),
            })
            .inc();
        match self.log.admit(refusal.reason()) {
            Admit::Log { suppressed: 0 } => log.finish(Some(refusal)),
            Admit::Log { suppressed } => log.finish(Some(&format!(
                "{refusal} ({suppressed} more like it were not logged)"
            ))),
            Admit::Suppress => {}
        }
    }

    /// Resets `stream` and records the refusal.
    pub fn refuse(&self, stream: &TcpStream, log: ConnectionLog, refusal: &Refusal) {
        let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
        self.record(log, refusal);
    }

    /// How many connections were refused for `reason`.
    pub fn refused(&self, reason: &'static str) -> u64 {
        self.refused.get_or_create(&RefusalLabels { reason }).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn outbound_refuses_the_listener_loopback_and_the_pod_itself() {
        let pod = [IpAddr::from([198, 18, 1, 2])];
        let listener = addr("127.0.0.1:15001");
        let cases = [
            ("127.0.0.1:15001", Some("no_original_destination")),
            ("127.0.0.1:15006", Some("own_endpoint")),
            ("127.0.0.5:8080", Some("own_endpoint")),
            ("0.0.0.0:80", Some("own_endpoint")),
            ("198.18.1.2:15008", Some("own_endpoint")),
            ("198.18.1.2:8080", Some("own_endpoint")),
            ("[::ffff:127.0.0.1]:15001", Some("own_endpoint")),
            ("[::1]:15001", Some("own_endpoint")),
            ("198.18.2.2:8080", None),
            ("198.18.2.2:15008", None),
            ("198.19.0.10:80", None),
        ];
        for (dst, expected) in cases {
            let got = outbound_destination(&pod, listener, addr(dst)).err();
            assert_eq!(got.as_ref().map(Refusal::reason), expected, "{dst}");
        }
    }

    #[test]
    fn inbound_refuses_ztunnel_ports_and_loopback() {
        let ports = Ports::default();
        let cases = [
            ("198.18.1.2:15001", true),
            ("198.18.1.2:15006", true),
            ("198.18.1.2:15008", true),
            ("198.18.1.2:15000", true),
            ("198.18.1.2:15020", true),
            ("198.18.1.2:15021", true),
            ("127.0.0.1:8080", true),
            ("198.18.1.2:8080", false),
            ("198.18.1.2:15007", false),
        ];
        for (dst, refused) in cases {
            assert_eq!(
                inbound_destination(&ports, addr(dst)).is_err(),
                refused,
                "{dst}"
            );
        }
    }

    #[test]
    fn own_sockets_are_known_while_registered() {
        let own = OwnSockets::default();
        let (netns, other) = (NetnsCookie(7), NetnsCookie(8));
        let local = addr("198.18.1.2:40000");
        let registered = own.register(netns, local);
        assert!(own.contains(netns, local));
        assert!(!own.contains(other, local), "another pod's namespace");
        drop(registered);
        assert!(!own.contains(netns, local));
    }
}
