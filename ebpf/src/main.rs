//! Weft's kernel programs, one object file loaded by ztunnel.
//!
//! Programs are attached once per node at the pods' parent cgroup; whether a
//! given socket is captured is decided by a map lookup on its network
//! namespace cookie, so enrolling a pod is a map update, never a program load.
//!
//! - [`connect4`]: rewrites an enrolled pod's outbound TCP `connect()` to
//!   ztunnel's outbound listener on the pod's loopback and records the
//!   original destination under the socket's cookie.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod connect4;

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
