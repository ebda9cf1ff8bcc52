//! ztunnel, built as part of this package so end-to-end tests always run
//! the current code (`CARGO_BIN_EXE_wt-ztunnel`).

fn main() -> anyhow::Result<()> {
    ztunnel::app::main()
}
