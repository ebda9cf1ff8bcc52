//! The delta-ADS client and the handlers that apply each resource type.

pub mod client;
pub mod handlers;

pub use client::{XdsClient, XdsStatus};
pub use handlers::{AddressHandler, AuthorizationHandler, ResourceHandler};
