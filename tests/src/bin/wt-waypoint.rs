//! The waypoint, built as part of this package so end-to-end tests always
//! run the current code (`CARGO_BIN_EXE_wt-waypoint`).

/// mimalloc, as the proxies' many short-lived request allocations are
/// cheaper there than in glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    waypoint::app::main()
}
