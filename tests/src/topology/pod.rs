//! A pod: a network namespace plus a cgroup, with helpers to run things
//! inside it.

use std::{future::Future, net::Ipv4Addr, path::Path, process::Command};

use super::{cgroup::Cgroup, cni::Attachment, error::Result, netns::NetNs};

/// A pod of the topology.
#[derive(Debug)]
pub struct Pod {
    namespace: String,
    name: String,
    node: String,
    netns: NetNs,
    cgroup: Cgroup,
    ip: Ipv4Addr,
    attachment: Option<Attachment>,
}

impl Pod {
    pub(super) fn new(
        namespace: &str,
        name: &str,
        node: &str,
        netns: NetNs,
        cgroup: Cgroup,
    ) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            netns,
            cgroup,
            ip: Ipv4Addr::UNSPECIFIED,
            attachment: None,
        }
    }

    pub(super) fn restore(
        namespace: &str,
        name: &str,
        node: &str,
        netns: NetNs,
        cgroup: Cgroup,
        ip: Ipv4Addr,
        attachment: Option<Attachment>,
    ) -> Self {
        let mut pod = Self::new(namespace, name, node, netns, cgroup);
        pod.set_network(ip, attachment);
        pod
    }

    pub(super) fn set_network(&mut self, ip: Ipv4Addr, attachment: Option<Attachment>) {
        self.ip = ip;
        self.attachment = attachment;
    }

    pub(super) fn attachment(&self) -> Option<&Attachment> {
        self.attachment.as_ref()
    }

    pub(super) fn into_netns(self) -> NetNs {
        self.netns
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `namespace/name`.
    pub fn qualified_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The node the pod runs on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The pod's IP address (on its `eth0`).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    /// The pod's cgroup v2 directory.
    pub fn cgroup(&self) -> &Path {
        self.cgroup.path()
    }

    /// Process ids currently in the pod's cgroup.
    pub fn pids(&self) -> Vec<i32> {
        self.cgroup.pids()
    }

    /// The CNI result for the pod, when the CNI plugins networked it.
    pub fn cni_result(&self) -> Option<&serde_json::Value> {
        self.attachment.as_ref().map(|a| &a.result)
    }

    /// A command that runs as a process of this pod: inside its network
    /// namespace and its cgroup (so cgroup BPF programs see it). Use
    /// `tokio::process::Command::from` for an async child.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let mut cmd = self.netns.command(program);
        self.cgroup.confine(&mut cmd)?;
        Ok(cmd)
    }

    /// Runs `f` on a thread inside the pod's network namespace (see
    /// [`NetNs::enter`]). A thread cannot join another cgroup v2 than its
    /// process's, so this is the way to make listeners and sockets for the
    /// test itself; use [`Pod::command`] for traffic that must originate from
    /// the pod's cgroup.
    pub fn enter<R, F>(&self, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        self.netns.enter(f)
    }

    /// Runs the future made by `make` on a dedicated thread inside the pod's
    /// network namespace, with its own tokio runtime, so every socket it opens
    /// at any time lives in the pod. (Network namespace only; see
    /// [`Pod::enter`] on cgroups.)
    pub fn spawn<F, Fut>(&self, make: F) -> Result<PodTask<Fut::Output>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + 'static,
        Fut::Output: Send + 'static,
    {
        let netns = self
            .netns
            .file()
            .try_clone()
            .map_err(super::error::TopologyError::io(
                "duplicating the namespace of",
                self.netns.path(),
            ))?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let name = format!("pod-{}", self.qualified_name());
        let netns_name = self.netns.name().to_owned();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                use std::os::fd::AsFd;
                nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|err| panic!("entering {netns_name}: {err}"));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a pod task runtime");
                let output = runtime.block_on(make());
                let _ = done_tx.send(output);
            })
            .map_err(super::error::TopologyError::io(
                "spawning a thread for",
                self.netns.path(),
            ))?;
        Ok(PodTask {
            done: done_rx,
            thread: Some(thread),
        })
    }
}

/// A future running inside a pod (see [`Pod::spawn`]).
#[derive(Debug)]
pub struct PodTask<T> {
    done: tokio::sync::oneshot::Receiver<T>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T> PodTask<T> {
    /// Waits for the future's output. Panics if the future panicked, with
    /// its panic.
    pub async fn join(mut self) -> T {
        match (&mut self.done).await {
            Ok(output) => output,
            Err(_) => {
                let thread = self.thread.take().expect("joined once");
                match thread.join() {
                    Err(panic) => std::panic::resume_unwind(panic),
                    Ok(()) => unreachable!("the task thread exits only after sending its output"),
                }
            }
        }
    }
}
