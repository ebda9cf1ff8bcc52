//! ztunnel's side of the node-agent protocol.
//!
//! Who may speak it: only a peer running as root or as the configured
//! node-agent uid (`SO_PEERCRED`), as the socket's file mode already says.
//! Several sessions may be open (an agent being replaced), but they are not
//! equal: pods are added only by the newest session, any session may remove
//! a pod, and a snapshot speaks for its own session — it releases the pods
//! that session did not name and pods nobody connected added, never the
//! pods of another live session.

use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use prost::Message;
use weft_proto::weft::nodeagent::v1::{pod_request::Payload, Ack, Hello, PodRequest};

use super::{
    wire::{PacketListener, Packets},
    VERSION,
};
use crate::{pods::Pods, proxy::PodInfo};

/// The open sessions.
#[derive(Default)]
struct Sessions {
    next: AtomicU64,
    live: Mutex<BTreeSet<u64>>,
}

/// A session's place among the open ones; it leaves when dropped.
struct Session<'a> {
    id: u64,
    sessions: &'a Sessions,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.sessions
            .live
            .lock()
            .expect("sessions lock")
            .remove(&self.id);
    }
}

impl Sessions {
    fn open(&self) -> Session<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.live.lock().expect("sessions lock").insert(id);
        Session { id, sessions: self }
    }

    fn newest(&self) -> Option<u64> {
        self.live.lock().expect("sessions lock").last().copied()
    }

    fn live(&self) -> HashSet<u64> {
        self.live
            .lock()
            .expect("sessions lock")
            .iter()
            .copied()
            .collect()
    }
}

/// Serves agents on `listener` until the task is dropped. Peers other than
/// root and `agent_uid` are refused.
pub async fn serve(listener: PacketListener, pods: Arc<Pods>, agent_uid: Option<u32>) {
    let sessions = Arc::new(Sessions::default());
    loop {
        let connection = match listener.accept().await {
            Ok(connection) => connection,
            Err(err) => {
                tracing::warn!(%err, "node-agent accept failed");
                continue;
            }
        };
        let (pods, sessions) = (pods.clone(), sessions.clone());
        tokio::spawn(async move {
            if let Err(refusal) = check_peer(&connection, agent_uid) {
                tracing::warn!(%refusal, "refused a node-agent connection");
                // Its Hello is read first: a socket closed with unread data
                // would reset the peer before it reads the reason.
                let hello =
                    tokio::time::timeout(std::time::Duration::from_secs(1), connection.recv());
                let _ = hello.await;
                let _ = reply(&connection, Some(refusal)).await;
                return;
            }
            if let Err(err) = session(&connection, &pods, &sessions).await {
                tracing::warn!(%err, "node-agent session ended with an error");
            }
        });
    }
}

/// Whether the peer may enroll pods: root or the configured agent uid.
fn check_peer(connection: &Packets, agent_uid: Option<u32>) -> Result<(), String> {
    let credentials = connection
        .peer_credentials()
        .map_err(|err| format!("its credentials are unreadable ({err})"))?;
    if credentials.uid() == 0 || Some(credentials.uid()) == agent_uid {
        return Ok(());
    }
    Err(format!(
        "process {} runs as uid {}; only root{} may enroll pods",
        credentials.pid(),
        credentials.uid(),
        agent_uid
            .map(|uid| format!(" or the node agent's uid {uid} (--node-agent-uid)"))
            .unwrap_or_default()
    ))
}

async fn reply(connection: &Packets, error: Option<String>) -> std::io::Result<()> {
    let ack = Ack {
        error: error.unwrap_or_default(),
    };
    connection.send(&ack.encode_to_vec(), &[]).await
}

async fn session(connection: &Packets, pods: &Pods, sessions: &Sessions) -> std::io::Result<()> {
    let Some((hello, _)) = connection.recv().await? else {
        return Ok(());
    };
    match Hello::decode(hello.as_slice()) {
        Ok(h) if h.version == VERSION => reply(connection, None).await?,
        Ok(h) => {
            let message = format!(
                "node-agent protocol version {} is not supported (this ztunnel speaks {VERSION})",
                h.version
            );
            reply(connection, Some(message)).await?;
            return Ok(());
        }
        Err(err) => {
            reply(
                connection,
                Some(format!("the first message must be Hello: {err}")),
            )
            .await?;
            return Ok(());
        }
    }
    let session = sessions.open();
    let newest = || sessions.newest() == Some(session.id);
    // Pods named since the session began; a snapshot keeps only these.
    let mut seen: HashSet<String> = HashSet::new();
    while let Some((bytes, mut fds)) = connection.recv().await? {
        let request = match PodRequest::decode(bytes.as_slice()) {
            Ok(request) => request,
            Err(err) => {
                reply(connection, Some(format!("undecodable PodRequest: {err}"))).await?;
                continue;
            }
        };
        let outcome = match request.payload {
            Some(Payload::Add(_)) | Some(Payload::SnapshotDone(_)) if !newest() => Err(
                "a newer node-agent session is connected; pods are added and snapshots taken \
                 through it only"
                    .to_owned(),
            ),
            Some(Payload::Add(add)) => {
                let info = add.info.unwrap_or_default();
                let ips: Result<Vec<IpAddr>, String> = info
                    .addresses
                    .iter()
                    .map(|a| weft_proxy::state::workload::ip_from_bytes(a))
                    .collect();
                match (ips, fds.len()) {
                    (Err(reason), _) => Err(format!("pod {}: {reason}", add.uid)),
                    (Ok(_), n) if n != 1 => Err(format!(
                        "add for pod {} carried {n} descriptors; it must carry exactly its network namespace",
                        add.uid
                    )),
                    (Ok(ips), _) => {
                        let netns = fds.pop().expect("one descriptor");
                        seen.insert(add.uid.clone());
                        let info = PodInfo {
                            uid: add.uid,
                            name: info.name,
                            namespace: info.namespace,
                            service_account: if info.service_account.is_empty() {
                                "default".into()
                            } else {
                                info.service_account
                            },
                            ips,
                        };
                        pods.add(info, netns, session.id)
                            .await
                            .map_err(|e| e.to_string())
                    }
                }
            }
            Some(Payload::Remove(remove)) => {
                seen.remove(&remove.uid);
                pods.remove(&remove.uid).await;
                Ok(())
            }
            Some(Payload::SnapshotDone(_)) => {
                pods.retain(session.id, &seen, &sessions.live()).await;
                Ok(())
            }
            None => Err("empty PodRequest".into()),
        };
        if let Err(error) = &outcome {
            tracing::warn!(%error, "node-agent request failed");
        }
        reply(connection, outcome.err()).await?;
    }
    Ok(())
}
