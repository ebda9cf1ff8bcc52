//! The control service, built as part of this package so end-to-end tests
//! always run the current code (`CARGO_BIN_EXE_wt-control`).

fn main() -> anyhow::Result<()> {
    weft_control::app::main()
}
