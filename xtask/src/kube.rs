//! The Kubernetes API server the tests run against.
//!
//! No package registry ships a kube-apiserver, but Debian 12's own
//! `kubernetes` source package (1.20.2, the upstream tree with `vendor/`)
//! builds it offline with Debian's Go 1.19. The source is fetched through a
//! private `deb-src` list (apt's `Dir::Etc` options: the machine's own apt
//! sources are never touched), built once into [`CACHE`] — outside any
//! clone, so every fresh checkout reuses it — and laid out as
//! controller-runtime's envtest expects a `KUBEBUILDER_ASSETS` directory:
//! `kube-apiserver`, `kube-controller-manager` and `etcd` (Debian's
//! `etcd-server`). A `KUBEBUILDER_ASSETS` that already holds an API server
//! and etcd takes precedence.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

/// Where the built server lives.
const CACHE: &str = "/var/cache/weft/kube-1.20.2";

/// The source package and the directory its tarball unpacks to.
const SOURCE_PACKAGE: &str = "kubernetes";
const SOURCE_DIR: &str = "kubernetes-1.20.2";

/// What is built from it.
const BINARIES: &[&str] = &["kube-apiserver", "kube-controller-manager"];

/// Debian's Go 1.19, which the 1.20 tree builds with.
const GO_BIN: &str = "/usr/lib/go-1.19/bin";

/// The vendored `modern-go/reflect2` 1.0.1 does not build with Go 1.19;
/// Debian's packaged 1.0.2 does.
const REFLECT2: &str = "/usr/share/gocode/src/github.com/modern-go/reflect2";

const ETCD: &str = "/usr/bin/etcd";

/// The assets directory the tests should use, if there is one.
pub fn assets() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").map(PathBuf::from) {
        if complete(&dir, &["kube-apiserver", "etcd"]) {
            return Some(dir);
        }
    }
    let cache = PathBuf::from(CACHE);
    complete(
        &cache,
        &["kube-apiserver", "kube-controller-manager", "etcd"],
    )
    .then_some(cache)
}

fn complete(dir: &Path, names: &[&str]) -> bool {
    names.iter().all(|n| dir.join(n).is_file())
}

/// Builds the API server into the cache unless an assets directory exists.
pub fn ensure(root_user: bool) -> anyhow::Result<()> {
    if assets().is_some() {
        return Ok(());
    }
    if !root_user {
        bail!("the tests' kube-apiserver: run `cargo xtask setup` as root to build it into {CACHE} (or set KUBEBUILDER_ASSETS)");
    }
    println!("setup: building kube-apiserver 1.20.2 from Debian's source package into {CACHE} (about 5 minutes, once)");
    let work = PathBuf::from(format!("{CACHE}.build"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let built = build(&work);
    let _ = std::fs::remove_dir_all(&work);
    built?;
    assets().context("the API server was built but the cache is incomplete")?;
    Ok(())
}

fn build(work: &Path) -> anyhow::Result<()> {
    fetch_source(work)?;
    let tree = work.join("src").join(SOURCE_DIR);
    // Debian's reflect2 in place of the vendored one.
    let vendored = tree.join("vendor/github.com/modern-go/reflect2");
    for entry in std::fs::read_dir(&vendored)? {
        let path = entry?.path();
        if matches!(path.extension().and_then(|e| e.to_str()), Some("go" | "s")) {
            std::fs::remove_file(&path)?;
        }
    }
    for entry in std::fs::read_dir(REFLECT2)
        .with_context(|| format!("{REFLECT2} (golang-github-modern-go-reflect2-dev)"))?
    {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if (name.ends_with(".go") && !name.ends_with("_test.go")) || name.ends_with(".s") {
            std::fs::copy(&path, vendored.join(name))?;
        }
    }
    let home = work.join("home");
    std::fs::create_dir_all(&home)?;
    let path = format!("{GO_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    run(Command::new("make")
        .arg(format!(
            "WHAT={}",
            BINARIES
                .iter()
                .map(|b| format!("cmd/{b}"))
                .collect::<Vec<_>>()
                .join(" ")
        ))
        .current_dir(&tree)
        .env("PATH", path)
        .env("HOME", &home)
        .env("GOFLAGS", "-mod=vendor")
        .env("CGO_ENABLED", "0")
        // No git metadata in a source package: say the version.
        .env("KUBE_GIT_VERSION", "v1.20.2")
        .env("KUBE_GIT_TREE_STATE", "clean")
        .env("KUBE_BUILD_PLATFORMS", "linux/amd64"))
    .context("building kube-apiserver")?;
    let cache = Path::new(CACHE);
    std::fs::create_dir_all(cache)?;
    for binary in BINARIES {
        let built = tree.join("_output/bin").join(binary);
        std::fs::copy(&built, cache.join(binary))
            .with_context(|| format!("copying {}", built.display()))?;
    }
    let etcd = cache.join("etcd");
    let _ = std::fs::remove_file(&etcd);
    std::os::unix::fs::symlink(ETCD, &etcd)?;
    Ok(())
}

/// Downloads and unpacks the source package into `work/src`, through a
/// private `deb-src` list.
fn fetch_source(work: &Path) -> anyhow::Result<()> {
    let lists = work.join("lists");
    let cache = work.join("apt-cache");
    std::fs::create_dir_all(lists.join("partial"))?;
    std::fs::create_dir_all(cache.join("archives/partial"))?;
    let list = work.join("sources.list");
    std::fs::write(
        &list,
        format!(
            "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {} bookworm main\n",
            mirror()
        ),
    )?;
    let options = [
        format!("Dir::Etc::SourceList={}", list.display()),
        "Dir::Etc::SourceParts=/dev/null".to_owned(),
        format!("Dir::State::Lists={}", lists.display()),
        format!("Dir::Cache={}", cache.display()),
    ];
    let apt = |args: &[&str], dir: &Path| {
        let mut cmd = Command::new("apt-get");
        for option in &options {
            cmd.args(["-o", option]);
        }
        cmd.args(args).current_dir(dir);
        run(&mut cmd)
    };
    apt(&["update", "-q"], work)?;
    let src = work.join("src");
    std::fs::create_dir_all(&src)?;
    apt(&["source", "--download-only", "-q", SOURCE_PACKAGE], &src)?;
    let tarball = std::fs::read_dir(&src)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".orig.tar.gz"))
        })
        .context("apt-get source fetched no .orig.tar.gz")?;
    run(Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .current_dir(&src))?;
    anyhow::ensure!(
        src.join(SOURCE_DIR).is_dir(),
        "the source package did not unpack to {SOURCE_DIR}"
    );
    Ok(())
}

/// The Debian mirror the machine's own sources name (else deb.debian.org).
fn mirror() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let deb822 = read("/etc/apt/sources.list.d/debian.sources");
    let from_deb822 = deb822.lines().find_map(|l| {
        l.strip_prefix("URIs:")
            .and_then(|v| v.split_whitespace().find(|u| !u.contains("security")))
            .map(str::to_owned)
    });
    let legacy = read("/etc/apt/sources.list");
    let from_legacy = legacy.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("deb"))
            .then(|| words.find(|w| w.starts_with("http")))
            .flatten()
            .filter(|u| !u.contains("security"))
            .map(str::to_owned)
    });
    from_deb822
        .or(from_legacy)
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    anyhow::ensure!(
        status.success(),
        "{:?} failed ({status})",
        cmd.get_program()
    );
    Ok(())
}
