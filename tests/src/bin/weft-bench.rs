//! `weft-bench`: Weft's benchmarks, run by `cargo xtask bench`.
//!
//! Each case measures against a baseline taken in the same run and prints
//! the ratio, because absolute numbers on a shared 2-core machine are
//! noise. Usage: `weft-bench [CASE…]` (default: every case).

use weft_tests::bench;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let run = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let mut ran = 0;
    if run("xds-propagation") {
        bench::xds_propagation::run().await?;
        ran += 1;
    }
    anyhow::ensure!(
        ran > 0,
        "no benchmark called {wanted:?}; known: xds-propagation"
    );
    Ok(())
}
