//! ZDS (`istio.workload.zds`): how a node agent hands the pods of its node
//! to ztunnel, wire compatible with Istio's, so that Istio's CNI agent can
//! drive Weft's ztunnel and Weft's node agent can drive Istio's.
//!
//! The node agent listens on a unix `SOCK_SEQPACKET` socket
//! ([`DEFAULT_SOCKET`]); ztunnel connects and says hello; the agent sends a
//! snapshot (an `add` per pod, with the pod's network namespace as the one
//! `SCM_RIGHTS` descriptor, or a `keep`; then `snapshot_sent`) and then
//! changes; ztunnel acks each. [`wire`] carries the datagrams,
//! [`messages`] turns them into [`messages::Request`]s and back, and
//! [`agent`] is the node agent's server. ztunnel's side is `ztunnel::zds`.

pub mod agent;
pub mod messages;
pub mod wire;

/// Where Istio's node agent listens, and so where ztunnel looks by default.
pub const DEFAULT_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";
