//! Traffic capture: getting an enrolled pod's connections into ztunnel.
//!
//! [`iptables`] installs redirect rules in each pod's namespace (the
//! fallback mode); [`ebpf`] loads Weft's kernel programs (embedded at build
//! time) and manages the maps through which pods are enrolled.

pub mod ebpf;
pub mod iptables;
