//! The record of a running local mesh, kept between commands.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weft_tests::topology::TopologyRecord;

use super::paths::Paths;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PodState {
    pub uid: String,
    pub service_account: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub topology: TopologyRecord,
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, PodState>,
}

impl State {
    pub fn load(paths: &Paths) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(paths.state()).with_context(|| {
            format!(
                "no local mesh is running (no {}); start one with `weft local up -f DIR`",
                paths.state().display()
            )
        })?;
        serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; `weft local down` cleans up",
                paths.state().display()
            )
        })
    }

    pub fn save(&self, paths: &Paths) -> anyhow::Result<()> {
        let tmp = paths.state().with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, paths.state())?;
        Ok(())
    }
}

/// An exclusive lock on the local mesh for the duration of a command.
pub struct Lock {
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Lock {
    pub fn take(paths: &Paths) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&paths.root)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(paths.lock())?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", paths.lock().display()))?;
        Ok(Self { _lock: lock })
    }
}
