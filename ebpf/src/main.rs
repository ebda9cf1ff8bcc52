//! Weft's kernel programs, one object file loaded by ztunnel.
//!
//! Programs attach once per node: the cgroup ones at the node's pods'
//! parent cgroup, sk_lookup in each enrolled pod's network namespace. Whether a socket is captured is
//! decided by looking its network namespace cookie up in `WEFT_PODS`, so
//! enrolling a pod is a map update, never a program load.
//!
//! - [`connect`]: an enrolled pod's outbound TCP `connect()` goes to
//!   ztunnel's outbound listener on the pod's loopback; the original
//!   destination is kept under the socket's cookie.
//! - [`sockops`]: once such a socket is established, its original
//!   destination is re-keyed by its address, where ztunnel finds it.
//! - [`lookup`]: inbound TCP to an enrolled pod that is not HBONE goes to
//!   ztunnel's plaintext listener; with ztunnel away, it is dropped.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod lookup;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod sockops;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any program that could reach a panic, so this is
    // never executed; it exists only to satisfy `no_std`.
    loop {}
}

/// Host builds (such as `cargo clippy --workspace`) see an empty binary: the
/// programs only exist for the BPF target.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
