//! HTTP/1.1 spoken by the waypoint itself, where hyper's generality costs
//! more than the request's own work: requests read from clients
//! ([`server`]) and sent to upstreams ([`client`]).

pub mod client;
pub mod codec;
pub mod server;
