//! Working inside a pod's network namespace from ztunnel's own.
//!
//! ztunnel creates its sockets for a pod (listeners, tunnels, upstream
//! connections) inside the pod's network namespace, so they carry the pod's
//! addresses; a socket stays in the namespace it was created in wherever it
//! is used afterwards. [`InpodNetns::run`] switches the calling thread into
//! the pod's namespace for the duration of a closure that only creates
//! sockets, then switches back.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, OwnedFd},
    os::unix::{fs::MetadataExt, process::CommandExt},
    sync::Arc,
};

use nix::sched::{setns, CloneFlags};

/// ztunnel's own network namespace, captured at start.
pub fn own_netns() -> io::Result<Arc<OwnedFd>> {
    Ok(Arc::new(File::open("/proc/thread-self/ns/net")?.into()))
}

/// A pod's network namespace.
#[derive(Debug)]
pub struct InpodNetns {
    pod: OwnedFd,
    own: Arc<OwnedFd>,
    inode: u64,
}

impl InpodNetns {
    pub fn new(pod: OwnedFd, own: Arc<OwnedFd>) -> io::Result<Self> {
        let inode = File::from(pod.try_clone()?).metadata()?.ino();
        Ok(Self { pod, own, inode })
    }

    /// The namespace's inode: equal inodes are the same namespace.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.pod
    }

    /// Runs `f` with the calling thread inside the pod's namespace. `f`
    /// must not block or await: it runs on a runtime worker thread.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> io::Result<R> {
        setns(self.pod.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        let result = f();
        if let Err(err) = setns(self.own.as_fd(), CloneFlags::CLONE_NEWNET) {
            // A worker thread left in a pod's namespace would open later
            // sockets in the wrong place: never continue from here.
            eprintln!("ztunnel: cannot return to its own network namespace: {err}; aborting");
            std::process::abort();
        }
        Ok(result)
    }

    /// A command that runs inside the pod's namespace.
    pub fn command(&self, program: &str) -> io::Result<std::process::Command> {
        let mut cmd = std::process::Command::new(program);
        let fd = self.pod.try_clone()?;
        // SAFETY: the closure only calls setns(2), which is async-signal-safe,
        // on a descriptor duplicated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
        Ok(cmd)
    }
}

/// The addresses of the calling thread's network namespace that a pod is
/// reached at: every interface's but loopback's and link-local ones. Run it
/// inside the pod's namespace ([`InpodNetns::run`]).
pub fn pod_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    use std::net::IpAddr;
    let mut ips: Vec<IpAddr> = nix::ifaddrs::getifaddrs()?
        .filter_map(|ifa| {
            let address = ifa.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => {
                !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified()
            }
        })
        .collect();
    ips.sort();
    ips.dedup();
    Ok(ips)
}
