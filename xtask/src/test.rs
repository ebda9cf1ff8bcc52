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
    let before = leftovers(root)?;
    let mut test = cargo(root);
    test.args(["test", "--workspace"]).args(cargo_args);
    // The API server `setup` built (or the one KUBEBUILDER_ASSETS names).
    if let Some(assets) = crate::kube::assets() {
        test.env("KUBEBUILDER_ASSETS", assets);
    }
    run_cmd(&mut test)?;
    let left: Vec<String> = leftovers(root)?
        .into_iter()
        .filter(|item| !before.contains(item))
        .collect();
    if !left.is_empty() {
        bail!("the tests left these behind:\n  {}", left.join("\n  "));
    }
    println!("test: all passed; nothing left behind (namespaces, cgroups, pins, state)");
    Ok(())
}

/// What carries the harness's name prefix right now.
fn leftovers(root: &Path) -> anyhow::Result<Vec<String>> {
    let out = cargo(root)
        .args([
            "run",
            "--quiet",
            "--package",
            "weft-tests",
            "--bin",
            "weft-leftovers",
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "weft-leftovers failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}
