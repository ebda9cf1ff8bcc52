//! `weft`, the user's command. Today: `weft local`, which runs a whole mesh
//! on this machine; the control service and ztunnel are built in
//! (`weft control …`, `weft ztunnel …`) so one binary is all local mode
//! needs.

mod local;

use std::{ffi::OsString, path::PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "weft", version, about = "Weft: an ambient service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A mesh on this machine: nodes and pods as network namespaces.
    Local {
        /// Where the local mesh keeps its state.
        #[arg(
            long,
            env = "WEFT_LOCAL_DIR",
            default_value = "/run/weft-local",
            global = true
        )]
        dir: PathBuf,
        #[command(subcommand)]
        command: local::LocalCommand,
    },
    /// Run the control service (as `weft-control`).
    #[command(hide = true, disable_help_flag = true)]
    Control {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run ztunnel (as the `ztunnel` binary).
    #[command(hide = true, disable_help_flag = true)]
    Ztunnel {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Local { dir, command } => {
            let code = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(local::run(dir, command))?;
            std::process::exit(code);
        }
        Command::Control { args } => weft_control::app::main_from(
            std::iter::once(OsString::from("weft-control")).chain(args),
        ),
        Command::Ztunnel { args } => {
            ztunnel::app::main_from(std::iter::once(OsString::from("ztunnel")).chain(args))
        }
    }
}
