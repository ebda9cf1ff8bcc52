//! `weft`, the user's command: install Weft, enroll namespaces, deploy
//! waypoints, inspect ztunnels, and run a whole mesh on one machine
//! (`weft local`). Subcommands arrive with the parts they drive.

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    match std::env::args().nth(1).as_deref() {
        None | Some("--version" | "-V" | "version") => println!("weft {version}"),
        Some(other) => {
            eprintln!(
                "weft {version}: unknown command {other:?}; this build knows only `weft --version`"
            );
            std::process::exit(2);
        }
    }
}
