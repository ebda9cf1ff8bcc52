//! The node-agent protocol (`weft.nodeagent.v1`): how the CNI plugin, or
//! `weft local`, hands pods to ztunnel.
//!
//! A unix `SOCK_SEQPACKET` socket carries one protobuf message per packet:
//! `Hello`, then `PodRequest`s, each answered by an `Ack`; an `add` carries
//! the pod's network namespace as an `SCM_RIGHTS` descriptor. [`server`] is
//! ztunnel's side, [`client`] the agent's, and [`wire`] the packets.

pub mod client;
pub mod server;
pub mod wire;

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;
