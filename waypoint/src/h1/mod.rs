//! HTTP/1.1 spoken by the waypoint itself, where hyper's generality costs
//! more than the request's own work (see [`client`]).

pub mod client;
pub mod codec;
