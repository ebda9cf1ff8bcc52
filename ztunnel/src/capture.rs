//! Traffic capture: getting an enrolled pod's connections into ztunnel.
//!
//! [`ebpf`] loads Weft's kernel programs (embedded at build time) and manages
//! the maps through which pods are enrolled.

pub mod ebpf;
