//! The waypoint, Weft's optional per-namespace L7 proxy.
//!
//! Data flows like this: a source ztunnel tunnels traffic addressed to a
//! service (or pod) bound to this waypoint over HBONE to the waypoint's
//! 15008, with the original destination as the CONNECT authority
//! ([`inbound`]). The waypoint checks that the destination is bound to it,
//! looks at the tunnel's first bytes and, for HTTP/1.1 or HTTP/2, proxies
//! request by request ([`http`]): it makes the path canonical
//! ([`normalize`]), authorizes the request ([`policy`]), picks the route ([`matcher`], over the
//! [`routes`] the control service compiled from HTTPRoutes), applies its
//! [`filters`], chooses an endpoint of the backend
//! and opens HBONE onward to it, presenting its own identity ([`upstream`]);
//! anything else is carried at L4 ([`tcp`]). HBONE, identities, xDS state
//! and endpoint choice are `weft-proxy`'s, the same code ztunnel runs.

pub mod access_log;
pub mod app;
pub mod backends;
pub mod config;
pub mod cors;
pub mod deadline;
pub mod filters;
pub mod forward;
pub mod framing;
pub mod grpc;
pub mod h1;
pub mod http;
pub mod http_pool;
pub mod inbound;
pub mod matcher;
pub mod mirror;
pub mod normalize;
pub mod policy;
pub mod proxy;
pub mod routes;
pub mod tcp;
pub mod telemetry;
pub mod upstream;
pub mod workers;
