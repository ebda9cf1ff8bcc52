//! Preconditions of privileged tests: checked up front, and a failure (never
//! a skip) with the fix when one is missing.

use std::path::Path;

use crate::topology::cgroup;

/// Panics, naming what is missing and how to get it, unless this process can
/// create network namespaces, cgroups and load BPF programs.
pub fn require_privileged() {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(
            "root: these tests create network namespaces, cgroups and BPF programs; \
             run them as root (`sudo -E cargo xtask test`)"
                .to_owned(),
        );
    }
    if let Err(err) = cgroup::unified_root() {
        missing.push(err.to_string());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push(
            "kernel BTF (/sys/kernel/btf/vmlinux): use a kernel built with CONFIG_DEBUG_INFO_BTF"
                .to_owned(),
        );
    }
    if which("ip").is_none() {
        missing.push(
            "iproute2's `ip`: run `cargo xtask setup` (or apt-get install iproute2)".to_owned(),
        );
    }
    if !missing.is_empty() {
        panic!(
            "this test needs privileges or tools this machine lacks:\n  - {}",
            missing.join("\n  - ")
        );
    }
}

/// The first `name` on `PATH` (plus the sbin directories root's PATH has).
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|candidate| candidate.is_file());
    found
}
