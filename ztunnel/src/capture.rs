//! Traffic capture: getting an enrolled pod's connections into ztunnel.
//!
//! Two modes, one interface: [`ebpf`] (the default where the kernel has the
//! hooks) and [`iptables`] (the fallback). Pods are enrolled and released
//! through [`Capture`], and the proxy code asks it for a connection's
//! original destination; nothing else knows which mode is active.
//!
//! Both modes share one piece of iptables: the transparent-reply routing
//! (mangle `CONNMARK` and a policy route) that brings the application's
//! replies to ztunnel's transparent upstream sockets back to ztunnel.

pub mod ebpf;
pub mod iptables;

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
    sync::Mutex,
};

use tokio::net::TcpStream;

use crate::{config::Config, netns::InpodNetns, proxy::Ports};
use ebpf::{EbpfCapture, EbpfError, EbpfOptions, NetnsCookie};

/// The capture mode asked for (`--capture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureMode {
    /// eBPF where the kernel allows, else iptables.
    Auto,
    Ebpf,
    Iptables,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(transparent)]
    Iptables(#[from] iptables::IptablesError),
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error(
        "eBPF capture needs the node's pods' cgroup (--pods-cgroup) and ztunnel's own \
         cgroup v2 directory; {0}"
    )]
    NoCgroup(String),
}

/// The mode in use, and its state.
pub struct Capture {
    mode: Mode,
    ports: Ports,
    excluded: Vec<u16>,
    /// Why `auto` fell back to iptables, if it did: shown in readiness,
    /// `/config_dump` and `weft status`, not only in a log line.
    fallback: Option<String>,
}

enum Mode {
    Iptables,
    Ebpf(Box<Mutex<EbpfCapture>>),
}

/// Ends an upstream's pass through inbound capture when dropped.
struct PassGuard<'a> {
    ebpf: &'a Mutex<EbpfCapture>,
    app: SocketAddr,
    source: SocketAddr,
}

impl Drop for PassGuard<'_> {
    fn drop(&mut self) {
        self.ebpf
            .lock()
            .expect("capture lock")
            .end_upstream(self.app, self.source);
    }
}

/// A pod as capture needs it.
pub struct PodNetwork<'a> {
    pub netns: &'a InpodNetns,
    pub cookie: NetnsCookie,
    pub ips: &'a [IpAddr],
    /// ztunnel's inbound plaintext listener inside the pod.
    pub plaintext_listener: BorrowedFd<'a>,
}

/// Where the cgroup v2 hierarchy is mounted.
pub fn cgroup_root() -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
}

/// This process's own cgroup v2 directory.
pub fn own_cgroup() -> Option<PathBuf> {
    let line = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = line.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(cgroup_root()?.join(path.trim_start_matches('/')))
}

fn ebpf_options(config: &Config) -> Result<EbpfOptions, CaptureError> {
    let pods_cgroup = config
        .pods_cgroup
        .clone()
        .ok_or_else(|| CaptureError::NoCgroup("no --pods-cgroup was given".into()))?;
    let ztunnel_cgroup = own_cgroup().ok_or_else(|| {
        CaptureError::NoCgroup("ztunnel's own cgroup v2 directory was not found".into())
    })?;
    Ok(EbpfOptions {
        pin_dir: config.bpf_pin_dir.clone(),
        pods_cgroup,
        ztunnel_cgroup,
        excluded_ports: config.capture_exclude_ports.clone(),
        log: config.bpf_log,
    })
}

impl Capture {
    /// Sets up the mode asked for; in `auto`, falls back to iptables with
    /// one clear message when eBPF capture is unavailable.
    pub fn start(config: &Config, ports: Ports) -> Result<Self, CaptureError> {
        let ebpf = || -> Result<Mode, CaptureError> {
            let capture = EbpfCapture::start(&ebpf_options(config)?)?;
            if config.bpf_log {
                capture.forward_log()?;
            }
            Ok(Mode::Ebpf(Box::new(Mutex::new(capture))))
        };
        let mut fallback = None;
        let mode = match config.capture {
            CaptureMode::Iptables => Mode::Iptables,
            CaptureMode::Ebpf => ebpf()?,
            CaptureMode::Auto => ebpf().unwrap_or_else(|err| {
                tracing::warn!(%err, "capture: iptables, because eBPF capture is unavailable");
                fallback = Some(err.to_string());
                Mode::Iptables
            }),
        };
        let capture = Self {
            mode,
            ports,
            excluded: config.capture_exclude_ports.clone(),
            fallback,
        };
        tracing::info!(
            mode = capture.name(),
            excluded_ports = ?capture.excluded,
            "capture ready"
        );
        Ok(capture)
    }

    /// Why `--capture auto` runs iptables instead of eBPF, if it does.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }

