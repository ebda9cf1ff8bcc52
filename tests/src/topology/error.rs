//! Errors of the topology harness.

use std::{io, path::PathBuf};

/// What went wrong while building or tearing down a topology.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("could not run `{command}`: {source}; is it installed? (`cargo xtask setup`)")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering network namespace {netns}: {source}")]
    Setns {
        netns: String,
        #[source]
        source: nix::Error,
    },
    #[error("CNI plugin `{plugin}` {command} for pod {pod} failed: {message}")]
    Cni {
        plugin: String,
        command: &'static str,
        pod: String,
        message: String,
    },
    #[error(
        "the CNI plugins (bridge, host-local, loopback) are not installed in {dir}; \
         run `cargo xtask setup` (Debian package containernetworking-plugins)"
    )]
    CniMissing { dir: PathBuf },
    #[error("cgroup v2 is not mounted (looked in /proc/self/mountinfo); mount it or boot with systemd.unified_cgroup_hierarchy=1")]
    NoCgroup2,
    #[error("topology: {0}")]
    Invalid(String),
}

pub type Result<T, E = TopologyError> = std::result::Result<T, E>;

impl TopologyError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
