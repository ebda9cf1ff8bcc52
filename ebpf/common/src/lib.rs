//! The `#[repr(C)]` types that cross the boundary between Weft's kernel programs
//! (`weft-ebpf`, built for `bpfel-unknown-none`) and ztunnel's loader.
//!
//! Both sides compile this crate, so a map's key and value layout is written
//! once. Addresses and ports are kept in network byte order, exactly as the
//! kernel hands them to a `cgroup/connect4` program, so the kernel side never
//! converts; user space converts at the edge with the helpers below.
#![no_std]

/// Name of the map of enrolled pods: key = network-namespace cookie (`u64`),
/// value = [`PodCapture`]. Enrollment is an insert, release a delete.
pub const ENROLLED_PODS_MAP: &str = "WEFT_PODS";

/// Name of the map of original destinations: key = socket cookie (`u64`) of
/// the application's socket, value = [`OriginalDst`].
pub const ORIGINAL_DST_MAP: &str = "WEFT_ORIG_DST";

/// Name of the `cgroup/connect4` program in the object file.
pub const CONNECT4_PROGRAM: &str = "weft_connect4";

/// Per-pod capture settings, the value of [`ENROLLED_PODS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodCapture {
    /// ztunnel's outbound listener port inside the pod's network namespace,
    /// network byte order.
    pub outbound_port_be: u16,
    /// Reserved, zero. Keeps the value 8-byte sized for future flags.
    pub reserved: [u8; 6],
}

impl PodCapture {
    /// Capture settings that send the pod's outbound TCP to `port`
    /// (host byte order) on the pod's own loopback address.
    pub const fn outbound_to(port: u16) -> Self {
        Self {
            outbound_port_be: port.to_be(),
            reserved: [0; 6],
        }
    }
}

/// Where an application's connection was headed before capture rewrote it,
/// the value of [`ORIGINAL_DST_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalDst {
    /// IPv4 address, network byte order (as in `bpf_sock_addr.user_ip4`).
    pub ip4_be: u32,
    /// Port, network byte order.
    pub port_be: u16,
    /// Reserved, zero.
    pub reserved: u16,
}

impl OriginalDst {
    /// The IPv4 address as host-order octets.
    pub const fn ip4_octets(&self) -> [u8; 4] {
        // `ip4_be` holds the address bytes in memory order; reading them back
        // with native endianness recovers the wire octets on any host.
        self.ip4_be.to_ne_bytes()
    }

    /// The port in host byte order.
    pub const fn port(&self) -> u16 {
        u16::from_be(self.port_be)
    }
}

/// Loopback address in network byte order, as the kernel stores it in
/// `user_ip4`: the target of every outbound rewrite.
pub const LOOPBACK_IP4_BE: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

#[cfg(feature = "user")]
mod user {
    use super::{OriginalDst, PodCapture};

    // SAFETY: both types are `#[repr(C)]`, `Copy`, contain only integers and
    // have no padding (every byte is a named field), so any bit pattern the
    // kernel writes is a valid value.
    unsafe impl aya::Pod for PodCapture {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OriginalDst {}
}