    pub fn name(&self) -> &'static str {
        match self.mode {
            Mode::Iptables => "iptables",
            Mode::Ebpf(_) => "ebpf",
        }
    }

    fn ebpf(&self) -> Option<std::sync::MutexGuard<'_, EbpfCapture>> {
        self.ebpf_capture()
            .map(|ebpf| ebpf.lock().expect("capture lock"))
    }

    /// Starts capturing a pod whose listeners exist. Blocking (it runs
    /// iptables in the pod's namespace).
    pub fn enroll(&self, pod: &PodNetwork<'_>) -> Result<(), CaptureError> {
        let redirects = iptables::Redirects {
            outbound: self.ports.outbound,
            inbound_plaintext: self.ports.inbound_plaintext,
            hbone: self.ports.hbone,
            excluded: self.excluded.clone(),
        };
        match self.ebpf() {
            None => iptables::install(pod.netns, Some(&redirects))?,
            Some(mut ebpf) => {
                iptables::install(pod.netns, None)?;
                ebpf.enroll(
                    pod.cookie,
                    pod.netns.fd().as_fd(),
                    pod.ips,
                    self.ports.outbound,
                    pod.plaintext_listener,
                )?;
            }
        }
        Ok(())
    }

    /// Puts an enrolled pod's capture back in place (its map entries, in
    /// eBPF mode; iptables rules live in the pod's own namespace, where no
    /// other pod can touch them). Blocking.
    pub fn restore(&self, pod: &PodNetwork<'_>) -> Result<(), CaptureError> {
        if let Some(mut ebpf) = self.ebpf() {
            ebpf.enroll(
                pod.cookie,
                pod.netns.fd().as_fd(),
                pod.ips,
                self.ports.outbound,
                pod.plaintext_listener,
            )?;
        }
        Ok(())
    }

    /// Stops capturing a pod's new connections; established ones keep
    /// working (their reply routing stays). Blocking.
    pub fn release(
        &self,
        netns: &InpodNetns,
        cookie: NetnsCookie,
        ips: &[IpAddr],
    ) -> Result<(), CaptureError> {
        match self.ebpf() {
            Some(mut ebpf) => Ok(ebpf.release(cookie, ips)?),
            None => Ok(iptables::uninstall_redirects(netns)?),
        }
    }

    /// Forgets pods enrolled before a restart that are gone now.
    pub fn retain(
        &self,
        cookies: &HashSet<NetnsCookie>,
        ips: &HashSet<IpAddr>,
    ) -> Result<(), CaptureError> {
        if let Some(mut ebpf) = self.ebpf() {
            ebpf.retain(cookies, ips)?;
        }
        Ok(())
    }

    /// Where an outbound connection captured from the pod was headed.
    pub fn outbound_original_dst(
        &self,
        netns: NetnsCookie,
        stream: &TcpStream,
    ) -> io::Result<SocketAddr> {
        match self.ebpf() {
            None => crate::socket::original_dst(stream),
            Some(mut ebpf) => {
                let peer = stream.peer_addr()?;
                ebpf.original_dst(netns, peer)
                    .map_err(io::Error::other)?
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("capture recorded no original destination for {peer}"),
                        )
                    })
            }
        }
    }

    /// Where an inbound plaintext connection was headed.
    pub fn inbound_original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        match self.mode {
            Mode::Iptables => crate::socket::original_dst(stream),
            // sk_lookup hands the connection over without rewriting it.
            Mode::Ebpf(_) => stream.local_addr(),
        }
    }

    /// Connects ztunnel's transparent `socket` (bound to `source`) to the
    /// application at `app`, letting it through inbound capture.
    pub async fn connect_upstream(
        &self,
        socket: tokio::net::TcpSocket,
        source: SocketAddr,
        app: SocketAddr,
    ) -> io::Result<TcpStream> {
        let Some(ebpf) = self.ebpf_capture() else {
            return socket.connect(app).await;
        };
        ebpf.lock()
            .expect("capture lock")
            .pass_upstream(app, source)
            .map_err(io::Error::other)?;
        // The pass ends with the attempt, even one given up half-way.
        let _pass = PassGuard { ebpf, app, source };
        socket.connect(app).await
    }

    /// How many BPF attachments are in place (0 in iptables mode).
    pub fn attachments(&self) -> usize {
        self.ebpf().map_or(0, |ebpf| ebpf.attachments())
    }

    /// The eBPF capture (None in iptables mode).
    fn ebpf_capture(&self) -> Option<&Mutex<EbpfCapture>> {
        match &self.mode {
            Mode::Iptables => None,
            Mode::Ebpf(ebpf) => Some(ebpf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_says_why_it_fell_back_to_iptables() {
        let config = <Config as clap::Parser>::parse_from(["ztunnel", "--node-name", "n1"]);
        let capture = Capture::start(&config, Ports::default()).unwrap();
        assert_eq!(capture.name(), "iptables");
        let reason = capture.fallback().expect("a reason");
        assert!(reason.contains("--pods-cgroup"), "{reason}");

        let chosen = <Config as clap::Parser>::parse_from([
            "ztunnel",
            "--node-name",
            "n1",
            "--capture",
            "iptables",
        ]);
        let capture = Capture::start(&chosen, Ports::default()).unwrap();
        assert!(
            capture.fallback().is_none(),
            "iptables asked for is no fallback"
        );
    }
}
