//! The local runtime: the processes of a local mesh and the pods' view of
//! the world (hosts files, enrollment).

use std::{
    collections::BTreeMap,
    ffi::CString,
    net::SocketAddr,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use super::{
    agent::{read_report, write_json, Desired, DesiredPod},
    paths::{Paths, CONTROL_ADDRESS},
    state::PodState,
};
use anyhow::{bail, Context};
use weft_control::translate::Resources;
use weft_proto::istio::workload::address::Type;
use weft_tests::{
    processes::{eventually, http_get},
    topology::{NetNs, Pod, Topology},
};

/// Makes `cmd` a daemon: its own session, no terminal, output to `log`.
pub(super) fn daemonize(cmd: &mut Command, log: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(log.parent().expect("logs have a directory"))?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    Ok(())
}

/// This `weft` binary, which also runs the control service and ztunnel.
fn weft_binary() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("locating the weft binary")
}

/// Starts the control service in the control-plane namespace and waits
/// until it accepts connections.
pub async fn start_control(paths: &Paths, topology: &Topology) -> anyhow::Result<()> {
    let netns = topology
        .control_plane()
        .context("the local topology has a control plane")?;
    let mut cmd = netns.command(weft_binary()?);
    cmd.arg("control")
        .arg("--config-dir")
        .arg(paths.config())
        .arg("--state-dir")
        .arg(paths.control())
        .args(["--listen", CONTROL_ADDRESS]);
    topology.system_cgroup().confine(&mut cmd)?;
    daemonize(&mut cmd, &paths.log("control"))?;
    cmd.spawn().context("starting the control service")?;
    let addr: SocketAddr = CONTROL_ADDRESS.parse()?;
    eventually(
        "the control service to listen",
        Duration::from_secs(20),
        || async {
            netns
                .enter(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)))
                .ok()?
                .ok()
                .map(drop)
        },
    )
    .await
    .with_context(|| format!("see {}", paths.log("control").display()))
}

/// Starts `node`'s node agent in the node's namespace and waits until it
/// listens, so that ztunnel finds it at once.
pub async fn start_node_agent(
    paths: &Paths,
    topology: &Topology,
    node: &str,
) -> anyhow::Result<()> {
    let socket = paths.ztunnel_socket(node);
    let _ = std::fs::remove_file(&socket);
    let mut cmd = topology.node(node).netns().command(weft_binary()?);
    cmd.arg("local-node-agent")
        .arg("--socket")
        .arg(&socket)
        .arg("--pods")
        .arg(paths.node_pods(node))
        .arg("--report")
        .arg(paths.node_agent_report(node));
    topology.system_cgroup().confine(&mut cmd)?;
    let log = paths.log(&format!("node-agent-{node}"));
    daemonize(&mut cmd, &log)?;
    cmd.spawn()
        .with_context(|| format!("starting the node agent of {node}"))?;
    eventually(
        &format!("the node agent of {node} to listen"),
        Duration::from_secs(10),
        || async { paths.node_agent_report(node).exists().then_some(()) },
    )
    .await
    .with_context(|| format!("see {}", log.display()))
}

/// Starts `node`'s ztunnel in the node's namespace.
pub fn start_ztunnel(paths: &Paths, topology: &Topology, node: &str) -> anyhow::Result<()> {
    let socket = paths.ztunnel_socket(node);
    std::fs::create_dir_all(socket.parent().expect("socket has a directory"))?;
    let mut cmd = topology.node(node).netns().command(weft_binary()?);
    cmd.arg("ztunnel")
        .args(["--node-name", node, "--control-address", CONTROL_ADDRESS])
        .arg("--root-cert")
        .arg(paths.root_cert())
        .arg("--token-file")
        .arg(paths.node_tokens().join(format!("{node}.token")))
        .arg("--node-agent-socket")
        .arg(&socket)
        .args([
            "--admin-address",
            "127.0.0.1:15000",
            "--readiness-address",
            "0.0.0.0:15021",
        ])
        // eBPF capture where this kernel allows, attached at the node's
        // pods' cgroup and pinned under the topology's name (so `weft local
        // down` removes it).
        .args(["--capture", "auto"])
        .arg("--pods-cgroup")
        .arg(topology.node_pods_cgroup(node))
        .arg("--bpf-pin-dir")
        .arg(topology.bpf_pin_dir(node));
    topology.ztunnel_cgroup(node).confine(&mut cmd)?;
    daemonize(&mut cmd, &paths.log(&format!("ztunnel-{node}")))?;
    cmd.spawn()
        .with_context(|| format!("starting ztunnel on {node}"))?;
    Ok(())
}

