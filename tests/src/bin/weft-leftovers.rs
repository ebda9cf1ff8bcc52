//! `weft-leftovers`: prints, one per line, everything carrying the
//! harness's name prefix (namespaces, cgroups, state, bpffs pins). Used by
//! `cargo xtask test` before and after the suite.

fn main() {
    for item in weft_tests::topology::leftovers() {
        println!("{item}");
    }
}
