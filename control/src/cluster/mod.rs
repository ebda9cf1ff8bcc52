//! What the control service does to a cluster, beyond reading it: leader
//! election among its replicas ([`leader`]) and, by the leader only, status
//! written back to the objects it acts on ([`status`]) and the waypoints'
//! own objects ([`waypoints`]).

pub mod ca_secret;
pub mod leader;
pub mod status;
pub mod waypoints;
