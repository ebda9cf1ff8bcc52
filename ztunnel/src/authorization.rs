//! L4 authorization at the destination: every inbound connection (HBONE,
//! with the peer's identity, or plaintext, without) is decided against the
//! policies that apply to the destination workload, and keeps its
//! attributes in the connections table while it is open.
//!
//! Live re-evaluation: whenever the proxy state changes (a policy, or a
//! workload's list of policies), every open inbound connection is decided
//! again ([`crate::connections::Connections::reevaluate`]); one that would
//! now be denied is closed at once, with the reason in its access-log line.

use std::net::IpAddr;

use weft_proto::spiffe::Identity;
use weft_proxy::authz::{evaluate, Connection, Decision};

use crate::proxy::{PodContext, Proxy};

/// An inbound connection's attributes, kept for re-evaluation.
#[derive(Clone, Debug)]
pub struct Attributes {
    pub src_ip: IpAddr,
    pub src_identity: Option<Identity>,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    /// The destination pod's namespace (for namespace-scoped policies when
    /// the control service has not described the workload yet).
    pub dst_namespace: String,
}

/// Decides a connection to `attrs.dst_ip` (a workload of this node).
pub fn decide(proxy: &Proxy, attrs: &Attributes) -> Decision {
    let (namespace, selected) = match proxy.state.workload_by_ip(attrs.dst_ip) {
        Some(w) => (w.namespace.clone(), w.authorization_policies.clone()),
        None => (attrs.dst_namespace.clone(), Vec::new()),
    };
    let policies = proxy.state.policies_for(&namespace, &selected);
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
        dst_namespace: pod.info.namespace.clone(),
    }
}
