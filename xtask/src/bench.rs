//! `cargo xtask bench`: builds the benchmarks optimised and runs them.

use std::path::Path;

use crate::{cargo, run_cmd};

pub fn run(root: &Path, cases: &[String]) -> anyhow::Result<()> {
    // Every binary of the package: the mesh cases run `wt-control` and
    // `wt-ztunnel` from beside `weft-bench`, so they must be as fresh.
    run_cmd(cargo(root).args([
        "build",
        "--release",
        "--quiet",
        "--package",
        "weft-tests",
        "--bins",
    ]))?;
    run_cmd(
        cargo(root)
            .args([
                "run",
                "--release",
                "--quiet",
                "--package",
                "weft-tests",
                "--bin",
                "weft-bench",
                "--",
            ])
            .args(cases),
    )
}
