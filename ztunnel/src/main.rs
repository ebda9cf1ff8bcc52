//! The `ztunnel` binary; everything lives in the library.

fn main() -> anyhow::Result<()> {
    ztunnel::app::main()
}
