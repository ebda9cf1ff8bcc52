//! Named network namespaces (`/run/netns/NAME`, as `ip netns` makes them).

use std::{fs::File, os::fd::AsFd, os::unix::process::CommandExt, path::PathBuf, process::Command};

use nix::sched::{setns, CloneFlags};

use super::{
    error::{Result, TopologyError},
    exec,
};

const NETNS_DIR: &str = "/run/netns";

/// A network namespace created by the harness; removed by [`NetNs::delete`].
#[derive(Debug)]
pub struct NetNs {
    name: String,
    file: File,
}

impl NetNs {
    /// Creates the namespace `name` with its loopback up.
    pub fn create(name: &str) -> Result<Self> {
        exec::ip(&["netns", "add", name])?;
        let netns = Self::open(name)?;
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Opens an existing named namespace.
    pub fn open(name: &str) -> Result<Self> {
        let path = PathBuf::from(NETNS_DIR).join(name);
        let file =
            File::open(&path).map_err(TopologyError::io("opening network namespace", &path))?;
        Ok(Self {
            name: name.to_owned(),
            file,
        })
    }

    /// The namespace's name under `/run/netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file (what CNI calls `CNI_NETNS`).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// The namespace file, e.g. to hand to ztunnel.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// `ip -n NAME ARGS…`: configure links, addresses and routes inside.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        exec::ip(&full)
    }

    /// Sets a sysctl inside the namespace (`ip netns exec NAME sysctl -w`),
    /// never on the host.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let setting = format!("{key}={value}");
        exec::ip(&["netns", "exec", &self.name, "sysctl", "-q", "-w", &setting])?;
        Ok(())
    }

    /// A command that starts inside this namespace (and nowhere else special).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.try_clone().expect("duplicating a namespace fd");
        // SAFETY: the closure only calls setns(2), which is async-signal-safe,
        // on a descriptor opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
            });
        }
        cmd
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and
    /// returns its result. Sockets created by `f` stay in this namespace
    /// wherever they are used afterwards, so a listener bound here can be
    /// served from any tokio runtime.
    pub fn enter<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                        TopologyError::Setns {
                            netns: self.name.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Removes the namespace; its links go with it.
    pub fn delete(self) -> Result<()> {
        drop(self.file);
        delete_named(&self.name)
    }
}

/// Removes the named namespace, whoever created it.
pub fn delete_named(name: &str) -> Result<()> {
    exec::ip(&["netns", "delete", name]).map(drop)
}

/// Names of all namespaces under `/run/netns`.
pub fn list() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(|entry| entry.ok())
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
