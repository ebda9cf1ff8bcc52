//! `cargo xtask bench`: builds the benchmarks optimised and runs them.

use std::path::Path;

use crate::{cargo, run_cmd};

pub fn run(root: &Path, cases: &[String]) -> anyhow::Result<()> {
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