/// `GET /healthz/ready` of `node`'s ztunnel: the status, or why it failed.
pub async fn ztunnel_readiness(netns: &NetNs) -> Result<(u16, String), String> {
    http_get(
        Some(netns.name()),
        SocketAddr::from(([127, 0, 0, 1], 15021)),
        "/healthz/ready",
    )
    .await
    .map_err(|e| e.to_string())
}

/// Waits until every node's ztunnel is ready.
pub async fn wait_ztunnels_ready(paths: &Paths, topology: &Topology) -> anyhow::Result<()> {
    for node in topology.nodes() {
        eventually(
            &format!("ztunnel on {} to be ready", node.name()),
            Duration::from_secs(30),
            || async {
                matches!(ztunnel_readiness(node.netns()).await, Ok((200, _))).then_some(())
            },
        )
        .await
        .with_context(|| {
            format!(
                "see {}",
                paths.log(&format!("ztunnel-{}", node.name())).display()
            )
        })?;
    }
    Ok(())
}

/// Writes every pod's hosts file: localhost, the pod itself, and each
/// service as `<svc>.<ns>.svc.cluster.local` and `<svc>.<ns>` (plus the bare
/// `<svc>` for pods of its namespace). Files are rewritten in place, since
/// running pods see them through a bind mount.
pub fn write_hosts(
    paths: &Paths,
    topology: &Topology,
    resources: &Resources,
) -> anyhow::Result<()> {
    let services: Vec<_> = resources
        .addresses
        .values()
        .filter_map(|a| match &a.r#type {
            Some(Type::Service(s)) => Some(s),
            _ => None,
        })
        .collect();
    for pod in topology.pods() {
        let mut text = format!(
            "127.0.0.1\tlocalhost\n::1\tlocalhost\n{}\t{}\n",
            pod.ip(),
            pod.name()
        );
        for service in &services {
            let Some(vip) = service
                .addresses
                .first()
                .and_then(|a| <[u8; 4]>::try_from(a.address.as_slice()).ok())
            else {
                continue;
            };
            let vip = std::net::Ipv4Addr::from(vip);
            let mut names = format!(
                "{}\t{}.{}",
                service.hostname, service.name, service.namespace
            );
            if service.namespace == pod.namespace() {
                names.push('\t');
                names.push_str(&service.name);
            }
            text.push_str(&format!("{vip}\t{names}\n"));
        }
        let path = paths.hosts(pod.namespace(), pod.name());
        std::fs::create_dir_all(path.parent().expect("hosts has a directory"))?;
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(text.as_bytes())?;
    }
    Ok(())
}

