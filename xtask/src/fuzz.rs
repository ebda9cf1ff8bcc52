//! `cargo xtask fuzz`: builds the cargo-fuzz targets and runs each for a
//! while from its seed corpus. Any crash fails the run and leaves the input
//! in `fuzz/artifacts/<target>/`.

use std::path::Path;

use crate::run_cmd;

/// Every target in `fuzz/fuzz_targets`.
pub const TARGETS: &[&str] = &[
    "yaml_translate",
    "xds_decode",
    "authz_eval",
    "route_match",
    "l7_policy",
    "path_normalize",
    "zds_decode",
];

pub fn run(root: &Path, seconds: u64) -> anyhow::Result<()> {
    let fuzz_dir = root.join("fuzz");
    let cargo_fuzz = |args: &[&str]| {
        let mut cmd = std::process::Command::new("cargo");
        cmd.current_dir(&fuzz_dir)
            // cargo-fuzz needs nightly flags (sanitizers); the stable
            // toolchain accepts them with RUSTC_BOOTSTRAP.
            .env("RUSTC_BOOTSTRAP", "1")
            .arg("fuzz")
            .args(args);
        cmd
    };
    run_cmd(&mut cargo_fuzz(&["build", "-O"]))?;
    for target in TARGETS {
        // libFuzzer adds what it finds to the first corpus directory; keep
        // the seeds read-only by giving it a scratch one first.
        let scratch = root.join("target").join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&scratch)?;
        let seeds = fuzz_dir.join("corpus").join(target);
        let time = format!("-max_total_time={seconds}");
        run_cmd(
            cargo_fuzz(&["run", "-O", target])
                .arg(&scratch)
                .arg(&seeds)
                .args(["--", &time, "-rss_limit_mb=4096"]),
        )?;
        println!("fuzz: {target}: no crash in {seconds} s");
    }
    Ok(())
}
