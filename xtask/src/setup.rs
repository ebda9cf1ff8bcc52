//! `cargo xtask setup`: make a fresh Debian 12 machine able to build and
//! test Weft, and say plainly what cannot be fixed from here.
//!
//! Every step first checks whether it is needed, so a second run installs
//! nothing and touches no network.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

/// Debian packages the build, the tests and the benchmarks use, each with a
/// file that shows it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "/usr/sbin/ip"),
    ("iptables", "/usr/sbin/iptables"),
    ("tshark", "/usr/bin/tshark"),
    ("curl", "/usr/bin/curl"),
    ("iperf3", "/usr/bin/iperf3"),
    ("nghttp2-client", "/usr/bin/nghttp"),
    ("wrk", "/usr/bin/wrk"),
    ("nginx", "/usr/sbin/nginx"),
    ("containernetworking-plugins", "/usr/lib/cni/bridge"),
    ("prometheus", "/usr/bin/prometheus"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("util-linux", "/usr/bin/unshare"),
    ("procps", "/usr/sbin/sysctl"),
    // The tests' API server: etcd, and what builds kube-apiserver (`kube`).
    ("etcd-server", "/usr/bin/etcd"),
    ("golang-1.19-go", "/usr/lib/go-1.19/bin/go"),
    (
        "golang-github-modern-go-reflect2-dev",
        "/usr/share/gocode/src/github.com/modern-go/reflect2/reflect2.go",
    ),
    ("rsync", "/usr/bin/rsync"),
    ("jq", "/usr/bin/jq"),
];

/// The cargo-fuzz release known to work with this toolchain.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The bpf-linker release known to work with this toolchain.
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn run(root: &Path) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let root_user = is_root();
    if let Err(err) = apt_packages(root_user) {
        problems.push(format!("{err:#}"));
    }
    if let Err(err) = rust_src() {
        problems.push(format!("{err:#}"));
    }
    if let Err(err) = bpf_linker(root) {
        problems.push(format!("{err:#}"));
    }
    if let Err(err) = cargo_fuzz() {
        problems.push(format!("{err:#}"));
    }
    if let Err(err) = bpffs(root_user) {
        problems.push(format!("{err:#}"));
    }
    // After the packages: it builds with Debian's Go.
    if problems.is_empty() {
        if let Err(err) = crate::kube::ensure(root_user) {
            problems.push(format!("{err:#}"));
        }
    }
    problems.extend(kernel_checks(root_user));
    if problems.is_empty() {
        println!(
            "setup: ready (packages, rust-src, bpf-linker, cargo-fuzz, bpffs, kernel features, kube-apiserver)"
        );
        return Ok(());
    }
    for problem in &problems {
        eprintln!("setup: MISSING {problem}");
    }
    bail!(
        "setup found {} missing piece(s); see the lines above",
        problems.len()
    )
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn apt_packages(root_user: bool) -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, marker)| !Path::new(marker).exists())
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !root_user {
        bail!(
            "packages {}: run `cargo xtask setup` as root to install them",
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    let apt = |args: &[&str]| {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        anyhow::ensure!(
            status.success(),
            "apt-get {} failed ({status})",
            args.join(" ")
        );
        anyhow::Ok(())
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)?;
    let still: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, marker)| !Path::new(marker).exists())
        .map(|(package, _)| *package)
        .collect();
    anyhow::ensure!(
        still.is_empty(),
        "packages {} did not install",
        still.join(" ")
    );
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    if weft_ebpf_build::rust_src_installed() {
        return Ok(());
    }
    println!("setup: rustup component add rust-src");
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src"])
        .status()
        .context("running rustup")?;
    anyhow::ensure!(
        status.success() && weft_ebpf_build::rust_src_installed(),
        "rust-src: `rustup component add rust-src` failed; the eBPF build needs it"
    );
    Ok(())
}

