//! What both of Weft's proxies share.
//!
//! A proxy starts by reaching the control service ([`control`]): the
//! [`xds`] client keeps [`state`] (workloads, services, policies) in sync
//! over delta ADS, and the [`identity`] manager obtains and renews the
//! certificates of the workloads it serves from the CA. The data path
//! (HBONE client, server and pool, the copy loop) builds on these, as do the
//! admin and metrics endpoints. ztunnel and the waypoint depend on this
//! crate and never on each other, so none of this is written twice.

pub mod admin;
pub mod authz;
pub mod balance;
pub mod control;
pub mod copy;
pub mod hbone;
pub mod identity;
pub mod log_limit;
pub mod metrics;
pub mod otlp;
pub mod peer_metadata;
pub mod state;
pub mod trace_context;
pub mod xds;
