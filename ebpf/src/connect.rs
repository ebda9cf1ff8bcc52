//! `cgroup/connect4` and `cgroup/connect6`: outbound capture.
//!
//! The destination is rewritten only when all of these hold, and otherwise
//! the call goes through untouched:
//! - the socket is TCP;
//! - its network namespace is enrolled;
//! - the destination is not loopback or the pod's own address, and its port
//!   is not excluded.
//!
//! The original destination is kept in the socket's own storage, where
//! `sockops` finds it once the connection is established.
//!
//! A dual-stack socket's IPv4-mapped destination (`::ffff:a.b.c.d`) is an
//! IPv4 destination: it is recorded as such and sent to the mapped loopback,
//! ztunnel's IPv4 listener.
//!
//! ztunnel's own sockets are never seen here: ztunnel runs outside the pods'
//! cgroup, and a socket belongs to the cgroup of the task that created it.

use core::ptr::write_volatile;

use aya_ebpf::{
    bindings::bpf_sock_addr, helpers::bpf_get_netns_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::info;
use weft_ebpf_common::{
    v4_mapped, OriginalDst, AF_INET, AF_INET6, LOOPBACK_IP4_BE, LOOPBACK_IP6_BE, V4_MAPPED_WORD_BE,
};

use crate::maps::{debug, ENROLLED, EXCLUDED_PORTS, ORIGINAL_DST};

const SOCK_STREAM: u32 = 1;
/// Lets the `connect()` proceed (to the possibly rewritten address).
const ALLOW: i32 = 1;
/// Fails the `connect()` with `EPERM`.
const DENY: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn weft_connect4(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, capture(&ctx, AF_INET))
}

#[cgroup_sock_addr(connect6)]
pub fn weft_connect6(ctx: SockAddrContext) -> i32 {
    verdict(&ctx, capture(&ctx, AF_INET6))
}

fn verdict(ctx: &SockAddrContext, result: Result<(), i64>) -> i32 {
    match result {
        Ok(()) => ALLOW,
        // An enrolled pod's connection that cannot be captured fails
        // closed: letting it through would bypass the mesh.
        Err(code) => {
            if debug() {
                info!(
                    ctx,
                    "connect: refused, original destination not recorded ({})", code
                );
            }
            DENY
        }
    }
}

fn capture(ctx: &SockAddrContext, family: u32) -> Result<(), i64> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: the kernel hands the program a valid `bpf_sock_addr` for the
    // duration of the call; the verifier checks every field access.
    let (sock_type, port_raw) = unsafe { ((*sa).type_, (*sa).user_port) };
    if sock_type != SOCK_STREAM {
        return Ok(());
    }
    // SAFETY: `bpf_get_netns_cookie` accepts the sock_addr context.
    let netns = unsafe { bpf_get_netns_cookie(sa as *mut _) };
    // SAFETY: the value is only read, and copied out before any update.
    let Some(pod) = (unsafe { ENROLLED.get(&netns) }).copied() else {
        return Ok(());
    };
    // `user_port` holds the 16-bit network-order port in its low half.
    let port = u32::from(u16::from_be(port_raw as u16));
    // SAFETY: reading a map value.
    if unsafe { EXCLUDED_PORTS.get(&port) }.is_some() {
        return Ok(());
    }
    // The destination as it goes on the wire: a dual-stack socket's
    // IPv4-mapped destination (`::ffff:a.b.c.d`, Java's default) is IPv4.
    let mut ip = [0u32; 4];
    let mut wire_family = family;
    if family == AF_INET {
        // SAFETY: `user_ip4` is readable in connect4 programs.
        ip[0] = unsafe { (*sa).user_ip4 };
    } else {
        // SAFETY: `user_ip6` is readable in connect6 programs.
        let ip6 = unsafe { (*sa).user_ip6 };
        match v4_mapped(ip6) {
            Some(ip4) => {
                wire_family = AF_INET;
                ip[0] = ip4;
            }
            None if ip6 == LOOPBACK_IP6_BE => return Ok(()),
            None => ip = ip6,
        }
    }
    if wire_family == AF_INET && (ip[0].to_ne_bytes()[0] == 127 || ip[0] == pod.ip4) {
        return Ok(());
    }
    let mut original = OriginalDst {
        family: wire_family,
        port,
        ip,
    };
    // In the socket's own storage (created now, or the one a failed earlier
    // connect of the same socket left): it goes with the socket.
    // SAFETY: the context's socket is valid for the call.
    let stored = unsafe { ORIGINAL_DST.get_or_insert_ptr_mut(ctx, Some(&mut original)) };
    if stored.is_null() {
        return Err(-12);
    }
    // SAFETY: a non-null storage pointer is valid for the program's run.
    unsafe { write_volatile(stored, original) };
    // SAFETY: the destination fields are writable in connect programs.
    // Every store is volatile and at a constant offset from the context
    // pointer itself, which is all the verifier accepts: the compiler must
    // not merge two branches' stores into one through a computed address.
    unsafe {
        if family == AF_INET {
            write_volatile(&mut (*sa).user_ip4, LOOPBACK_IP4_BE);
        } else if wire_family == AF_INET {
            // A mapped destination goes to the mapped loopback, where
            // ztunnel's IPv4 listener is.
            write_volatile(&mut (*sa).user_ip6[3], LOOPBACK_IP4_BE);
            write_volatile(&mut (*sa).user_ip6[2], V4_MAPPED_WORD_BE);
            write_volatile(&mut (*sa).user_ip6[1], 0);
            write_volatile(&mut (*sa).user_ip6[0], 0);
        } else {
            write_volatile(&mut (*sa).user_ip6[0], LOOPBACK_IP6_BE[0]);
            write_volatile(&mut (*sa).user_ip6[1], LOOPBACK_IP6_BE[1]);
            write_volatile(&mut (*sa).user_ip6[2], LOOPBACK_IP6_BE[2]);
            write_volatile(&mut (*sa).user_ip6[3], LOOPBACK_IP6_BE[3]);
        }
        (*sa).user_port = u32::from(pod.outbound_port_be);
    }
    if debug() {
        if wire_family == AF_INET {
            info!(
                ctx,
                "connect: netns {} to {:i}:{} captured",
                netns,
                u32::from_be(ip[0]),
                port
            );
        } else {
            info!(ctx, "connect: netns {} to [IPv6]:{} captured", netns, port);
        }
    }
    Ok(())
}