/// Plays kube-proxy for pods outside the mesh: in every node's namespace,
/// a DNAT rule per service VIP and port spreads connections over the
/// service's endpoints. (Enrolled pods never reach these rules: ztunnel
/// resolves VIPs inside the pod and tunnels to endpoints directly.)
pub fn program_services(topology: &Topology, resources: &Resources) -> anyhow::Result<()> {
    use weft_proto::istio::workload::Workload;
    let workloads: Vec<&Workload> = resources
        .addresses
        .values()
        .filter_map(|a| match &a.r#type {
            Some(Type::Workload(w)) => Some(w),
            _ => None,
        })
        .collect();
    let mut rules = String::from("*nat\n:WEFT-SERVICES - [0:0]\n");
    for address in resources.addresses.values() {
        let Some(Type::Service(service)) = &address.r#type else {
            continue;
        };
        let Some(vip) = service
            .addresses
            .first()
            .and_then(|a| <[u8; 4]>::try_from(a.address.as_slice()).ok())
        else {
            continue;
        };
        let vip = std::net::Ipv4Addr::from(vip);
        let key = format!("{}/{}", service.namespace, service.hostname);
        for port in &service.ports {
            let endpoints: Vec<String> = workloads
                .iter()
                .filter_map(|w| {
                    let ip = <[u8; 4]>::try_from(w.addresses.first()?.as_slice()).ok()?;
                    let mapping = w
                        .services
                        .get(&key)?
                        .ports
                        .iter()
                        .find(|p| p.service_port == port.service_port)?;
                    let target = if mapping.target_port != 0 {
                        mapping.target_port
                    } else {
                        port.target_port
                    };
                    (target != 0).then(|| format!("{}:{target}", std::net::Ipv4Addr::from(ip)))
                })
                .collect();
            for (i, endpoint) in endpoints.iter().enumerate() {
                let remaining = endpoints.len() - i;
                let pick = if remaining > 1 {
                    format!(
                        "-m statistic --mode random --probability {:.6} ",
                        1.0 / remaining as f64
                    )
                } else {
                    String::new()
                };
                rules.push_str(&format!(
                    "-A WEFT-SERVICES -d {vip}/32 -p tcp --dport {} {pick}-j DNAT --to-destination {endpoint}\n",
                    port.service_port
                ));
            }
        }
    }
    rules.push_str("COMMIT\n");
    for node in topology.nodes() {
        let iptables = |args: &[&str]| -> anyhow::Result<bool> {
            Ok(node
                .netns()
                .command("iptables")
                .args(args)
                .stderr(Stdio::null())
                .status()?
                .success())
        };
        iptables(&["-t", "nat", "-N", "WEFT-SERVICES"])?;
        if !iptables(&["-t", "nat", "-C", "PREROUTING", "-j", "WEFT-SERVICES"])? {
            iptables(&["-t", "nat", "-A", "PREROUTING", "-j", "WEFT-SERVICES"])?;
        }
        let mut restore = node.netns().command("iptables-restore");
        restore.arg("--noflush").stdin(Stdio::piped());
        let mut child = restore
            .spawn()
            .context("running iptables-restore in a node")?;
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())?;
        anyhow::ensure!(
            child.wait()?.success(),
            "iptables-restore of service rules failed on {}",
            node.name()
        );
    }
    Ok(())
}

/// Makes `cmd` see the pod's hosts file as /etc/hosts (in a private mount
/// namespace of its own).
fn with_hosts(cmd: &mut Command, hosts: &Path) -> anyhow::Result<()> {
    let source = CString::new(hosts.as_os_str().as_bytes())?;
    // SAFETY: unshare(2) and mount(2) are async-signal-safe; the strings
    // were allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            use nix::mount::{mount, MsFlags};
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )?;
            mount(
                Some(source.as_c_str()),
                "/etc/hosts",
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        });
    }
    Ok(())
}

/// A command that runs as a process of `pod`: its network namespace,
/// cgroup and hosts file, with the environment a container would have.
pub fn pod_command(paths: &Paths, pod: &Pod, program: &str) -> anyhow::Result<Command> {
    let mut cmd = pod.command(program)?;
    with_hosts(&mut cmd, &paths.hosts(pod.namespace(), pod.name()))?;
    cmd.env("POD_NAME", pod.name())
        .env("POD_NAMESPACE", pod.namespace())
        .env("POD_IP", pod.ip().to_string())
        .env("NODE_NAME", pod.node())
        .env("HOSTNAME", pod.name())
        .current_dir("/");
    Ok(cmd)
}

/// Starts the pod's containers (each container's `command` + `args`).
pub fn start_containers(
    paths: &Paths,
    pod: &Pod,
    spec: &weft_control::objects::Pod,
) -> anyhow::Result<()> {
    for container in &spec.containers {
        let mut argv: Vec<&String> = container.command.iter().chain(&container.args).collect();
        if argv.is_empty() {
            continue;
        }
        let program = argv.remove(0);
        let mut cmd = pod_command(paths, pod, program)?;
        cmd.args(argv);
        daemonize(&mut cmd, &paths.log(&pod.qualified_name()))?;
        cmd.spawn().with_context(|| {
            format!(
                "starting container {} of pod {}",
                container.name,
                pod.qualified_name()
            )
        })?;
    }
    Ok(())
}

