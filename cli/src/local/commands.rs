//! The `weft local` commands.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{bail, Context};
use weft_control::auth::issue_node_token;
use weft_proto::istio::workload::address::Type;
use weft_tests::topology::{Topology, TopologyId};

use super::{
    config::{self, UserFile},
    paths::Paths,
    runtime,
    state::{Lock, PodState, State},
    waypoints,
};

/// A topology reattached for one command: dropping it detaches again (the
/// mesh keeps running); only `down` tears it down.
struct Attached(Option<Topology>);

impl Attached {
    fn new(state: &State) -> anyhow::Result<Self> {
        let topology = Topology::attach(&state.topology).context(
            "the local mesh's namespaces are not all there; `weft local down` cleans up",
        )?;
        Ok(Self(Some(topology)))
    }

    fn get(&self) -> &Topology {
        self.0.as_ref().expect("attached")
    }

    fn get_mut(&mut self) -> &mut Topology {
        self.0.as_mut().expect("attached")
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(topology) = self.0.take() {
            topology.detach();
        }
    }
}

fn pod_ips(topology: &Topology) -> BTreeMap<String, Ipv4Addr> {
    topology
        .pods()
        .iter()
        .map(|p| (p.qualified_name(), p.ip()))
        .collect()
}

/// Runs the waypoints the config asks for, records the served pods and
/// enrolls the ones in the mesh.
async fn reconcile(
    paths: &Paths,
    topology: &mut Topology,
    state: &mut State,
) -> anyhow::Result<()> {
    let (snapshot, _) = config::served(paths)?;
    let new_waypoints = waypoints::reconcile(paths, topology, &snapshot)?;
    let topology = &*topology;
    let (snapshot, resources) = config::served(paths)?;
    for error in &snapshot.errors {
        eprintln!("weft local: the control service rejects {error}");
    }
    runtime::write_hosts(paths, topology, &resources)?;
    runtime::program_services(topology, &resources)?;
    let mut enrolled = BTreeMap::new();
    state.pods.clear();
    for (name, (pod, in_mesh)) in config::enrollment(&snapshot) {
        let pod_state = PodState {
            uid: format!("Kubernetes//Pod/{}/{}", pod.namespace, pod.name),
            service_account: pod.service_account.clone(),
        };
        if in_mesh {
            enrolled.insert(name.clone(), pod_state.clone());
        }
        state.pods.insert(name, pod_state);
    }
    runtime::enroll(paths, topology, &enrolled).await?;
    for gateway in &new_waypoints {
        waypoints::start(paths, topology, gateway)?;
    }
    waypoints::wait_ready(paths, topology, &new_waypoints, Duration::from_secs(30)).await;
    Ok(())
}

pub async fn up(paths: &Paths, source: &Path) -> anyhow::Result<()> {
    let _lock = Lock::take(paths)?;
    if paths.exists() {
        bail!("a local mesh is already running (see `weft local status`); `weft local down` first");
    }
    let files = config::read(source)?;
    let pods = config::pods(&files);
    if pods.is_empty() {
        bail!("{} has no Pods: nothing to run", source.display());
    }
    let mut nodes: Vec<&str> = pods.iter().map(|p| p.node_name.as_str()).collect();
    nodes.sort();
    nodes.dedup();
    let mut builder = Topology::builder()
        .id(TopologyId::named(&paths.owner()))
        .control_plane();
    for node in &nodes {
        builder = builder.node(node);
    }
    for pod in &pods {
        builder = builder.pod(&format!("{}/{}", pod.namespace, pod.name), &pod.node_name);
    }
    println!(
        "weft local: creating {} node(s) and {} pod(s)",
        nodes.len(),
        pods.len()
    );
    let mut topology = builder.build()?;
    // From here on a failure tears everything down again (dropping the
    // topology kills its processes and removes its namespaces).
    let result = start(paths, &mut topology, &files, &pods).await;
    match result {
        Ok(state) => {
            state.save(paths)?;
            topology.detach();
            print_summary(paths).await
        }
        Err(err) => {
            drop(topology);
            let _ = std::fs::remove_dir_all(&paths.root);
            Err(err)
        }
    }
}

