//! Builds the `weft-ebpf` object file.
//!
//! Two callers share this one recipe: ztunnel's build script, which embeds the
//! object so that a plain `cargo build` always carries programs compiled from
//! the current sources, and `cargo xtask build-ebpf`. The recipe is a nested
//! `cargo build` for `bpfel-unknown-none` with `-Z build-std=core` (enabled on
//! the stable toolchain through `RUSTC_BOOTSTRAP=1`), linked by `bpf-linker`.
//! When a piece of that toolchain is missing the build fails with the command
//! that installs it; it never falls back to an old or empty object.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

/// The BPF target triple Weft's programs are built for.
pub const TARGET: &str = "bpfel-unknown-none";
/// The package name of the kernel programs.
pub const PACKAGE: &str = "weft-ebpf";

/// Why the kernel programs could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "bpf-linker is not installed (or does not run): the eBPF programs cannot be linked; \
         run `cargo xtask setup` to build it against this toolchain's LLVM"
    )]
    MissingLinker,
    #[error(
        "the rust-src component is missing, so `core` cannot be built for {TARGET}; \
         run `cargo xtask setup` (or `rustup component add rust-src`)"
    )]
    MissingRustSrc,
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building the eBPF programs failed ({status}); the compiler output above says why")]
    Failed { status: std::process::ExitStatus },
    #[error("the eBPF build reported success but left no object at {0}")]
    NoObject(PathBuf),
}

/// What to build and where.
#[derive(Clone, Debug)]
pub struct EbpfBuild {
    /// The workspace root (the directory holding the top-level Cargo.toml).
    pub workspace_root: PathBuf,
    /// Cargo target directory for the nested build; kept apart from the host
    /// build's so the two never contend for one lock or invalidate each other.
    pub target_dir: PathBuf,
    /// Build with the `release` profile (the default; BPF programs are always
    /// optimised, as the verifier rejects much unoptimised code).
    pub release: bool,
}

impl EbpfBuild {
    /// The usual settings for a workspace rooted at `workspace_root`.
    pub fn new(workspace_root: impl Into<PathBuf>) -> Self {
        let workspace_root = workspace_root.into();
        let target_dir = workspace_root.join("target").join("ebpf");
        Self {
            workspace_root,
            target_dir,
            release: true,
        }
    }

    /// Where the object file lands after [`EbpfBuild::run`].
    pub fn object_path(&self) -> PathBuf {
        let profile = if self.release { "release" } else { "debug" };
        self.target_dir.join(TARGET).join(profile).join(PACKAGE)
    }

    /// Source paths whose change requires a rebuild (for `rerun-if-changed`).
    pub fn inputs(&self) -> Vec<PathBuf> {
        let ebpf = self.workspace_root.join("ebpf");
        vec![
            ebpf.join("Cargo.toml"),
            ebpf.join("src"),
            ebpf.join("common").join("Cargo.toml"),
            ebpf.join("common").join("src"),
            self.workspace_root.join("Cargo.lock"),
        ]
    }

    /// Checks the toolchain, then builds; returns the object's path.
    pub fn run(&self) -> Result<PathBuf, BuildError> {
        check_toolchain()?;
        let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&self.workspace_root)
            .args(["build", "--package", PACKAGE, "--target", TARGET])
            .args(["-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(&self.target_dir);
        if self.release {
            cmd.arg("--release");
        }
        scrub_outer_cargo_env(&mut cmd);
        // BTF (`--btf`) lets aya relocate field offsets against the running
        // kernel and lets bpftool show the programs' source lines.
        let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| env::consts::ARCH.into());
        let rustflags = [
            format!("--cfg=bpf_target_arch=\"{arch}\""),
            "-Cdebuginfo=2".into(),
            "-Clink-arg=--btf".into(),
        ]
        .join("\x1f");
        cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env("RUSTC_BOOTSTRAP", "1");
        let status = cmd.status().map_err(|source| BuildError::Spawn {
            command: format!("{} build --package {PACKAGE}", cargo.to_string_lossy()),
            source,
        })?;
        if !status.success() {
            return Err(BuildError::Failed { status });
        }
        let object = self.object_path();
        if !object.is_file() {
            return Err(BuildError::NoObject(object));
        }
        Ok(object)
    }
}

/// A nested cargo must not inherit the settings cargo hands a build script
/// for the *host* build (its rustflags, wrappers, or target selection).
fn scrub_outer_cargo_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let inherited = key.starts_with("CARGO_CFG_")
            || key.starts_with("CARGO_FEATURE_")
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("DEP_");
        if inherited
            || matches!(
                key,
                "RUSTFLAGS"
                    | "CARGO_ENCODED_RUSTFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "CARGO_BUILD_TARGET"
                    | "CARGO_TARGET_DIR"
                    | "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "OUT_DIR"
                    | "TARGET"
                    | "HOST"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
            )
        {
            cmd.env_remove(key);
        }
    }
}

/// Fails fast, with the fix, when the eBPF toolchain is incomplete.
pub fn check_toolchain() -> Result<(), BuildError> {
    let linker_runs = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    if !linker_runs {
        return Err(BuildError::MissingLinker);
    }
    if !rust_src_installed() {
        return Err(BuildError::MissingRustSrc);
    }
    Ok(())
}

/// Whether the toolchain's `rust-src` component (the source of `core`) exists.
pub fn rust_src_installed() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let Ok(out) = Command::new(rustc).args(["--print", "sysroot"]).output() else {
        return false;
    };
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core/Cargo.toml")
        .is_file()
}
