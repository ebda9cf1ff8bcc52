//! `weft-cni`, the chained CNI plugin (installed into the node's CNI bin
//! directory by the node agent's DaemonSet).

fn main() -> std::process::ExitCode {
    weft_node_agent::cni::main()
}
