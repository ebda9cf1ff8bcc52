//! `sk_lookup`: inbound plaintext capture, attached in each enrolled pod's
//! network namespace.
//!
//! A TCP connection arriving from outside the pod for the pod's address, to
//! any port but HBONE's and the excluded ones, is given to ztunnel's
//! plaintext listener for that address. (Traffic to 127.0.0.0/8 and the pod
//! connecting to its own address are not inbound.) The accepted socket keeps
//! the original destination as its local address. ztunnel's own
//! connections to the application (from the client's address, through
//! loopback, yet reported as arriving on the pod's interface) are known by
//! their source in `WEFT_UPSTREAMS` and pass. If the pod is enrolled
//! but no listener is there (ztunnel restarting), the connection is dropped
//! rather than reaching the application unchecked. IPv6, which ztunnel
//! does not carry, is dropped too (except on loopback and excluded ports).

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use aya_log_ebpf::info;
use weft_ebpf_common::{UpstreamKey, AF_INET, HBONE_PORT};

use crate::maps::{debug, EXCLUDED_PORTS, INBOUND, POD_IPS, UPSTREAMS};

const IPPROTO_TCP: u32 = 6;
/// The loopback interface's index in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

#[sk_lookup]
pub fn weft_sk_lookup(ctx: SkLookupContext) -> u32 {
    let l = ctx.lookup;
    // SAFETY: the sk_lookup context is valid for the call; the verifier
    // checks the field reads.
    let (family, protocol, local_ip, local_port, ifindex, remote_ip, remote_port) = unsafe {
        (
            read_volatile(&(*l).family),
            read_volatile(&(*l).protocol),
            read_volatile(&(*l).local_ip4),
            read_volatile(&(*l).local_port),
            read_volatile(&(*l).ingress_ifindex),
            read_volatile(&(*l).remote_ip4),
            read_volatile(&(*l).remote_port),
        )
    };
    if protocol != IPPROTO_TCP || ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    // SAFETY: reading map values.
    if unsafe { EXCLUDED_PORTS.get(&local_port) }.is_some() {
        return SK_PASS;
    }
    // ztunnel carries IPv4 only: IPv6 arriving at an enrolled pod is
    // refused rather than let through uncaptured.
    if family != AF_INET {
        if debug() {
            info!(
                &ctx,
                "sk_lookup: IPv6 connection to port {} dropped, ztunnel carries IPv4 only",
                local_port
            );
        }
        return SK_DROP;
    }
    // The pod talking to itself (its own address on both ends) is not
    // inbound traffic.
    if local_port == HBONE_PORT || remote_ip == local_ip {
        return SK_PASS;
    }
    // ztunnel's own connection to the application.
    let upstream = UpstreamKey {
        pod_ip: local_ip,
        source_ip: remote_ip,
        // `remote_port` holds the network-order port in its low 16 bits.
        source_port: u32::from(u16::from_be(remote_port as u16)),
        // `local_port` is already in host order.
        pod_port: local_port,
    };
    // SAFETY: reading a map value.
    if unsafe { UPSTREAMS.get(&upstream) }.is_some() {
        return SK_PASS;
    }
    if INBOUND.redirect_sk_lookup(&ctx, local_ip, 0).is_ok() {
        if debug() {
            info!(
                &ctx,
                "sk_lookup: {:i} to {:i}:{} captured",
                u32::from_be(remote_ip),
                u32::from_be(local_ip),
                local_port
            );
        }
        return SK_PASS;
    }
    // SAFETY: reading a map value.
    if unsafe { POD_IPS.get(&local_ip) }.is_some() {
        if debug() {
            info!(
                &ctx,
                "sk_lookup: {:i} to {:i}:{} dropped, ztunnel is not listening",
                u32::from_be(remote_ip),
                u32::from_be(local_ip),
                local_port
            );
        }
        SK_DROP
    } else {
        SK_PASS
    }
}
