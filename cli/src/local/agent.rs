//! `weft local`'s node agent: one daemon per node, holding the ZDS socket
//! its ztunnel connects to, as the cluster's node agent does.
//!
//! Where a cluster's agent reads pods from the API server, this one reads
//! the node's enrolled pods from a file the `weft local` commands write
//! (`nodes/<node>/pods.json`, with a generation), hands changes to ztunnel,
//! and reports what it did in `nodes/<node>/agent.json` (the generation
//! applied, how many ztunnels are connected, the pods ztunnel refused) so
//! that the command waits for the handover and can say what went wrong.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use weft_zds::{
    agent::{Agent, AgentPod},
    messages::Workload,
};

/// The enrolled pods of one node, as the commands want them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Desired {
    pub generation: u64,
    pub pods: Vec<DesiredPod>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// The pod's network namespace (a bind-mounted nsfs file).
    pub netns: PathBuf,
}

/// What the agent last did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The generation of the pods file it has handed over.
    pub generation: u64,
    /// Connected ztunnels (each has had its snapshot).
    pub ztunnels: usize,
    /// Pods not handed over, by uid, with the reason.
    pub refused: BTreeMap<String, String>,
}

/// Writes `value` as JSON to `path`, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(value)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is damaged", path.display())
            })?))
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn read_report(path: &Path) -> anyhow::Result<Option<Report>> {
    read_json(path)
}

/// Runs the agent until killed.
pub async fn run(socket: &Path, pods_file: &Path, report_file: &Path) -> anyhow::Result<()> {
    let agent = Agent::bind(socket)
        .with_context(|| format!("listening on the ZDS socket {}", socket.display()))?;
    tracing::info!(socket = %socket.display(), pods = %pods_file.display(), "node agent started");
    let mut handed: BTreeMap<String, DesiredPod> = BTreeMap::new();
    let mut generation = 0;
    // Pods this agent could not even hand over (an unopenable namespace).
    let mut unopened: BTreeMap<String, String> = BTreeMap::new();
    let mut last_report = None;
    loop {
        match read_json::<Desired>(pods_file) {
            Ok(Some(desired)) if desired.generation != generation => {
                let wanted: BTreeMap<String, DesiredPod> = desired
                    .pods
                    .into_iter()
                    .map(|p| (p.uid.clone(), p))
                    .collect();
                for uid in handed.keys().filter(|uid| !wanted.contains_key(*uid)) {
                    agent.remove(uid).await;
                }
                unopened.clear();
                for pod in wanted.values().filter(|p| handed.get(&p.uid) != Some(*p)) {
                    if let Err(reason) = hand_over(&agent, pod).await {
                        unopened.insert(pod.uid.clone(), reason);
                    }
                }
                handed = wanted;
                generation = desired.generation;
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(err = %format!("{err:#}"), "ignoring the pods file"),
        }
        let mut refused = agent.refused();
        refused.extend(unopened.clone());
        let report = Report {
            generation,
            ztunnels: agent.connections(),
            refused,
        };
        if last_report.as_ref() != Some(&report) {
            write_json(report_file, &report)?;
            last_report = Some(report);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Hands one pod to ztunnel; `Err` only when the agent itself cannot
/// (ztunnel's refusals are kept by the agent).
async fn hand_over(agent: &Agent, pod: &DesiredPod) -> Result<(), String> {
    let netns = std::fs::File::open(&pod.netns)
        .map_err(|e| format!("opening its network namespace {}: {e}", pod.netns.display()))?;
    let pod = AgentPod {
        workload: Workload {
            uid: pod.uid.clone(),
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            service_account: pod.service_account.clone(),
        },
        netns: Arc::new(netns.into()),
    };
    // A refusal is kept by the agent (and reported); with no ztunnel
    // connected the pod is held, and the next one's snapshot carries it.
    if let Err(err) = agent.add(pod).await {
        tracing::info!(%err, "pod not handed over yet");
    }
    Ok(())
}
