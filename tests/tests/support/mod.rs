//! Helpers shared by this crate's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::{net::SocketAddr, path::Path};

use anyhow::{bail, Context};
use weft_tests::{
    apps::ProbeReport,
    mesh::{cluster::NodeBinaries, Binaries, Source},
    topology::Pod,
};

pub mod churn;
pub mod shop;

/// The control service and ztunnel built from this checkout.
pub fn binaries() -> Binaries<'static> {
    Binaries {
        control: Path::new(env!("CARGO_BIN_EXE_wt-control")),
        ztunnel: Path::new(env!("CARGO_BIN_EXE_wt-ztunnel")),
    }
}

/// The mesh on a Kubernetes cluster, with the node agent and plugin built
/// from this checkout.
pub fn cluster() -> Source<'static> {
    Source::Kubernetes(NodeBinaries {
        node_agent: Path::new(env!("CARGO_BIN_EXE_wt-node-agent")),
        cni: Path::new(env!("CARGO_BIN_EXE_wt-cni")),
    })
}

/// Runs `weft-probe connect ADDR --send TEXT` as a process of `pod` and
/// returns its report.
pub async fn probe(pod: &Pod, addr: SocketAddr, text: &str) -> anyhow::Result<ProbeReport> {
    let mut cmd = pod.command(env!("CARGO_BIN_EXE_weft-probe"))?;
    cmd.args(["connect", &addr.to_string(), "--send", text]);
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .context("running weft-probe")?;
    if !out.status.success() {
        bail!(
            "weft-probe in {} to {addr} failed: {}",
            pod.qualified_name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    ProbeReport::parse(&out.stdout).with_context(|| {
        format!(
            "weft-probe printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A shell loop, as a process of `pod`, connecting to `addr` with `text`
/// over and over; it prints each reply it gets.
pub fn traffic(pod: &Pod, addr: SocketAddr, text: &str) -> anyhow::Result<tokio::process::Child> {
    let script =
        format!("while :; do \"$0\" connect {addr} --send {text} 2>/dev/null; sleep 0.02; done");
    let mut cmd = pod.command("sh")?;
    cmd.args(["-c", &script, env!("CARGO_BIN_EXE_weft-probe")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    Ok(tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()?)
}

/// Transmitted bytes of `link` in `netns`, from the kernel's counters.
pub fn tx_bytes(netns: &weft_tests::topology::NetNs, link: &str) -> u64 {
    let out = netns
        .ip(&["-s", "-j", "link", "show", link])
        .unwrap_or_else(|err| panic!("reading counters of {link}: {err}"));
    let json: serde_json::Value = serde_json::from_str(&out).expect("ip -j prints JSON");
    json[0]["stats64"]["tx"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no tx byte counter for {link} in {out}"))
}

/// Runs each of the named `async fn name(CaptureMode) -> anyhow::Result<()>`
/// as two tests, `iptables::name` and `ebpf::name`.
#[allow(unused_macros)]
macro_rules! in_both_capture_modes {
    ($($test:ident),* $(,)?) => {
        mod iptables {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> anyhow::Result<()> {
                    super::$test(ztunnel::capture::CaptureMode::Iptables).await
                }
            )*
        }
        mod ebpf {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> anyhow::Result<()> {
                    super::$test(ztunnel::capture::CaptureMode::Ebpf).await
                }
            )*
        }
    };
}

/// Runs each test of `both: [...]` (`async fn name(CaptureMode, Source) ->
/// anyhow::Result<()>`) in both capture modes on a YAML directory
/// (`iptables::name`, `ebpf::name`) and on a Kubernetes cluster
/// (`cluster::iptables::name`, `cluster::ebpf::name`); each of
/// `directory_only: [...]` (`async fn name(CaptureMode)`) in both capture
/// modes on the directory.
#[allow(unused_macros)]
macro_rules! in_both_capture_modes_and_sources {
    (both: [$($test:ident),* $(,)?], directory_only: [$($only:ident),* $(,)?] $(,)?) => {
        mod iptables {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> anyhow::Result<()> {
                    super::$test(
                        ztunnel::capture::CaptureMode::Iptables,
                        weft_tests::mesh::Source::Directory,
                    )
                    .await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $only() -> anyhow::Result<()> {
                    super::$only(ztunnel::capture::CaptureMode::Iptables).await
                }
            )*
        }
        mod ebpf {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() -> anyhow::Result<()> {
                    super::$test(
                        ztunnel::capture::CaptureMode::Ebpf,
                        weft_tests::mesh::Source::Directory,
                    )
                    .await
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $only() -> anyhow::Result<()> {
                    super::$only(ztunnel::capture::CaptureMode::Ebpf).await
                }
            )*
        }
        mod cluster {
            mod iptables {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() -> anyhow::Result<()> {
                        super::super::$test(
                            ztunnel::capture::CaptureMode::Iptables,
                            crate::support::cluster(),
                        )
                        .await
                    }
                )*
            }
            mod ebpf {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $test() -> anyhow::Result<()> {
                        super::super::$test(
                            ztunnel::capture::CaptureMode::Ebpf,
                            crate::support::cluster(),
                        )
                        .await
                    }
                )*
            }
        }
    };
}

/// A `weft-probe` that has connected and sent, and holds the connection
/// open until [`HeldProbe::finish`].
pub struct HeldProbe {
    child: tokio::process::Child,
}

impl HeldProbe {
    /// Starts the probe as a process of `pod`; returns once it connected and
    /// sent `text`.
    pub async fn start(pod: &Pod, addr: SocketAddr, text: &str) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = pod.command(env!("CARGO_BIN_EXE_weft-probe"))?;
        cmd.args(["connect", &addr.to_string(), "--send", text, "--hold"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .context("running weft-probe")?;
        let stdout = child.stdout.as_mut().expect("piped");
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await?;
        if line.trim() != "connected" {
            bail!("weft-probe to {addr} did not connect (it printed {line:?})");
        }
        Ok(Self { child })
    }

    /// Lets the probe half-close, read the reply and report.
    pub async fn finish(mut self) -> anyhow::Result<ProbeReport> {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "weft-probe failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text.lines().last().unwrap_or_default();
        ProbeReport::parse(last.as_bytes()).with_context(|| format!("weft-probe printed {text:?}"))
    }
}

/// Waits (up to 10 s) for a line in `z`'s output holding all of `needles`.
pub async fn logged(
    z: &weft_tests::processes::ZtunnelProcess,
    needles: &[&str],
) -> anyhow::Result<String> {
    weft_tests::processes::eventually(
        &format!("a log line with {needles:?}"),
        std::time::Duration::from_secs(10),
        || async { z.process.lines_with(needles).into_iter().next() },
    )
    .await
}

/// Runs an unmodified `curl -sS URL` as a process of `pod`; its body.
pub async fn curl(pod: &Pod, url: &str) -> anyhow::Result<String> {
    let mut cmd = pod.command("curl")?;
    cmd.args(["-sS", "--max-time", "10", url]);
    let out = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .output()
        .await
        .context("running curl (is it installed? `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "curl {url} in {} failed: {}",
            pod.qualified_name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
