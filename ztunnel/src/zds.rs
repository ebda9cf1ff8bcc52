//! ztunnel's side of ZDS (the protocol is `weft_zds`): it connects to the
//! node agent, says hello, and answers each request with one ack.
//!
//! Whom it listens to: only an agent whose socket was made by root or by
//! the configured node-agent uid (`SO_PEERCRED` of the listening side). A
//! snapshot speaks for the whole node: once `snapshot_sent` arrives, pods
//! the snapshot did not name (by `add` or `keep`) are released. When the
//! agent goes away, the pods keep being served and ztunnel reconnects; the
//! next snapshot settles what changed meanwhile.

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;

use weft_zds::{
    messages::{encode_ack, encode_hello, Request},
    wire::Datagrams,
};

use crate::{pods::Pods, proxy::PodInfo};

/// How long to wait between attempts to reach the agent.
const RETRY: Duration = Duration::from_secs(1);

/// What `/config_dump` and readiness know of the link to the node agent.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentLink {
    pub socket: PathBuf,
    pub connected: bool,
    /// Snapshots completed since ztunnel started; ready needs one.
    pub snapshots: u64,
    /// Why the last attempt or session failed.
    pub last_error: Option<String>,
}

/// Shared view of [`AgentLink`].
#[derive(Clone, Default)]
pub struct LinkStatus(Arc<Mutex<AgentLink>>);

impl LinkStatus {
    pub fn get(&self) -> AgentLink {
        self.0.lock().expect("link lock").clone()
    }

    fn update(&self, f: impl FnOnce(&mut AgentLink)) {
        f(&mut self.0.lock().expect("link lock"))
    }
}

/// Keeps a session with the node agent at `path` open for as long as the
/// task runs, reconnecting when it ends.
pub async fn run(path: PathBuf, pods: Arc<Pods>, agent_uid: Option<u32>, status: LinkStatus) {
    status.update(|s| s.socket = path.clone());
    let mut last_logged: Option<String> = None;
    loop {
        let outcome: Result<(), String> = match Datagrams::connect(&path) {
            Err(err) => Err(format!(
                "cannot reach the node agent at {}: {err}; is it running on this node?",
                path.display()
            )),
            Ok(agent) => match check_peer(&agent, agent_uid) {
                Err(refusal) => Err(format!(
                    "refused the node agent at {}: {refusal}",
                    path.display()
                )),
                Ok(()) => {
                    last_logged = None;
                    tracing::info!(socket = %path.display(), "connected to the node agent");
                    status.update(|s| {
                        s.connected = true;
                        s.last_error = None;
                    });
                    let ended = session(&agent, &pods, &status).await;
                    status.update(|s| s.connected = false);
                    match ended {
                        Ok(()) => Err("the node agent closed the connection".to_owned()),
                        Err(err) => Err(format!("the node agent session failed: {err}")),
                    }
                }
            },
        };
        if let Err(reason) = outcome {
            // Said once per distinct reason, not once a second.
            if last_logged.as_ref() != Some(&reason) {
                tracing::warn!(%reason, "node agent unavailable; enrolled pods keep being served, retrying");
                last_logged = Some(reason.clone());
            }
            status.update(|s| s.last_error = Some(reason));
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Whether the agent may enroll pods: its socket is root's or the
/// configured agent uid's.
fn check_peer(agent: &Datagrams, agent_uid: Option<u32>) -> Result<(), String> {
    let credentials = agent
        .peer_credentials()
        .map_err(|err| format!("its credentials are unreadable ({err})"))?;
    if credentials.uid() == 0 || Some(credentials.uid()) == agent_uid {
        return Ok(());
    }
    Err(format!(
        "its socket belongs to process {} running as uid {}; only root{} may enroll pods",
        credentials.pid(),
        credentials.uid(),
        agent_uid
            .map(|uid| format!(" or the node agent's uid {uid} (--node-agent-uid)"))
            .unwrap_or_default()
    ))
}

async fn session(agent: &Datagrams, pods: &Pods, status: &LinkStatus) -> std::io::Result<()> {
    agent.send(&encode_hello(), &[]).await?;
    // Pods named in the snapshot being received; `None` once it is done.
    let mut snapshot: Option<HashSet<String>> = Some(HashSet::new());
    while let Some(datagram) = agent.recv().await? {
        let outcome = match Request::decode(datagram) {
            Err(err) => Err(err.to_string()),
            Ok(request) => handle(request, pods, &mut snapshot, status).await,
        };
        if let Err(error) = &outcome {
            tracing::warn!(%error, "node agent request refused");
        }
        agent
            .send(
                &encode_ack(outcome.as_ref().map(drop).map_err(String::as_str)),
                &[],
            )
            .await?;
    }
    Ok(())
}

async fn handle(
    request: Request,
    pods: &Pods,
    snapshot: &mut Option<HashSet<String>>,
    status: &LinkStatus,
) -> Result<(), String> {
    match request {
        Request::Add { workload, netns } => {
            let uid = workload.uid.clone();
            let info = PodInfo {
                uid: workload.uid,
                name: workload.name,
                namespace: workload.namespace,
                service_account: if workload.service_account.is_empty() {
                    "default".into()
                } else {
                    workload.service_account
                },
                ips: Vec::new(),
            };
            pods.add(info, netns).await.map_err(|e| e.to_string())?;
            if let Some(named) = snapshot {
                named.insert(uid);
            }
            Ok(())
        }
        Request::Keep { uid } => {
            if !pods.serves(&uid) {
                return Err(format!(
                    "keep for pod {uid}, which this ztunnel does not serve; send add with its \
                     network namespace instead"
                ));
            }
            if let Some(named) = snapshot {
                named.insert(uid);
            }
            Ok(())
        }
        Request::Del { uid } => {
            if let Some(named) = snapshot {
                named.remove(&uid);
            }
            pods.remove(&uid).await;
            Ok(())
        }
        Request::SnapshotSent => {
            let Some(named) = snapshot.take() else {
                return Err("snapshot_sent, but this session's snapshot was already applied;                             reconnect to send a new one"
                    .to_owned());
            };
            pods.retain(&named).await;
            status.update(|s| s.snapshots += 1);
            tracing::info!(pods = named.len(), "node agent snapshot applied");
            Ok(())
        }
    }
}
