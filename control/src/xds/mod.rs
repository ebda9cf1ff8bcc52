//! The delta-ADS server and the versioned resource store behind it.

pub mod server;
pub mod store;

pub use server::{ClientStatus, XdsServer};
pub use store::{XdsSnapshot, XdsStore};
