//! The `waypoint` binary; everything lives in the library.

/// mimalloc, as the proxies' many short-lived request allocations are
/// cheaper there than in glibc's allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    waypoint::app::main()
}
