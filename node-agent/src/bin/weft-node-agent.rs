//! `weft-node-agent`, the node agent.

fn main() -> anyhow::Result<()> {
    weft_node_agent::app::main()
}
