//! Weft's own programs as real processes: started, waited for, and killed
//! (SIGKILL, like a crash) when the handle is dropped.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, bail, Context};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::{Child, Command},
};

use ztunnel::capture::CaptureMode;

use crate::topology::{cgroup::Cgroup, NetNs, Topology};

/// A child process that is SIGKILLed when dropped.
pub struct Process {
    child: Child,
    name: String,
    output: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts `cmd` and waits (up to 20 s) for a stdout line starting with
    /// `ready_prefix`; returns the process and that line. The rest of its
    /// output goes to this process's stderr, prefixed with `name`.
    pub async fn start(
        name: &str,
        mut cmd: Command,
        ready_prefix: &str,
    ) -> anyhow::Result<(Self, String)> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let stderr = child.stderr.take().expect("piped");
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        let (label, sink) = (name.to_owned(), output.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if echo_output() {
                    eprintln!("[{label}] {line}");
                }
                sink.lock().expect("output lock").push(line);
            }
        });
        let early = output.clone();
        let wait = async {
            while let Some(line) = stdout.next_line().await? {
                if line.starts_with(ready_prefix) {
                    return Ok(line);
                }
                // What it says while starting is part of its output too.
                if echo_output() {
                    eprintln!("[{name}] {line}");
                }
                early.lock().expect("output lock").push(line);
            }
            bail!("{name} exited before printing {ready_prefix:?}")
        };
        let line = tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .map_err(|_| anyhow!("{name} did not start within 20 s"))??;
        let (label, sink) = (name.to_owned(), output.clone());
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                if echo_output() {
                    eprintln!("[{label}] {line}");
                }
                sink.lock().expect("output lock").push(line);
            }
        });
        Ok((
            Self {
                child,
                name: name.to_owned(),
                output,
            },
            line,
        ))
    }

    /// SIGKILLs the process and reaps it.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))
    }

    /// Waits for the process to exit on its own.
    pub async fn wait(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        Ok(self.child.wait().await?)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Every line it has printed so far (stdout and stderr), ANSI colour
    /// codes removed.
    pub fn output(&self) -> Vec<String> {
        self.output
            .lock()
            .expect("output lock")
            .iter()
            .map(|line| strip_ansi(line))
            .collect()
    }

    /// The lines printed so far that contain every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.output()
            .into_iter()
            .filter(|line| needles.iter().all(|n| line.contains(n)))
            .collect()
    }
}

