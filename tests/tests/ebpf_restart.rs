//! Restart safety of eBPF capture: both nodes' ztunnels are SIGKILLed and
//! restarted 20 times while enrolled and unenrolled pods keep connecting.
//! No connection ever bypasses the mesh — the enrolled client's payload
//! never crosses the wire in clear (tshark), and an unenrolled pod that
//! policy refuses never gets a reply from the server — and no BPF program,
//! map or link is left behind by the restarts. `ztunnel uninstall` then
//! removes every one of them.
//!
//! (Its own test binary: it counts the kernel's BPF objects, which no other
//! test may change meanwhile.)

#[macro_use]
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use support::{
    binaries,
    churn::{self, UnderTraffic},
};
use weft_tests::{mesh::Mesh, privilege::require_privileged};

const MARKER: &str = "ENROLLED-CLIENT-PAYLOAD-5d21";

/// The kernel's BPF programs, maps and links of Weft, by kind and name.
fn weft_bpf_objects() -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for program in aya::programs::loaded_programs().flatten() {
        if let Some(name) = program.name_as_str().filter(|n| n.starts_with("weft_")) {
            *counts.entry(format!("program {name}")).or_default() += 1;
        }
    }
    for map in aya::maps::loaded_maps().flatten() {
        if let Some(name) = map.name_as_str().filter(|n| n.starts_with("WEFT_")) {
            *counts.entry(format!("map {name}")).or_default() += 1;
        }
    }
    let weft_programs: Vec<u32> = aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("weft_")))
        .map(|p| p.id())
        .collect();
    for link in aya::programs::loaded_links().flatten() {
        if weft_programs.contains(&link.program_id()) {
            *counts.entry("links".into()).or_default() += 1;
        }
    }
    counts
}

/// The IDs of Weft's BPF programs and maps in the kernel right now.
fn weft_bpf_ids() -> BTreeSet<String> {
    let programs = aya::programs::loaded_programs()
        .flatten()
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("weft_")))
        .map(|p| format!("program {}", p.id()));
    let maps = aya::maps::loaded_maps()
        .flatten()
        .filter(|m| m.name_as_str().is_some_and(|n| n.starts_with("WEFT_")))
        .map(|m| format!("map {}", m.id()));
    programs.chain(maps).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_ztunnel_restarts_under_traffic_never_bypass_and_never_leak() -> anyhow::Result<()> {
    require_privileged();
    // (Objects of an earlier test may still be on their way out.)
    let baseline = weft_bpf_ids();
    let mut mesh = Mesh::start(churn::topology()?, churn::CONFIG, binaries()).await?;
    let target = churn::serve(&mesh).await?;
    let objects = weft_bpf_objects();
    assert_eq!(
        objects.keys().filter(|k| k.starts_with("program")).count(),
        4,
        "connect4, connect6, sockops, sk_lookup: {objects:?}"
    );

    let traffic = UnderTraffic::start(&mesh, target, MARKER).await?;
    for round in 0..20 {
        let node = if round % 2 == 0 { "n1" } else { "n2" };
        tokio::time::sleep(Duration::from_millis(100)).await;
        mesh.restart_ztunnel(node).await?;
    }
    traffic.finish().await?;

    // The restarted ztunnels adopted the pinned programs: nothing leaked,
    // and capture still works.
    assert_eq!(
        weft_bpf_objects(),
        objects,
        "BPF objects before and after 20 restarts"
    );
    churn::check(&mesh, target, "last").await?;
    for node in ["n1", "n2"] {
        let adopted = mesh
            .ztunnel(node)
            .process
            .lines_with(&["adopting the pinned capture programs"]);
        assert!(
            !adopted.is_empty(),
            "{node}'s ztunnel adopted the pins after restarting"
        );
    }

    // With ztunnel stopped for good, `ztunnel uninstall` takes every
    // program, map and link out of the kernel.
    for node in ["n1", "n2"] {
        mesh.kill_ztunnel(node).await?;
        let pins = mesh.topology.bpf_pin_dir(node);
        let out = std::process::Command::new(binaries().ztunnel)
            .arg("uninstall")
            .arg("--bpf-pin-dir")
            .arg(&pins)
            .output()?;
        assert!(
            out.status.success(),
            "ztunnel uninstall: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!pins.exists(), "{} removed", pins.display());
    }
    // The kernel frees unreferenced objects asynchronously.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ours = || -> BTreeSet<String> { weft_bpf_ids().difference(&baseline).cloned().collect() };
    while !ours().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ours(), BTreeSet::new(), "BPF objects left after uninstall");
    Ok(())
}
