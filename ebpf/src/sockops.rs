//! `sockops`: where ztunnel finds a captured connection's original
//! destination.
//!
//! Attached at the pods' cgroup. When an application socket that connect4/6
//! captured is established (`ACTIVE_ESTABLISHED`), its original destination
//! is moved from the socket's storage to under its own address, which
//! ztunnel sees as the peer of the connection it accepted (and takes out
//! when it does).

use core::ptr::{null_mut, read_volatile};

use aya_ebpf::{
    bindings::BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
    helpers::{bpf_get_netns_cookie, bpf_sk_storage_delete, bpf_sk_storage_get},
    macros::sock_ops,
    programs::SockOpsContext,
};
use weft_ebpf_common::{v4_mapped, OriginalDst, TupleKey, AF_INET, AF_INET6};

use crate::maps::{original_dst_map, TUPLES};

#[sock_ops]
pub fn weft_sockops(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        established(&ctx);
    }
    0
}

fn established(ctx: &SockOpsContext) {
    let ops = ctx.ops;
    // SAFETY: the sock_ops context is valid for the call.
    let sk = unsafe { read_volatile(&(*ops).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return;
    }
    // SAFETY: `sk` is the context's socket, checked non-null.
    let stored = unsafe { bpf_sk_storage_get(original_dst_map(), sk.cast(), null_mut(), 0) }
        as *const OriginalDst;
    if stored.is_null() {
        return;
    }
    // SAFETY: a non-null storage pointer is valid for the program's run;
    // the value is copied out before the storage is deleted.
    let original = unsafe { read_volatile(stored) };
    // SAFETY: the sock_ops context is valid for the call.
    let netns = unsafe { bpf_get_netns_cookie(ops as *mut _) };
    // Every field is read with a volatile load: the verifier only accepts
    // context loads at constant offsets, and this keeps the compiler from
    // turning a choice between fields into pointer arithmetic.
    // SAFETY: the fields are readable in sock_ops programs.
    let (family, local_ip4, local_port, local_ip6) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_ip4),
            read_volatile(&(*ops).local_port),
            [
                read_volatile(&(*ops).local_ip6[0]),
                read_volatile(&(*ops).local_ip6[1]),
                read_volatile(&(*ops).local_ip6[2]),
                read_volatile(&(*ops).local_ip6[3]),
            ],
        )
    };
    // ztunnel accepted the connection on its IPv4 listener when the
    // application's dual-stack socket connected to a mapped address, so the
    // key is the IPv4 one it sees.
    let (family, ip) = match (family == AF_INET6).then(|| v4_mapped(local_ip6)) {
        Some(None) => (AF_INET6, local_ip6),
        Some(Some(ip4)) => (AF_INET, [ip4, 0, 0, 0]),
        None => (family, [local_ip4, 0, 0, 0]),
    };
    let key = TupleKey {
        netns,
        ip,
        port: local_port,
        family,
    };
    let _ = TUPLES.insert(&key, &original, 0);
    // SAFETY: as above; the storage is not used after this.
    unsafe { bpf_sk_storage_delete(original_dst_map(), sk.cast()) };
}
