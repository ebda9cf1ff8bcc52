//! `cargo xtask demo`: the tour of what Weft does today.

use std::path::Path;

use crate::{cargo, run_cmd};

pub fn run(root: &Path) -> anyhow::Result<()> {
    run_cmd(cargo(root).args(["build", "--workspace", "--all-targets"]))?;
    run_cmd(cargo(root).args([
        "run",
        "--quiet",
        "--package",
        "weft-tests",
        "--example",
        "two-nodes",
    ]))
}
