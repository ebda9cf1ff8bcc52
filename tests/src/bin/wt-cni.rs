//! `weft-cni`, built as part of this package so end-to-end tests run the
//! current code (`CARGO_BIN_EXE_wt-cni`; tests link it as `weft-cni`).

fn main() -> std::process::ExitCode {
    weft_node_agent::cni::main()
}
