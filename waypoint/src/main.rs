//! The `waypoint` binary; everything lives in the library.

fn main() -> anyhow::Result<()> {
    waypoint::app::main()
}
