//! `cargo xtask`: Weft's build orchestration.
//!
//! - `setup`: installs and checks what building and testing need (idempotent;
//!   a second run takes seconds and needs no network);
//! - `build-ebpf`: builds the kernel programs;
//! - `test`: setup, then lints and every test, then a check that nothing the
//!   harness made is left behind;
//! - `demo`: builds everything and shows the system at work;
//! - `fuzz`: the fuzz targets, for a while each;
//! - `bench`: the benchmarks, as ratios to same-run baselines.

mod bench;
mod demo;
mod fuzz;
mod kube;
mod setup;
mod test;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, test and demo Weft")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the packages and toolchain pieces Weft needs, and check the kernel.
    Setup,
    /// Build the eBPF programs (target bpfel-unknown-none).
    BuildEbpf {
        /// Build without optimisations (the verifier may reject the result).
        #[arg(long)]
        debug: bool,
    },
    /// Run setup, the lints and every test.
    Test {
        /// Skip `cargo fmt --check` and clippy.
        #[arg(long)]
        no_lint: bool,
        /// Seconds each fuzz target runs (0 skips fuzzing).
        #[arg(long, default_value_t = 15)]
        fuzz_seconds: u64,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
    /// Build everything and show Weft at work on a local topology.
    Demo,
    /// Build the fuzz targets and run each for a while.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Run the benchmarks (all, or the named cases), printing ratios to
    /// baselines measured in the same run.
    Bench { cases: Vec<String> },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    match cli.command {
        Command::Setup => setup::run(&root),
        Command::BuildEbpf { debug } => {
            let mut build = weft_ebpf_build::EbpfBuild::new(&root);
            build.release = !debug;
            let object = build.run()?;
            println!("{}", object.display());
            Ok(())
        }
        Command::Test {
            no_lint,
            fuzz_seconds,
            cargo_args,
        } => {
            setup::run(&root)?;
            test::run(&root, !no_lint, &cargo_args)?;
            if fuzz_seconds > 0 {
                fuzz::run(&root, fuzz_seconds)?;
            }
            Ok(())
        }
        Command::Fuzz { seconds } => {
            setup::run(&root)?;
            fuzz::run(&root, seconds)
        }
        Command::Demo => {
            setup::run(&root)?;
            demo::run(&root)
        }
        Command::Bench { cases } => {
            setup::run(&root)?;
            bench::run(&root, &cases)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Runs `cmd` in the workspace, failing with its command line if it fails.
fn run_cmd(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .map_err(|err| anyhow::anyhow!("running {cmd:?}: {err}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok(())
}

fn cargo(root: &Path) -> std::process::Command {
    let mut cmd =
        std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root);
    cmd
}
