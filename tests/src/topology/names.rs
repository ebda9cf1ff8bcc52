//! Naming of everything a topology creates, and finding what a dead run left.
//!
//! Every namespace, cgroup and state directory is named
//! `PREFIX-<owner>-<seq>…`. For a test process the owner is its pid, so a
//! later run can tell a leftover of a killed run (owner no longer alive) from
//! a topology another test is using right now. A named owner (such as
//! `weft local`'s) is never reaped automatically; its tool removes it.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use super::{cgroup, netns};

/// The prefix of every name the harness gives.
pub const PREFIX: &str = "wft";

/// Directory for harness state (CNI IPAM data), one subdirectory per topology.
pub const STATE_DIR: &str = "/run/wft";

/// The identity of one topology, the stem of all its names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologyId(String);

impl TopologyId {
    /// A fresh id owned by this process.
    pub fn for_this_process() -> Self {
        Self::for_process(std::process::id())
    }

    /// A fresh id owned by process `pid` (reaped once that process is gone).
    pub fn for_process(pid: u32) -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        Self(format!("{PREFIX}-{pid}-{seq}"))
    }

    /// An id owned by a named tool rather than a process (e.g. "local").
    pub fn named(owner: &str) -> Self {
        Self(format!("{PREFIX}-{owner}-0"))
    }

    /// The id a topology was created with (from its record).
    pub fn from_recorded(id: &str) -> Self {
        Self(id.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of a resource of this topology: `<id>-<part>`.
    pub fn child(&self, part: &str) -> String {
        format!("{}-{part}", self.0)
    }

    /// This topology's state directory.
    pub fn state_dir(&self) -> PathBuf {
        Path::new(STATE_DIR).join(&self.0)
    }
}

/// The owner part of a harness name, if `name` is one.
fn owner_of(name: &str) -> Option<&str> {
    name.strip_prefix(PREFIX)?
        .strip_prefix('-')?
        .split('-')
        .next()
}

/// Whether `name` belongs to a test process that no longer runs.
fn is_orphan(name: &str) -> bool {
    match owner_of(name).map(str::parse::<i32>) {
        Some(Ok(pid)) => !Path::new("/proc").join(pid.to_string()).exists(),
        _ => false,
    }
}

/// Everything carrying the harness prefix that exists right now: network
/// namespaces, cgroups, state directories and bpffs pins. Empty after a
/// clean run.
pub fn leftovers() -> Vec<String> {
    let mut found: Vec<String> = netns::list()
        .into_iter()
        .filter(|name| owner_of(name).is_some())
        .map(|name| format!("network namespace /run/netns/{name}"))
        .collect();
    let mut dirs = vec![PathBuf::from(STATE_DIR), PathBuf::from("/sys/fs/bpf")];
    if let Ok(root) = cgroup::unified_root() {
        dirs.push(root);
    }
    for dir in dirs {
        for name in prefixed_entries(&dir) {
            found.push(dir.join(name).display().to_string());
        }
    }
    found
}

fn prefixed_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .filter_map(|entry| entry.file_name().into_string().ok())
                .filter(|name| owner_of(name).is_some())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes what killed test runs left behind: their processes (via their
/// cgroups), network namespaces, cgroups, state directories and pins.
/// Resources of live processes and of named owners are left alone.
pub fn reap_orphans() {
    if let Err(err) = remove_matching(is_orphan) {
        tracing::warn!(%err, "could not remove every leftover of a killed run");
    }
}

/// Removes everything of the named owner (such as `weft local`'s), running
/// or not.
pub fn remove_owned_by(owner: &str) -> super::error::Result<()> {
    remove_matching(|name| owner_of(name) == Some(owner))
}

fn remove_matching(matches: impl Fn(&str) -> bool) -> super::error::Result<()> {
    let mut first_error = None;
    if let Ok(root) = cgroup::unified_root() {
        for name in prefixed_entries(&root).into_iter().filter(|n| matches(n)) {
            if let Err(err) = cgroup::destroy_tree(&root.join(&name)) {
                first_error.get_or_insert(err);
            }
        }
    }
    for name in netns::list().into_iter().filter(|n| matches(n)) {
        if let Err(err) = netns::delete_named(&name) {
            first_error.get_or_insert(err);
        }
    }
    for dir in [STATE_DIR, "/sys/fs/bpf"] {
        for name in prefixed_entries(Path::new(dir))
            .into_iter()
            .filter(|n| matches(n))
        {
            let path = Path::new(dir).join(&name);
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(source) = removed {
                first_error.get_or_insert(super::error::TopologyError::Io {
                    action: "removing",
                    path,
                    source,
                });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_the_component_after_the_prefix() {
        assert_eq!(owner_of("wft-1234-0-n1"), Some("1234"));
        assert_eq!(owner_of("wft-local-0"), Some("local"));
        assert_eq!(owner_of("wftx-1-2"), None);
        assert_eq!(owner_of("cni0"), None);
    }

    #[test]
    fn a_live_owner_is_not_an_orphan_and_a_named_one_never_is() {
        let mine = TopologyId::for_this_process().child("n1");
        assert!(!is_orphan(&mine));
        assert!(!is_orphan("wft-local-0-n1"));
        // pid_max is at most 2^22, so this pid cannot be running.
        assert!(is_orphan("wft-99999999-0-n1"));
    }
}
