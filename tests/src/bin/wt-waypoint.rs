//! The waypoint, built as part of this package so end-to-end tests always
//! run the current code (`CARGO_BIN_EXE_wt-waypoint`).

fn main() -> anyhow::Result<()> {
    waypoint::app::main()
}