/// Whether children's output is echoed to stderr as it comes
/// (`WEFT_TEST_LOGS=1`); it is always kept for [`Process::output`].
fn echo_output() -> bool {
    std::env::var_os("WEFT_TEST_LOGS").is_some_and(|v| v == "1")
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip "ESC [ … letter".
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A command that starts inside network namespace `netns` (by name), or
/// in the current one.
pub fn command_in(netns: Option<&str>, bin: &Path) -> anyhow::Result<Command> {
    Ok(match netns {
        Some(name) => Command::from(NetNs::open(name)?.command(bin)),
        None => Command::new(bin),
    })
}

/// The control service, run from the binary at `bin`.
pub struct ControlProcess {
    pub process: Process,
    pub addr: SocketAddr,
    pub state_dir: PathBuf,
}

impl ControlProcess {
    /// Starts the control service (inside `netns`, if given).
    pub async fn start(
        bin: &Path,
        netns: Option<&str>,
        config_dir: &Path,
        state_dir: &Path,
        listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::start_with(bin, netns, config_dir, state_dir, listen, &[]).await
    }

    /// As [`ControlProcess::start`], with extra flags (`--cert-lifetime-secs`, …).
    pub async fn start_with(
        bin: &Path,
        netns: Option<&str>,
        config_dir: &Path,
        state_dir: &Path,
        listen: SocketAddr,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut cmd = command_in(netns, bin)?;
        cmd.args(extra);
        cmd.arg("--config-dir").arg(config_dir);
        Self::launch(cmd, state_dir, listen).await
    }

    /// Starts the control service reading a Kubernetes API server through
    /// `kubeconfig`.
    /// `kubeconfig`, its leader Lease in namespace `default`.
    pub async fn start_kubernetes(
        bin: &Path,
        kubeconfig: &Path,
        state_dir: &Path,
        listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        Self::start_kubernetes_with_lease_in(bin, kubeconfig, state_dir, listen, "default").await
    }

    /// As [`ControlProcess::start_kubernetes`], the Lease in `namespace`.
    pub async fn start_kubernetes_with_lease_in(
        bin: &Path,
        kubeconfig: &Path,
        state_dir: &Path,
        listen: SocketAddr,
        namespace: &str,
    ) -> anyhow::Result<Self> {
        Self::start_kubernetes_with(bin, None, kubeconfig, state_dir, listen, namespace, &[]).await
    }

    /// As [`ControlProcess::start_kubernetes_with_lease_in`], inside
    /// `netns` (by name) if given, with extra flags.
    pub async fn start_kubernetes_with(
        bin: &Path,
        netns: Option<&str>,
        kubeconfig: &Path,
        state_dir: &Path,
        listen: SocketAddr,
        lease_namespace: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut cmd = command_in(netns, bin)?;
        cmd.args(extra)
            .arg("--kubernetes")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--lease-namespace", lease_namespace]);
        Self::launch(cmd, state_dir, listen).await
    }

    async fn launch(
        mut cmd: Command,
        state_dir: &Path,
        listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        cmd.arg("--state-dir")
            .arg(state_dir)
            .arg("--listen")
            .arg(listen.to_string());
        let (process, line) = Process::start("control", cmd, "weft-control listening on ").await?;
        let addr = line
            .trim_start_matches("weft-control listening on ")
            .parse()
            .with_context(|| format!("parsing {line:?}"))?;
        Ok(Self {
            process,
            addr,
            state_dir: state_dir.to_owned(),
        })
    }

    pub fn root_cert(&self) -> PathBuf {
        self.state_dir.join("ca").join("root-cert.pem")
    }

    pub fn token_file(&self, node: &str) -> PathBuf {
        self.state_dir.join("nodes").join(format!("{node}.token"))
    }
}

/// A ztunnel, run from the binary at `bin`, with its admin and readiness
/// endpoints on loopback ports of its choosing.
pub struct ZtunnelProcess {
    pub process: Process,
    pub admin: SocketAddr,
    pub readiness: SocketAddr,
    pub metrics: SocketAddr,
    /// The namespace it runs in (its node's), by name.
    pub netns: Option<String>,
    /// The node agent's socket it connects to.
    pub socket: PathBuf,
}

/// How a ztunnel on a topology's node captures: the mode, and the node's
/// cgroups and pin directory.
#[derive(Debug)]
pub struct CaptureSetup {
    pub mode: CaptureMode,
    pub pods_cgroup: PathBuf,
    pub pin_dir: PathBuf,
    /// The cgroup ztunnel runs in (its own).
    pub cgroup: Cgroup,
    /// ztunnel's `--splice`.
    pub splice: bool,
    /// ztunnel's `--bpf-log`.
    pub bpf_log: bool,
    /// More flags for ztunnel.
    pub extra_flags: Vec<String>,
}

impl CaptureSetup {
    pub fn for_node(topology: &Topology, node: &str, mode: CaptureMode) -> Self {
        Self {
            mode,
            pods_cgroup: topology.node_pods_cgroup(node),
            pin_dir: topology.bpf_pin_dir(node),
            cgroup: topology.ztunnel_cgroup(node),
            splice: true,
            bpf_log: false,
            extra_flags: Vec::new(),
        }
    }

    /// The mode as ztunnel's `--capture` spells it.
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            CaptureMode::Auto => "auto",
            CaptureMode::Ebpf => "ebpf",
            CaptureMode::Iptables => "iptables",
        }
    }
}

