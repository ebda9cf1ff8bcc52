//! Helpers shared by this crate's integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;

use anyhow::{bail, Context};
use weft_tests::{apps::ProbeReport, topology::Pod};

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
