//! The node agent's side of ZDS: it listens, greets each ztunnel that
//! connects with a snapshot of the node's pods, then sends changes.
//!
//! Two ztunnels may be connected at once (a rolling update: the new one
//! starts before the old one stops). Adds go to the newest connection only;
//! deletes go to all of them, so that neither keeps serving a pod that is
//! gone. A connection joins the set only after its snapshot, and snapshots,
//! adds and deletes take turns, so no change can fall between a snapshot
//! and the changes after it.

use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

use super::{
    messages::{
        decode_ack, decode_hello, encode_add, encode_del, encode_snapshot_sent, Workload, ZdsError,
    },
    wire::{DatagramListener, Datagrams},
};

/// How long a connecting ztunnel has to say hello, and ztunnel to answer
/// one request.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// A pod the agent hands to ztunnel.
#[derive(Clone, Debug)]
pub struct AgentPod {
    pub workload: Workload,
    pub netns: Arc<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "no ztunnel is connected to the node agent at {socket}; the pod is held and handed over \
         as soon as ztunnel connects"
    )]
    NoZtunnel { socket: String },
    #[error("ztunnel refused pod {uid}: {reason}")]
    Refused { uid: String, reason: String },
}

/// Why one request on a connection got no answer.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("the connection is gone: {0}")]
    Gone(std::io::Error),
    #[error("no answer in {0:?}")]
    Timeout(Duration),
    #[error("the answer is not an ack: {0}")]
    Protocol(#[from] ZdsError),
}

struct Connection {
    id: u64,
    datagrams: Datagrams,
    /// One request at a time: an ack answers the request before it.
    turn: tokio::sync::Mutex<()>,
}

impl Connection {
    async fn request(
        &self,
        bytes: &[u8],
        fd: Option<RawFd>,
    ) -> Result<Result<(), String>, ConnectionError> {
        let _turn = self.turn.lock().await;
        let fds: Vec<RawFd> = fd.into_iter().collect();
        self.datagrams
            .send(bytes, &fds)
            .await
            .map_err(ConnectionError::Gone)?;
        let answer = tokio::time::timeout(ACK_TIMEOUT, self.datagrams.recv())
            .await
            .map_err(|_| ConnectionError::Timeout(ACK_TIMEOUT))?
            .map_err(ConnectionError::Gone)?
            .ok_or_else(|| {
                ConnectionError::Gone(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
            })?;
        Ok(decode_ack(&answer.bytes)?)
    }
}

struct Inner {
    socket: PathBuf,
    /// The pods of the node that are in the mesh, by uid.
    pods: Mutex<BTreeMap<String, AgentPod>>,
    /// Pods ztunnel refused, with its reason (until they are added again).
    refused: Mutex<BTreeMap<String, String>>,
    /// Oldest first.
    connections: Mutex<Vec<Arc<Connection>>>,
    /// Snapshots, adds and deletes take turns.
    changes: tokio::sync::Mutex<()>,
    next_id: AtomicU64,
    connected: watch::Sender<usize>,
}

impl Inner {
    fn drop_connection(&self, id: u64, why: &ConnectionError) {
        let mut connections = self.connections.lock().expect("connections lock");
        let before = connections.len();
        connections.retain(|c| c.id != id);
        if connections.len() != before {
            tracing::info!(connection = id, reason = %why, "ztunnel disconnected from the node agent");
            self.connected.send_replace(connections.len());
        }
    }

    fn newest(&self) -> Option<Arc<Connection>> {
        self.connections
            .lock()
            .expect("connections lock")
            .last()
            .cloned()
    }

    fn all(&self) -> Vec<Arc<Connection>> {
        self.connections.lock().expect("connections lock").clone()
    }

    /// Greets a new ztunnel: its hello, the snapshot, then it joins.
    async fn greet(&self, datagrams: Datagrams) -> Result<(), String> {
        let hello = tokio::time::timeout(HELLO_TIMEOUT, datagrams.recv())
            .await
            .map_err(|_| format!("no hello within {HELLO_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?
            .ok_or("it closed before saying hello")?;
        decode_hello(&hello.bytes).map_err(|e| e.to_string())?;
        let connection = Arc::new(Connection {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            datagrams,
            turn: tokio::sync::Mutex::new(()),
        });
        let _turn = self.changes.lock().await;
        let pods: Vec<AgentPod> = self
            .pods
            .lock()
            .expect("pods lock")
            .values()
            .cloned()
            .collect();
        for pod in &pods {
            let answer = connection
                .request(&encode_add(&pod.workload), Some(pod.netns.as_raw_fd()))
                .await
                .map_err(|e| e.to_string())?;
            if let Err(reason) = answer {
                self.refuse(&pod.workload.uid, reason);
            }
        }
        connection
            .request(&encode_snapshot_sent(), None)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|reason| format!("ztunnel refused the snapshot: {reason}"))?;
        let mut connections = self.connections.lock().expect("connections lock");
        connections.push(connection.clone());
        self.connected.send_replace(connections.len());
        tracing::info!(
            connection = connection.id,
            pods = pods.len(),
            "ztunnel connected; snapshot sent"
        );
        Ok(())
    }

    fn refuse(&self, uid: &str, reason: String) {
        tracing::warn!(pod = %uid, %reason, "ztunnel refused a pod");
        self.pods.lock().expect("pods lock").remove(uid);
        self.refused
            .lock()
            .expect("refused lock")
            .insert(uid.to_owned(), reason);
    }
}

/// A node agent's ZDS server.
pub struct Agent {
    inner: Arc<Inner>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().expect("accept lock").take() {
            accept.abort();
        }
    }
}

impl Agent {
    /// Listens at `path` (mode 0600; a stale socket file is replaced) and
    /// serves every ztunnel that connects.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let agent = Self::new(path);
        agent.listen()?;
        Ok(agent)
    }

