//! `cgroup/connect4`: outbound capture for enrolled pods.
//!
//! The program runs for every IPv4 `connect()` made by a process in (or
//! below) the cgroup it is attached to. It rewrites the destination only when
//! all of these hold, and otherwise lets the call through untouched:
//! - the socket is TCP (UDP and others are not captured);
//! - the socket's network namespace is in [`ENROLLED`] (the pod is enrolled);
//! - the destination is not loopback (pod-local traffic, and the redirect
//!   target itself, stay direct).
//!
//! ztunnel's own sockets are never seen here: ztunnel runs outside the pods'
//! cgroup, and a socket belongs to the cgroup of the task that created it.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock_addr, map},
    maps::{HashMap, LruHashMap},
    programs::SockAddrContext,
};
use weft_ebpf_common::{OriginalDst, PodCapture, LOOPBACK_IP4_BE};

const SOCK_STREAM: u32 = 1;
/// Verdict that lets the `connect()` proceed (to the possibly rewritten address).
const ALLOW: i32 = 1;
/// Verdict that fails the `connect()` with `EPERM`.
const DENY: i32 = 0;

#[map(name = "WEFT_PODS")]
static ENROLLED: HashMap<u64, PodCapture> = HashMap::with_max_entries(16_384, 0);

#[map(name = "WEFT_ORIG_DST")]
static ORIGINAL_DST: LruHashMap<u64, OriginalDst> = LruHashMap::with_max_entries(65_536, 0);

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(()) => ALLOW,
        // An enrolled pod's connection that cannot be captured fails closed:
        // letting it through would bypass the mesh's mTLS and policy.
        Err(_) => DENY,
    }
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), i64> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands the program a valid `bpf_sock_addr` for the
    // duration of the call; the verifier checks every field access.
    let (sock_type, dst_ip_be, dst_port_raw) =
        unsafe { ((*sa).type_, (*sa).user_ip4, (*sa).user_port) };
    if sock_type != SOCK_STREAM {
        return Ok(());
    }
    // SAFETY: `bpf_get_netns_cookie` accepts the sock_addr context.
    let netns = unsafe { bpf_get_netns_cookie(sa as *mut _) };
    // SAFETY: the value is only read, and copied out before any map update.
    let Some(pod) = (unsafe { ENROLLED.get(&netns) }).copied() else {
        return Ok(());
    };
    if dst_ip_be.to_ne_bytes()[0] == 127 {
        return Ok(());
    }
    // SAFETY: `bpf_get_socket_cookie` accepts the sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(sa as *mut _) };
    let original = OriginalDst {
        ip4_be: dst_ip_be,
        // `user_port` holds the 16-bit network-order port in its low half.
        port_be: dst_port_raw as u16,
        reserved: 0,
    };
    ORIGINAL_DST.insert(&cookie, &original, 0)?;
    // SAFETY: `user_ip4` and `user_port` are writable for connect4 programs.
    unsafe {
        (*sa).user_ip4 = LOOPBACK_IP4_BE;
        (*sa).user_port = u32::from(pod.outbound_port_be);
    }
    Ok(())
}
