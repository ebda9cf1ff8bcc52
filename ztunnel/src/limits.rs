//! ztunnel's file descriptors, and each pod's share of them.
//!
//! Every connection ztunnel proxies holds one or two descriptors (the
//! accepted socket, the upstream one; tunnels share theirs). ztunnel raises
//! its own limit to the hard limit at start, as a node proxy must, and no
//! enrolled pod may hold more than its share of connections, so one pod
//! opening connections in a loop gets refusals while every other pod keeps
//! working.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use serde::Serialize;

/// A pod's connections are capped at this fraction of ztunnel's open-file
/// limit (whatever `--max-connections-per-pod` says), so that even a low
/// limit leaves room for several pods at their share.
const MAX_SHARE_DIVISOR: u64 = 4;

/// What ztunnel runs with (shown in `/config_dump`).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Limits {
    /// The process's open-file limit (soft, after raising it to the hard one).
    pub open_files: u64,
    /// Connections one pod may hold at once (each side counts: its outbound
    /// connections and the inbound ones to it).
    pub connections_per_pod: usize,
}

impl Limits {
    /// Raises the open-file limit as far as allowed and derives each pod's
    /// share from `configured` (`--max-connections-per-pod`).
    pub fn at_start(configured: usize) -> Self {
        let open_files = raise_open_files();
        let cap = usize::try_from(open_files / MAX_SHARE_DIVISOR).unwrap_or(usize::MAX);
        let connections_per_pod = configured.min(cap).max(1);
        if connections_per_pod < configured {
            tracing::warn!(
                configured,
                open_files,
                connections_per_pod,
                "--max-connections-per-pod is more than a quarter of ztunnel's open-file limit; \
                 capped (raise the limit, e.g. LimitNOFILE or the container runtime's ulimit)"
            );
        }
        Self {
            open_files,
            connections_per_pod,
        }
    }
}

/// Sets the soft open-file limit to the hard one; returns the limit in
/// force afterwards.
fn raise_open_files() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(err) => {
                tracing::warn!(%err, soft, hard, "could not raise the open-file limit");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(err) => {
            tracing::warn!(%err, "could not read the open-file limit");
            1024
        }
    }
}

/// How many connections a pod holds in ztunnel right now.
#[derive(Debug, Default)]
pub struct PodShare {
    open: AtomicUsize,
}

/// One connection's place in its pod's share; given back when dropped.
#[derive(Debug)]
pub struct PodSlot {
    share: Arc<PodShare>,
}

impl PodShare {
    /// Takes a place for one more connection, unless the pod already holds
    /// `limit`.
    pub fn claim(self: &Arc<Self>, limit: usize) -> Option<PodSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| PodSlot {
                share: self.clone(),
            })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for PodSlot {
    fn drop(&mut self) {
        self.share.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_holds_at_most_its_share_and_gets_places_back() {
        let share = Arc::new(PodShare::default());
        let held: Vec<PodSlot> = (0..3).map(|_| share.claim(3).expect("room")).collect();
        assert!(share.claim(3).is_none(), "a fourth connection is refused");
        assert_eq!(share.open(), 3);
        drop(held);
        assert_eq!(share.open(), 0);
        assert!(share.claim(3).is_some());
    }

    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let limits = Limits::at_start(20_000);
        let (soft, hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!(soft, hard);
        assert_eq!(limits.open_files, soft);
        assert!(limits.connections_per_pod as u64 <= soft / MAX_SHARE_DIVISOR);
    }
}
