//! ztunnel, Weft's per-node proxy.
//!
//! Data flows like this: the node agent (or `weft local`) hands ztunnel each
//! enrolled pod's network namespace; capture (eBPF by default, iptables as the
//! fallback) steers the pod's TCP into listeners ztunnel opens inside that
//! namespace; outbound connections leave in an HBONE tunnel (HTTP/2 CONNECT
//! over mTLS) to the destination's ztunnel, which checks identity and policy
//! and connects to the application.
//!
//! This crate holds what is specific to the node proxy; what it shares with
//! the waypoint (HBONE, identity, xDS client, metrics) lives in `weft-proxy`.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod authorization;
pub mod capture;
pub mod config;
pub mod connections;
pub mod guard;
pub mod inbound;
pub mod limits;
pub mod local;
pub mod netns;
pub mod outbound;
pub mod pods;
pub mod proxy;
pub mod socket;
pub mod splice;
pub mod telemetry;
pub mod zds;
