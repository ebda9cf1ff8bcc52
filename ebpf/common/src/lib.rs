//! The `#[repr(C)]` types that cross the boundary between Weft's kernel programs
//! (`weft-ebpf`, built for `bpfel-unknown-none`) and ztunnel's loader.
//!
//! Both sides compile this crate, so a map's key and value layout is written
//! once. Addresses are kept as the kernel hands them to programs (network
//! byte order, in `u32` words); ports are host-order `u32`s in keys, so both
//! sides build keys the same way. User space converts at the edge with the
//! helpers below.
#![no_std]

/// Map: enrolled pods. Key: network-namespace cookie (`u64`); value:
/// [`PodCapture`]. Enrollment is an insert, release a delete.
pub const ENROLLED_PODS_MAP: &str = "WEFT_PODS";
/// Map: original destinations by the application socket's cookie (`u64`),
/// written by connect4/6 for sockops to move into [`TUPLES_MAP`].
pub const ORIGINAL_DST_MAP: &str = "WEFT_ORIG_DST";
/// Map: original destinations by the application socket's address
/// ([`TupleKey`]): what ztunnel reads for an accepted outbound connection.
pub const TUPLES_MAP: &str = "WEFT_TUPLES";
/// Map (SOCKHASH): ztunnel's inbound plaintext listener, by pod IPv4.
pub const INBOUND_MAP: &str = "WEFT_INBOUND";
/// Map: enrolled pods' IPv4 addresses (`u32`, network order) → 1.
pub const POD_IPS_MAP: &str = "WEFT_POD_IPS";
/// Map: ports (host order, `u32`) that capture leaves alone, both ways.
pub const EXCLUDED_PORTS_MAP: &str = "WEFT_EXCLUDED";
/// Map: ztunnel's own connections to pods' applications while they are
/// being made ([`UpstreamKey`] → 1). They reach the pod through loopback
/// from the client's address, and the kernel reports them as arriving on
/// the pod's interface, so sk_lookup recognises them by this map.
pub const UPSTREAMS_MAP: &str = "WEFT_UPSTREAMS";
/// Map (ARRAY, one `u32`): non-zero makes the programs report their
/// decisions through aya-log (ztunnel's `--bpf-log`).
pub const DEBUG_MAP: &str = "WEFT_DEBUG";

pub const CONNECT4_PROGRAM: &str = "weft_connect4";
pub const CONNECT6_PROGRAM: &str = "weft_connect6";
pub const SOCKOPS_PROGRAM: &str = "weft_sockops";
pub const SK_LOOKUP_PROGRAM: &str = "weft_sk_lookup";

/// The HBONE port: inbound traffic to it is never redirected.
pub const HBONE_PORT: u32 = 15008;

/// Per-pod capture settings, the value of [`ENROLLED_PODS_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodCapture {
    /// ztunnel's outbound listener port inside the pod, network order.
    pub outbound_port_be: u16,
    /// Reserved, zero.
    pub reserved: u16,
    /// The pod's IPv4 address, network order (0 if it has none): the pod
    /// connecting to itself is not captured.
    pub ip4: u32,
}

impl PodCapture {
    /// Capture settings that send the pod's outbound TCP to `port`
    /// (host order) on the pod's own loopback address; `ip4` is the pod's
    /// address in network order.
    pub const fn new(port: u16, ip4: u32) -> Self {
        Self {
            outbound_port_be: port.to_be(),
            reserved: 0,
            ip4,
        }
    }
}

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// Where an application's connection was headed before capture rewrote it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalDst {
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u32,
    /// Port, host order.
    pub port: u32,
    /// The address in network order: IPv4 in word 0, IPv6 in all four.
    pub ip: [u32; 4],
}

impl OriginalDst {
    /// The address as octets (4 for IPv4, 16 for IPv6).
    pub fn octets(&self) -> ([u8; 16], usize) {
        let mut out = [0u8; 16];
        for (i, word) in self.ip.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        (out, if self.family == AF_INET6 { 16 } else { 4 })
    }
}

/// A socket's local address in a namespace: the key of [`TUPLES_MAP`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub netns: u64,
    /// Network order, as [`OriginalDst::ip`].
    pub ip: [u32; 4],
    /// Host order.
    pub port: u32,
    pub family: u32,
}

/// One of ztunnel's connections to an application, as sk_lookup sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamKey {
    /// The application's (pod's) address, network order.
    pub pod_ip: u32,
    /// ztunnel's (transparent) source address, network order.
    pub source_ip: u32,
    /// ztunnel's source port, host order.
    pub source_port: u32,
    /// The application's port, host order: the pass is for this one
    /// connection only, not for any port of the pod from that source.
    pub pod_port: u32,
}

/// Loopback in network order (`user_ip4`): the outbound redirect target.
pub const LOOPBACK_IP4_BE: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// `::1` in network order (`user_ip6` words).
pub const LOOPBACK_IP6_BE: [u32; 4] = [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])];
/// The third word of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), in
/// network order.
pub const V4_MAPPED_WORD_BE: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// The IPv4 address (network order) an IPv6 address (network-order words)
/// maps, if it is IPv4-mapped: what a dual-stack socket connecting to an
/// IPv4 destination carries.
#[inline(always)]
pub fn v4_mapped(ip6: [u32; 4]) -> Option<u32> {
    (ip6[0] == 0 && ip6[1] == 0 && ip6[2] == V4_MAPPED_WORD_BE).then_some(ip6[3])
}

#[cfg(feature = "user")]
mod user {
    use super::{OriginalDst, PodCapture, TupleKey, UpstreamKey};

    // SAFETY: every type is `#[repr(C)]`, `Copy`, made of integers only
    // and has no padding (fields are laid out without gaps), so any bit
    // pattern the kernel writes is a valid value.
    unsafe impl aya::Pod for PodCapture {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OriginalDst {}
    // SAFETY: as above (8 + 16 + 4 + 4 bytes).
    unsafe impl aya::Pod for TupleKey {}
    // SAFETY: as above (4 * 4 bytes).
    unsafe impl aya::Pod for UpstreamKey {}
}
