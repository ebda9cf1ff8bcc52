//! The node agent, built as part of this package so end-to-end tests run
//! the current code (`CARGO_BIN_EXE_wt-node-agent`).

fn main() -> anyhow::Result<()> {
    weft_node_agent::app::main()
}
