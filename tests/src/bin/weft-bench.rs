//! `weft-bench`: Weft's benchmarks, run by `cargo xtask bench`.
//!
//! Each case measures against a baseline taken in the same run and prints
//! the ratio, because absolute numbers on a shared 2-core machine are
//! noise. Usage: `weft-bench [CASE…]` (default: every case). The mesh cases
//! need root and the `wt-control` / `wt-ztunnel` binaries beside this one.

use weft_tests::{bench, privilege::require_privileged};

const CASES: &[&str] = &[
    "xds-propagation",
    "authz-eval",
    "throughput",
    "rr-latency",
    "waypoint-l7",
];

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    if let Some(unknown) = wanted.iter().find(|w| !CASES.contains(&w.as_str())) {
        anyhow::bail!(
            "no benchmark called {unknown:?}; known: {}",
            CASES.join(", ")
        );
    }
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    if run("xds-propagation") {
        bench::xds_propagation::run().await?;
    }
    if run("authz-eval") {
        bench::authz::run();
    }
    if run("throughput") || run("rr-latency") {
        require_privileged();
        let exe = std::env::current_exe()?;
        let bin_dir = exe.parent().expect("a binary lives in a directory");
        let bed = bench::l4::setup(bin_dir).await?;
        if run("throughput") {
            bench::l4::throughput(&bed).await?;
        }
        if run("rr-latency") {
            bench::l4::rr_latency(&bed).await?;
        }
    }
    if run("waypoint-l7") {
        require_privileged();
        let exe = std::env::current_exe()?;
        let bin_dir = exe.parent().expect("a binary lives in a directory");
        bench::l7::run(bin_dir).await?;
    }
    Ok(())
}