    /// An agent for `path` that does not listen yet: pods added now are
    /// held for the first ztunnel's snapshot (a restarted agent gathers
    /// them before ztunnel can ask).
    pub fn new(path: &Path) -> Self {
        let inner = Arc::new(Inner {
            socket: path.to_owned(),
            pods: Mutex::default(),
            refused: Mutex::default(),
            connections: Mutex::default(),
            changes: tokio::sync::Mutex::new(()),
            next_id: AtomicU64::new(0),
            connected: watch::channel(0).0,
        });
        Self {
            inner,
            accept: Mutex::new(None),
        }
    }

    /// Starts listening (once).
    pub fn listen(&self) -> std::io::Result<()> {
        let mut accept = self.accept.lock().expect("accept lock");
        if accept.is_some() {
            return Ok(());
        }
        let listener = DatagramListener::bind(&self.inner.socket)?;
        let serving = self.inner.clone();
        *accept = Some(tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok(datagrams) => {
                        let inner = serving.clone();
                        tokio::spawn(async move {
                            if let Err(reason) = inner.greet(datagrams).await {
                                tracing::warn!(%reason, "a ztunnel connection was not taken");
                            }
                        });
                    }
                    Err(err) => {
                        tracing::warn!(%err, "node agent accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
        Ok(())
    }

    pub fn socket(&self) -> &Path {
        &self.inner.socket
    }

    /// Hands a pod to the newest ztunnel and returns once it acked. With
    /// no ztunnel connected, the pod is kept for the next snapshot and
    /// [`AgentError::NoZtunnel`] says so; a refused pod is forgotten (what
    /// the agent held for its uid before stays).
    pub async fn add(&self, pod: AgentPod) -> Result<(), AgentError> {
        let _turn = self.inner.changes.lock().await;
        let uid = pod.workload.uid.clone();
        self.inner
            .refused
            .lock()
            .expect("refused lock")
            .remove(&uid);
        let previous = self
            .inner
            .pods
            .lock()
            .expect("pods lock")
            .insert(uid.clone(), pod.clone());
        while let Some(connection) = self.inner.newest() {
            match connection
                .request(&encode_add(&pod.workload), Some(pod.netns.as_raw_fd()))
                .await
            {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(reason)) => {
                    self.inner.refuse(&uid, reason.clone());
                    // ztunnel still serves what it had for this uid; the
                    // next snapshot names that, not the refused one.
                    if let Some(previous) = previous {
                        self.inner
                            .pods
                            .lock()
                            .expect("pods lock")
                            .insert(uid.clone(), previous);
                    }
                    return Err(AgentError::Refused { uid, reason });
                }
                Err(err) => self.inner.drop_connection(connection.id, &err),
            }
        }
        Err(AgentError::NoZtunnel {
            socket: self.inner.socket.display().to_string(),
        })
    }

    /// Takes a pod away from every connected ztunnel. Unknown pods and no
    /// ztunnel at all are fine: nobody serves them then.
    pub async fn remove(&self, uid: &str) {
        let _turn = self.inner.changes.lock().await;
        self.inner.pods.lock().expect("pods lock").remove(uid);
        self.inner.refused.lock().expect("refused lock").remove(uid);
        for connection in self.inner.all() {
            match connection.request(&encode_del(uid), None).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => {
                    tracing::warn!(pod = %uid, %reason, "ztunnel refused a delete")
                }
                Err(err) => self.inner.drop_connection(connection.id, &err),
            }
        }
    }

    /// The pods held for ztunnel, by uid.
    pub fn pods(&self) -> Vec<String> {
        self.inner
            .pods
            .lock()
            .expect("pods lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Who the held pod `uid` is.
    pub fn workload(&self, uid: &str) -> Option<Workload> {
        self.inner
            .pods
            .lock()
            .expect("pods lock")
            .get(uid)
            .map(|p| p.workload.clone())
    }

    /// Pods ztunnel refused, with its reasons.
    pub fn refused(&self) -> BTreeMap<String, String> {
        self.inner.refused.lock().expect("refused lock").clone()
    }

    /// Connected ztunnels (those that closed are noticed at the next
    /// request, or here).
    pub fn connections(&self) -> usize {
        let mut connections = self.inner.connections.lock().expect("connections lock");
        connections.retain(|c| !c.datagrams.peer_closed());
        self.inner.connected.send_replace(connections.len());
        connections.len()
    }

    /// Waits until at least `count` ztunnels are connected (each one's
    /// snapshot acked); false on timeout.
    pub async fn wait_connected(&self, count: usize, timeout: Duration) -> bool {
        let mut connected = self.inner.connected.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.connections() >= count {
                return true;
            }
            let tick = tokio::time::sleep_until(
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(100)),
            );
            tokio::select! {
                _ = connected.changed() => {}
                _ = tick => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return self.connections() >= count;
            }
        }
    }
}
