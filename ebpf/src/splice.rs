//! `sk_skb/stream_verdict`: the same-node splice.
//!
//! Attached to `WEFT_SPLICE_SOCKS`, which holds only ztunnel's own sockets,
//! and only once ztunnel has authorized a connection between two pods of
//! this node: what one of its two sockets receives is sent on by the other
//! without waking ztunnel, and counted. Applications' sockets are never in
//! a socket map, so their behaviour (blocking reads included) is the
//! kernel's plain TCP.
//!
//! A socket without a splice entry keeps what it receives (`SK_PASS`), and
//! so does one whose peer is gone: ztunnel then reads it and tears the
//! connection down.

use aya_ebpf::{
    bindings::sk_action::SK_PASS, helpers::bpf_get_socket_cookie, macros::stream_verdict,
    programs::SkBuffContext,
};

use crate::maps::{SPLICES, SPLICE_SOCKS};

#[stream_verdict]
pub fn weft_splice(ctx: SkBuffContext) -> u32 {
    // SAFETY: the helper accepts the skb of an sk_skb program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb as *mut _) };
    let Some(splice) = SPLICES.get_ptr_mut(&cookie) else {
        return SK_PASS;
    };
    // SAFETY: a live map value; one socket's receive path runs one skb at a
    // time, so the count is exact.
    let mut peer = unsafe { (*splice).peer };
    let len = u64::from(ctx.len());
    if SPLICE_SOCKS.redirect_skb(&ctx, &mut peer, 0) == i64::from(SK_PASS) {
        // SAFETY: as above.
        unsafe { (*splice).bytes += len };
    }
    // After a successful redirect, PASS sends the data on through the peer;
    // after a failed one, it keeps the data here.
    SK_PASS
}