fn bpf_linker(root: &Path) -> anyhow::Result<()> {
    if weft_ebpf_build::check_toolchain().is_ok() {
        return Ok(());
    }
    let sysroot = PathBuf::from(capture(Command::new("rustc").args(["--print", "sysroot"]))?);
    let version = capture(Command::new("rustc").arg("-vV"))?;
    let llvm_major = version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc -vV did not say which LLVM it uses")?
        .to_owned();
    // bpf-linker links against the toolchain's own libLLVM, found through a
    // prefix whose lib/ holds it under its plain name.
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so.* in {}/lib; is this a rustup toolchain?",
                sysroot.display()
            )
        })?;
    let prefix = root.join("target").join("llvm-prefix");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib").join("libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)?;
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm_major} (a few minutes, once)");
    let status = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", sysroot.join("lib").display()),
        )
        .status()
        .context("running cargo install bpf-linker")?;
    anyhow::ensure!(
        status.success(),
        "bpf-linker: cargo install failed ({status})"
    );
    weft_ebpf_build::check_toolchain().context("bpf-linker was installed but does not run")?;
    Ok(())
}

fn cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if installed {
        return Ok(());
    }
    println!("setup: cargo install cargo-fuzz (once)");
    let status = Command::new("cargo")
        .args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ])
        .status()
        .context("running cargo install cargo-fuzz")?;
    anyhow::ensure!(
        status.success(),
        "cargo-fuzz: cargo install failed ({status})"
    );
    Ok(())
}

fn bpffs(root_user: bool) -> anyhow::Result<()> {
    if is_mounted("/sys/fs/bpf", "bpf") {
        return Ok(());
    }
    if !root_user {
        bail!("bpffs is not mounted at /sys/fs/bpf; run setup as root to mount it");
    }
    println!("setup: mounting bpffs at /sys/fs/bpf");
    let status = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .context("running mount")?;
    anyhow::ensure!(
        status.success(),
        "bpffs: `mount -t bpf bpf /sys/fs/bpf` failed ({status})"
    );
    Ok(())
}

fn is_mounted(mountpoint: &str, fstype: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|line| {
            let Some((left, right)) = line.split_once(" - ") else {
                return false;
            };
            left.split_whitespace().nth(4) == Some(mountpoint)
                && right.split_whitespace().next() == Some(fstype)
        })
}

/// Kernel features the tests use, one line per missing one.
fn kernel_checks(root_user: bool) -> Vec<String> {
    let mut missing = Vec::new();
    if !root_user {
        missing.push(
            "root: the tests create network namespaces, cgroups and BPF programs; run as root"
                .into(),
        );
        return missing;
    }
    if let Err(err) = bpf_syscall() {
        missing.push(format!(
            "the bpf() syscall ({err}): use a kernel with CONFIG_BPF_SYSCALL"
        ));
    }
    let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|line| {
            line.split_once(" - ")
                .is_some_and(|(_, r)| r.starts_with("cgroup2 "))
        });
    if !cgroup2 {
        missing.push("cgroup v2 is not mounted: mount it (e.g. at /sys/fs/cgroup/unified)".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        missing.push(
            "kernel BTF (/sys/kernel/btf/vmlinux): use a kernel with CONFIG_DEBUG_INFO_BTF".into(),
        );
    }
    let netns = Command::new("unshare").args(["--net", "true"]).status();
    if !netns.is_ok_and(|s| s.success()) {
        missing.push(
            "network namespaces: `unshare --net true` failed; use a kernel with CONFIG_NET_NS"
                .into(),
        );
    }
    missing
}

/// Creates (and closes) a one-entry BPF array map: proof the syscall works.
fn bpf_syscall() -> std::io::Result<()> {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
    };
    // SAFETY: `attr` is a valid prefix of `union bpf_attr` for BPF_MAP_CREATE
    // and outlives the call; the kernel zero-extends the missing fields.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just returned to us.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn capture(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(out.status.success(), "{cmd:?} failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
