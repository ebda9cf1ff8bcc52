//! Builds the kernel programs from `ebpf/` and hands their object to the
//! crate (`OUT_DIR/weft-ebpf.o`), so the loader always embeds programs built
//! from the sources of this very checkout. A missing eBPF toolchain fails the
//! build with the command that installs it.

use std::{env, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace_root = manifest_dir
        .parent()
        .expect("ztunnel lives one level below the workspace root")
        .to_path_buf();
    let build = weft_ebpf_build::EbpfBuild::new(workspace_root);
    for input in build.inputs() {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-env-changed=PATH");
    let object = match build.run() {
        Ok(object) => object,
        Err(err) => {
            eprintln!("error: {err}");
            panic!("ztunnel needs its eBPF programs: {err}");
        }
    };
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("weft-ebpf.o");
    std::fs::copy(&object, &out)
        .unwrap_or_else(|err| panic!("copying {} to {}: {err}", object.display(), out.display()));
}