/// Waits (up to 20 s) until every port the pod's containers declare
/// accepts connections; a pod that never listens is reported, not fatal.
pub async fn wait_pod_ready(pod: &Pod, spec: &weft_control::objects::Pod) {
    for (_, port) in spec.containers.iter().flat_map(|c| &c.ports) {
        let addr = SocketAddr::from((pod.ip(), *port));
        let listening = eventually(
            &format!("{} to listen on {port}", pod.qualified_name()),
            Duration::from_secs(20),
            || async {
                pod.enter(|| {
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                })
                .ok()?
                .ok()
                .map(drop)
            },
        )
        .await;
        if listening.is_err() {
            eprintln!(
                "weft local: pod {} is not listening on port {port} after 20 s; see `weft local logs {}`",
                pod.qualified_name(),
                pod.qualified_name()
            );
        }
    }
}

/// Tells each node's agent exactly which of its pods are enrolled (it hands
/// the changes to ztunnel), waits until the agents have, reports the pods
/// ztunnel refused, then waits until ztunnels hold the new pods'
/// certificates.
pub async fn enroll(
    paths: &Paths,
    topology: &Topology,
    enrolled: &BTreeMap<String, PodState>,
) -> anyhow::Result<()> {
    let mut written = Vec::new();
    for node in topology.nodes() {
        let file = paths.node_pods(node.name());
        let previous = std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Desired>(&bytes).ok())
            .unwrap_or_default();
        let desired = Desired {
            generation: previous.generation + 1,
            pods: topology
                .pods()
                .iter()
                .filter(|p| p.node() == node.name())
                .filter_map(|pod| {
                    let state = enrolled.get(&pod.qualified_name())?;
                    Some(DesiredPod {
                        uid: state.uid.clone(),
                        name: pod.name().to_owned(),
                        namespace: pod.namespace().to_owned(),
                        service_account: state.service_account.clone(),
                        netns: pod.netns().path(),
                    })
                })
                .collect(),
        };
        write_json(&file, &desired)?;
        written.push((node.name().to_owned(), desired));
    }
    let mut refusals = Vec::new();
    for (node, desired) in &written {
        let report_file = paths.node_agent_report(node);
        let report = eventually(
            &format!("the node agent of {node} to hand its pods to ztunnel"),
            Duration::from_secs(20),
            || async {
                read_report(&report_file)
                    .ok()
                    .flatten()
                    .filter(|r| r.generation == desired.generation && r.ztunnels > 0)
            },
        )
        .await
        .with_context(|| {
            format!(
                "see {} and {}",
                paths.log(&format!("node-agent-{node}")).display(),
                paths.log(&format!("ztunnel-{node}")).display()
            )
        })?;
        for pod in &desired.pods {
            if let Some(reason) = report.refused.get(&pod.uid) {
                refusals.push(format!("{}/{}: {reason}", pod.namespace, pod.name));
            }
        }
    }
    if !refusals.is_empty() {
        bail!("pods not enrolled:\n  {}", refusals.join("\n  "));
    }
    wait_ztunnels_ready(paths, topology).await
}

/// Runs `command` in `pod` with this terminal; returns its exit code.
pub fn exec(
    paths: &Paths,
    topology: &Topology,
    qualified: &str,
    command: &[String],
) -> anyhow::Result<i32> {
    let Some(pod) = topology
        .pods()
        .iter()
        .find(|p| p.qualified_name() == qualified)
    else {
        let known: Vec<String> = topology.pods().iter().map(Pod::qualified_name).collect();
        bail!(
            "no pod {qualified} in the local mesh (pods: {})",
            known.join(", ")
        );
    };
    let (program, args) = command.split_first().context("no command given")?;
    let mut cmd = pod_command(paths, pod, program)?;
    cmd.args(args);
    let status = cmd
        .status()
        .with_context(|| format!("running {program} in {qualified}"))?;
    Ok(status
        .code()
        .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
}