impl ZtunnelProcess {
    /// Starts ztunnel for `node` (inside `netns`, if given) with its
    /// node agent at `socket`, capturing in iptables mode.
    pub async fn start(
        bin: &Path,
        node: &str,
        netns: Option<&str>,
        socket: &Path,
        control: &ControlProcess,
    ) -> anyhow::Result<Self> {
        Self::start_with(bin, node, netns, socket, control, None).await
    }

    /// As [`ZtunnelProcess::start`], capturing as `capture` says.
    pub async fn start_with(
        bin: &Path,
        node: &str,
        netns: Option<&str>,
        socket: &Path,
        control: &ControlProcess,
        capture: Option<&CaptureSetup>,
    ) -> anyhow::Result<Self> {
        let mut cmd = command_in(netns, bin)?;
        match capture {
            Some(setup) => {
                cmd.args(["--capture", setup.mode_name()])
                    .arg("--pods-cgroup")
                    .arg(&setup.pods_cgroup)
                    .arg("--bpf-pin-dir")
                    .arg(&setup.pin_dir)
                    .args(["--splice", if setup.splice { "true" } else { "false" }])
                    .args(["--bpf-log", if setup.bpf_log { "true" } else { "false" }])
                    .args(&setup.extra_flags);
                setup.cgroup.confine(cmd.as_std_mut())?;
            }
            None => {
                cmd.args(["--capture", "iptables"]);
            }
        }
        cmd.args(["--node-name", node])
            .arg("--node-agent-socket")
            .arg(socket)
            .arg("--control-address")
            .arg(control.addr.to_string())
            .arg("--root-cert")
            .arg(control.root_cert())
            .arg("--token-file")
            .arg(control.token_file(node))
            .args([
                "--admin-address",
                "127.0.0.1:0",
                "--readiness-address",
                "127.0.0.1:0",
            ])
            .args(["--metrics-address", "127.0.0.1:0"]);
        let (process, line) = Process::start(&format!("ztunnel {node}"), cmd, "admin=").await?;
        let mut admin = None;
        let mut readiness = None;
        let mut metrics = None;
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("admin=") {
                admin = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("readiness=") {
                readiness = v.parse().ok();
            } else if let Some(v) = field.strip_prefix("metrics=") {
                metrics = v.parse().ok();
            }
        }
        Ok(Self {
            process,
            admin: admin.ok_or_else(|| anyhow!("no admin address in {line:?}"))?,
            readiness: readiness.ok_or_else(|| anyhow!("no readiness address in {line:?}"))?,
            metrics: metrics.ok_or_else(|| anyhow!("no metrics address in {line:?}"))?,
            netns: netns.map(str::to_owned),
            socket: socket.to_owned(),
        })
    }

    /// SIGTERMs it, as a rolling update does, and waits (at most
    /// `timeout`) for it to drain and exit.
    pub async fn terminate(mut self, timeout: Duration) -> anyhow::Result<()> {
        let pid = self
            .process
            .pid()
            .ok_or_else(|| anyhow!("ztunnel has exited already"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = tokio::time::timeout(timeout, self.process.wait())
            .await
            .map_err(|_| anyhow!("ztunnel did not exit within {timeout:?} of SIGTERM"))??;
        anyhow::ensure!(
            status.success(),
            "ztunnel exited with {status} after SIGTERM"
        );
        Ok(())
    }

    /// How many file descriptors the process holds.
    pub fn open_fds(&self) -> anyhow::Result<usize> {
        let pid = self
            .process
            .pid()
            .ok_or_else(|| anyhow!("ztunnel has exited"))?;
        Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
    }

    /// `GET /config_dump`, parsed.
    pub async fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        let (status, body) = http_get(self.netns.as_deref(), self.admin, "/config_dump").await?;
        anyhow::ensure!(status == 200, "config_dump answered {status}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// `GET /metrics`, as text.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let (status, body) = http_get(self.netns.as_deref(), self.metrics, "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
        Ok(body)
    }

    /// The status code of `GET /healthz/ready`.
    pub async fn readiness(&self) -> anyhow::Result<u16> {
        Ok(
            http_get(self.netns.as_deref(), self.readiness, "/healthz/ready")
                .await?
                .0,
        )
    }
}

/// A minimal HTTP/1.1 GET (from inside `netns`, if given): status code and
/// body.
pub async fn http_get(
    netns: Option<&str>,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    http_request(netns, "GET", addr, path).await
}

/// A minimal HTTP/1.1 request with `method` and no body.
pub async fn http_request(
    netns: Option<&str>,
    method: &str,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let mut stream = match netns {
        None => tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?,
        Some(name) => {
            let std_stream = NetNs::open(name)?
                .enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))?
                .with_context(|| format!("connecting to {addr} in {name}"))?;
            std_stream.set_nonblocking(true)?;
            tokio::net::TcpStream::from_std(std_stream)?
        }
    };
    http_exchange(&mut stream, method, &addr.to_string(), path).await
}

