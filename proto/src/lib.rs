//! Weft's wire protocols: the `.proto` files and the Rust generated from
//! them — xDS transport (delta ADS), Istio's workload API (Address,
//! Authorization), the CA service, the node-agent protocol, and the L7
//! resources for waypoints.
//!
//! Generated types stay in this crate; every other crate converts them once,
//! at its edge, into its own domain types. (Populated by the control-service
//! work.)
