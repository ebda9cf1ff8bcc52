//! `cargo xtask test`: lints, every test, and a leak check.

use std::path::Path;

use anyhow::bail;

use crate::{cargo, run_cmd};

pub fn run(root: &Path, lint: bool, cargo_args: &[String]) -> anyhow::Result<()> {
    if lint {
        run_cmd(cargo(root).args(["fmt", "--all", "--check"]))?;
        run_cmd(cargo(root).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    // Privileged tests fail (never skip) when root or a kernel feature is
    // missing, so a green run means every test really ran.
    // A mesh the developer runs (say, `cargo xtask demo`) is not the tests'.
    let before = weft_tests::topology::leftovers();
    run_cmd(cargo(root).args(["test", "--workspace"]).args(cargo_args))?;
    let left: Vec<String> = weft_tests::topology::leftovers()
        .into_iter()
        .filter(|item| !before.contains(item))
        .collect();
    if !left.is_empty() {
        bail!("the tests left these behind:\n  {}", left.join("\n  "));
    }
    println!("test: all passed; nothing left behind (namespaces, cgroups, pins, state)");
    Ok(())
}