/// [`http_request`] over a connection already made (a port-forward, say).
pub async fn http_exchange<S>(
    stream: &mut S,
    method: &str,
    host: &str,
    path: &str,
) -> anyhow::Result<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream
        .write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP header in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Polls `check` every 50 ms until it returns `Some`, for up to `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A waypoint, run from the binary at `bin` as the process of a pod.
pub struct WaypointProcess {
    pub process: Process,
    pub hbone: SocketAddr,
    pub admin: SocketAddr,
    pub readiness: SocketAddr,
    pub metrics: SocketAddr,
    /// The pod's network namespace, where its endpoints are.
    pub netns: String,
}

impl WaypointProcess {
    /// Starts waypoint `namespace/name` as a process of `pod` (its network
    /// namespace and cgroup), on `node`'s credentials.
    pub async fn start(
        bin: &Path,
        pod: &crate::topology::Pod,
        name: &str,
        control: &ControlProcess,
    ) -> anyhow::Result<Self> {
        Self::start_with(bin, pod, name, control, &[]).await
    }

    /// As [`WaypointProcess::start`], with extra flags.
    pub async fn start_with(
        bin: &Path,
        pod: &crate::topology::Pod,
        name: &str,
        control: &ControlProcess,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::from(pod.command(bin)?);
        cmd.args(["--name", name, "--namespace", pod.namespace()])
            .args(["--pod-name", pod.name(), "--node-name", pod.node()])
            .arg("--control-address")
            .arg(control.addr.to_string())
            .arg("--root-cert")
            .arg(control.root_cert())
            .arg("--token-file")
            .arg(control.token_file(pod.node()))
            .args(["--admin-address", "127.0.0.1:0"])
            .args(extra);
        let label = format!("waypoint {}/{name}", pod.namespace());
        let (process, line) = Process::start(&label, cmd, "hbone=").await?;
        let field = |key: &str| -> anyhow::Result<SocketAddr> {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(key))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("no {key} in {line:?}"))
        };
        Ok(Self {
            hbone: field("hbone=")?,
            admin: field("admin=")?,
            readiness: field("readiness=")?,
            metrics: field("metrics=")?,
            netns: pod.netns().name().to_owned(),
            process,
        })
    }

    /// `GET /config_dump`, parsed.
    pub async fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        let (status, body) = http_get(Some(&self.netns), self.admin, "/config_dump").await?;
        anyhow::ensure!(status == 200, "config_dump answered {status}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// The text of `GET /stats/prometheus`.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let (status, body) = http_get(Some(&self.netns), self.metrics, "/stats/prometheus").await?;
        anyhow::ensure!(status == 200, "metrics answered {status}: {body}");
        Ok(body)
    }

    /// The status code of `GET /healthz/ready`.
    pub async fn readiness(&self) -> anyhow::Result<u16> {
        Ok(
            http_get(Some(&self.netns), self.readiness, "/healthz/ready")
                .await?
                .0,
        )
    }
}
