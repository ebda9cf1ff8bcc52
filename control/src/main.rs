//! The `weft-control` binary; everything lives in the library.

fn main() -> anyhow::Result<()> {
    weft_control::app::main()
}
