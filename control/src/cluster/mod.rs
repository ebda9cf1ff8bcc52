//! What the control service does to a cluster, beyond reading it: leader
//! election among its replicas ([`leader`]) and, by the leader only, status
//! written back to the objects it acts on ([`status`]) and the waypoints'
//! own objects ([`waypoints`]), both through one loop ([`reconcile`]).

pub mod ca_secret;
pub mod leader;
pub mod reconcile;
pub mod status;
pub mod waypoints;