async fn start(
    paths: &Paths,
    topology: &mut Topology,
    files: &[UserFile],
    pods: &[&weft_control::objects::Pod],
) -> anyhow::Result<State> {
    let ips = pod_ips(topology);
    for file in files {
        config::write_rendered(paths, file, &ips)?;
    }
    for node in topology.nodes() {
        issue_node_token(&paths.node_tokens(), node.name())?;
    }
    println!("weft local: starting the control service");
    runtime::start_control(paths, topology).await?;
    println!("weft local: starting the node agent and ztunnel on each node");
    for node in topology.nodes() {
        runtime::start_node_agent(paths, topology, node.name()).await?;
        runtime::start_ztunnel(paths, topology, node.name())?;
    }
    runtime::wait_ztunnels_ready(paths, topology).await?;
    let mut state = State {
        topology: topology.record(),
        pods: BTreeMap::new(),
    };
    reconcile(paths, topology, &mut state).await?;
    state.topology = topology.record();
    for spec in pods {
        let pod = topology.pod(&format!("{}/{}", spec.namespace, spec.name));
        runtime::start_containers(paths, pod, spec)?;
    }
    for spec in pods {
        let pod = topology.pod(&format!("{}/{}", spec.namespace, spec.name));
        runtime::wait_pod_ready(pod, spec).await;
    }
    Ok(state)
}

pub async fn apply(paths: &Paths, source: &Path) -> anyhow::Result<()> {
    let _lock = Lock::take(paths)?;
    let files = config::read(source)?;
    apply_files(paths, &files).await?;
    // Like kubectl apply: the valid documents are applied, and a rejected
    // one (already reported) fails the command.
    let (snapshot, _) = config::served(paths)?;
    let rejected = snapshot
        .errors
        .iter()
        .filter(|error| {
            let name = Path::new(&error.file).file_name();
            files.iter().any(|f| name == Some(f.name.as_ref()))
        })
        .count();
    if rejected > 0 {
        anyhow::bail!(
            "{rejected} document(s) of {} rejected (see above); the others were applied",
            source.display()
        );
    }
    Ok(())
}

/// Runs what the served config now asks for, after a change made to it
/// directly (the caller holds the lock).
pub async fn resync(paths: &Paths) -> anyhow::Result<()> {
    let mut state = State::load(paths)?;
    let mut attached = Attached::new(&state)?;
    reconcile(paths, attached.get_mut(), &mut state).await?;
    state.topology = attached.get().record();
    state.save(paths)
}

/// `apply` of files already read (the caller holds the lock).
pub async fn apply_files(paths: &Paths, files: &[UserFile]) -> anyhow::Result<()> {
    let mut state = State::load(paths)?;
    let mut attached = Attached::new(&state)?;
    let mut created = Vec::new();
    for spec in config::pods(files) {
        let name = format!("{}/{}", spec.namespace, spec.name);
        if attached
            .get()
            .pods()
            .iter()
            .any(|p| p.qualified_name() == name)
        {
            continue;
        }
        if !attached
            .get()
            .nodes()
            .iter()
            .any(|n| n.name() == spec.node_name)
        {
            let known: Vec<&str> = attached.get().nodes().iter().map(|n| n.name()).collect();
            bail!(
                "pod {name} is on node {}, which this local mesh does not have (nodes: {}); \
                 nodes are fixed at `weft local up`",
                spec.node_name,
                known.join(", ")
            );
        }
        attached.get_mut().add_pod(&name, &spec.node_name)?;
        created.push(spec.clone());
    }
    let ips = pod_ips(attached.get());
    for file in files {
        config::write_rendered(paths, file, &ips)?;
    }
    reconcile(paths, attached.get_mut(), &mut state).await?;
    state.topology = attached.get().record();
    for spec in &created {
        let pod = attached
            .get()
            .pod(&format!("{}/{}", spec.namespace, spec.name));
        runtime::start_containers(paths, pod, spec)?;
        runtime::wait_pod_ready(pod, spec).await;
        println!("pod/{}/{} created", spec.namespace, spec.name);
    }
    state.save(paths)?;
    for file in files {
        println!("{} applied ({} objects)", file.name, file.objects.len());
    }
    Ok(())
}

pub async fn delete(paths: &Paths, source: &Path) -> anyhow::Result<()> {
    let _lock = Lock::take(paths)?;
    let mut state = State::load(paths)?;
    let files = config::read(source)?;
    let mut attached = Attached::new(&state)?;
    for file in &files {
        let served = paths.config().join(&file.name);
        if served.exists() {
            std::fs::remove_file(&served)?;
        }
    }
    for spec in config::pods(&files) {
        let name = format!("{}/{}", spec.namespace, spec.name);
        if attached
            .get()
            .pods()
            .iter()
            .any(|p| p.qualified_name() == name)
        {
            attached.get_mut().remove_pod(&name)?;
            println!("pod/{name} deleted");
        }
    }
    reconcile(paths, attached.get_mut(), &mut state).await?;
    state.topology = attached.get().record();
    state.save(paths)?;
    for file in &files {
        println!("{} deleted ({} objects)", file.name, file.objects.len());
    }
    Ok(())
}

