//! L4 authorization at the destination: every inbound connection (HBONE,
//! with the peer's identity, or plaintext, without) is decided against the
//! policies that apply to the destination workload, and keeps its
//! attributes in the connections table while it is open.
//!
//! The destination is the enrolled pod the connection arrived for (its
//! listener says which), looked up by who it is — not by its address, which
//! a stale or conflicting pod in the config could also claim.
//!
//! Live re-evaluation: whenever the proxy state changes (a policy, or a
//! workload's list of policies), every open inbound connection is decided
//! again ([`crate::connections::Connections::reevaluate`]); one that would
//! now be denied is closed at once, with the reason in its access-log line.

use std::net::IpAddr;

use weft_proto::spiffe::Identity;
use weft_proxy::authz::{evaluate, Connection, Decision, DenyReason};

use crate::proxy::{PodContext, Proxy};

/// An inbound connection's attributes, kept for re-evaluation.
#[derive(Clone, Debug)]
pub struct Attributes {
    pub src_ip: IpAddr,
    pub src_identity: Option<Identity>,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// The enrolled pod the connection is for: it is decided by the
    /// policies of *that* pod's workload, never by whichever workload the
    /// address happens to belong to in the config.
    pub dst_pod: PodRef,
}

/// Who an enrolled pod is, as the node agent named it.
#[derive(Clone, Debug)]
pub struct PodRef {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The addresses its network namespace holds.
    pub ips: Vec<std::net::IpAddr>,
}

impl PodRef {
    pub fn of(pod: &PodContext) -> Self {
        Self {
            uid: pod.info.uid.clone(),
            namespace: pod.info.namespace.clone(),
            name: pod.info.name.clone(),
            ips: pod.info.ips.clone(),
        }
    }
}

/// Decides a connection to `attrs.dst_pod` (a pod of this node). While the
/// control service has not described the pod, nothing is allowed: its
/// policies (STRICT mTLS among them) are not known yet. A description
/// giving the pod an address its namespace does not hold counts as none.
pub fn decide(proxy: &Proxy, attrs: &Attributes) -> Decision {
    let pod = &attrs.dst_pod;
    let Some(workload) = proxy
        .state
        .workload_for_pod(&pod.uid, &pod.namespace, &pod.name)
        .filter(|w| crate::proxy::unheld_address(w, &pod.ips).is_none())
    else {
        return Decision::Deny {
            reason: DenyReason::UnknownDestination(format!("{}/{}", pod.namespace, pod.name)),
            audited: Vec::new(),
        };
    };
    let policies = proxy
        .state
        .policies_for(&workload.namespace, &workload.authorization_policies);
    evaluate(
        &policies,
        &Connection {
            src_ip: attrs.src_ip,
            src_identity: attrs.src_identity.as_ref(),
            dst_ip: attrs.dst_ip,
            dst_port: attrs.dst_port,
        },
    )
}

/// The attributes of a connection into `pod`.
pub fn attributes(
    pod: &PodContext,
    src_ip: IpAddr,
    src_identity: Option<Identity>,
    dst: std::net::SocketAddr,
) -> Attributes {
    Attributes {
        src_ip,
        src_identity,
        dst_ip: dst.ip(),
        dst_port: dst.port(),
        dst_pod: PodRef::of(pod),
    }
}