pub fn exec(paths: &Paths, pod: &str, command: &[String]) -> anyhow::Result<i32> {
    let state = State::load(paths)?;
    let attached = Attached::new(&state)?;
    runtime::exec(paths, attached.get(), pod, command)
}

pub fn logs(paths: &Paths, name: &str) -> anyhow::Result<()> {
    let path = paths.log(name);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no log {} (pods are namespace/name; also `control` and `ztunnel-NODE`)",
            path.display()
        )
    })?;
    print!("{text}");
    Ok(())
}

pub async fn status(paths: &Paths) -> anyhow::Result<()> {
    let _ = State::load(paths)?;
    print_summary(paths).await
}

async fn print_summary(paths: &Paths) -> anyhow::Result<()> {
    let state = State::load(paths)?;
    let attached = Attached::new(&state)?;
    let topology = attached.get();
    let (snapshot, resources) = config::served(paths)?;
    let enrollment = config::enrollment(&snapshot);
    println!(
        "control service  {}  (logs: weft local logs control)",
        super::paths::CONTROL_ADDRESS
    );
    println!("\nNODE   FABRIC-IP       PODS              ZTUNNEL");
    for node in topology.nodes() {
        let ready = match runtime::ztunnel_readiness(node.netns()).await {
            Ok((200, _)) => "ready".to_owned(),
            Ok((_, body)) => body.trim().to_owned(),
            Err(err) => format!("unreachable: {err}"),
        };
        println!(
            "{:<6} {:<15} {:<17} {ready}",
            node.name(),
            node.ip(),
            node.addresses().pod_cidr()
        );
    }
    println!("\nPOD                      NODE   IP              MESH   PROCESSES");
    for pod in topology.pods() {
        let in_mesh = enrollment
            .get(&pod.qualified_name())
            .is_some_and(|(_, e)| *e);
        println!(
            "{:<24} {:<6} {:<15} {:<6} {}",
            pod.qualified_name(),
            pod.node(),
            pod.ip(),
            if in_mesh { "yes" } else { "no" },
            pod.pids().len()
        );
    }
    println!("\nSERVICE                                VIP             PORTS");
    for address in resources.addresses.values() {
        if let Some(Type::Service(s)) = &address.r#type {
            let vip = s
                .addresses
                .first()
                .and_then(|a| <[u8; 4]>::try_from(a.address.as_slice()).ok())
                .map(|b| Ipv4Addr::from(b).to_string())
                .unwrap_or_else(|| "None".into());
            let ports: Vec<String> = s
                .ports
                .iter()
                .map(|p| match p.target_port {
                    0 => format!("{}→(named port)", p.service_port),
                    target => format!("{}→{target}", p.service_port),
                })
                .collect();
            println!("{:<38} {:<15} {}", s.hostname, vip, ports.join(","));
        }
    }
    for error in &snapshot.errors {
        println!("\nrejected: {error}");
    }
    for warning in &resources.warnings {
        println!("\nwarning: {warning}");
    }
    Ok(())
}

pub fn down(paths: &Paths) -> anyhow::Result<()> {
    let _lock = Lock::take(paths)?;
    let mut problems = Vec::new();
    match State::load(paths).and_then(|state| Ok(Topology::attach(&state.topology)?)) {
        Ok(topology) => {
            if let Err(err) = topology.teardown() {
                problems.push(err.to_string());
            }
        }
        Err(err) if paths.exists() => problems.push(format!("{err:#}")),
        Err(_) => {}
    }
    // Whatever a damaged or partial mesh left, by its names.
    if let Err(err) = weft_tests::topology::remove_owned_by(&paths.owner()) {
        problems.push(err.to_string());
    }
    if paths.root.exists() {
        std::fs::remove_dir_all(&paths.root)
            .with_context(|| format!("removing {}", paths.root.display()))?;
    }
    if problems.is_empty() {
        println!("weft local: down; nothing left behind");
        Ok(())
    } else {
        bail!(
            "weft local down finished with problems:\n  {}",
            problems.join("\n  ")
        )
    }
}
