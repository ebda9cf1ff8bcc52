//! The agent's side of the node-agent protocol (used by `weft local` and
//! tests, as the CNI plugin would).

use std::{
    net::IpAddr,
    os::fd::{AsFd, AsRawFd},
    path::Path,
};

use prost::Message;
use weft_proto::weft::nodeagent::v1::{
    pod_request::Payload, Ack, AddPod, Hello, PodInfo, PodRequest, RemovePod, SnapshotDone,
};

use super::{wire::Packets, VERSION};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("node-agent socket {path}: {source}; is ztunnel running on this node?")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("node-agent socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("ztunnel closed the node-agent connection")]
    Closed,
    #[error("ztunnel's answer is not an Ack: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("ztunnel refused: {0}")]
    Refused(String),
}

/// A connection to a ztunnel's node-agent socket.
pub struct AgentClient {
    packets: Packets,
}

/// A pod, as the agent describes it.
pub struct Pod<'a> {
    pub uid: &'a str,
    pub name: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub ips: &'a [IpAddr],
}

impl AgentClient {
    /// Connects and says hello.
    pub async fn connect(path: &Path) -> Result<Self, AgentError> {
        let packets = Packets::connect(path).map_err(|source| AgentError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let client = Self { packets };
        client
            .request(&Hello { version: VERSION }.encode_to_vec(), &[])
            .await?;
        Ok(client)
    }

    async fn request(&self, bytes: &[u8], fds: &[std::os::fd::RawFd]) -> Result<(), AgentError> {
        self.packets.send(bytes, fds).await?;
        let (answer, _) = self.packets.recv().await?.ok_or(AgentError::Closed)?;
        let ack = Ack::decode(answer.as_slice())?;
        if ack.error.is_empty() {
            Ok(())
        } else {
            Err(AgentError::Refused(ack.error))
        }
    }

    /// Enrolls a pod, handing over its network namespace.
    pub async fn add(&self, pod: &Pod<'_>, netns: impl AsFd) -> Result<(), AgentError> {
        let request = PodRequest {
            payload: Some(Payload::Add(AddPod {
                uid: pod.uid.to_owned(),
                info: Some(PodInfo {
                    name: pod.name.to_owned(),
                    namespace: pod.namespace.to_owned(),
                    service_account: pod.service_account.to_owned(),
                    addresses: pod
                        .ips
                        .iter()
                        .map(|ip| match ip {
                            IpAddr::V4(v4) => v4.octets().to_vec(),
                            IpAddr::V6(v6) => v6.octets().to_vec(),
                        })
                        .collect(),
                }),
            })),
        };
        self.request(&request.encode_to_vec(), &[netns.as_fd().as_raw_fd()])
            .await
    }

    /// Releases a pod.
    pub async fn remove(&self, uid: &str) -> Result<(), AgentError> {
        let request = PodRequest {
            payload: Some(Payload::Remove(RemovePod {
                uid: uid.to_owned(),
            })),
        };
        self.request(&request.encode_to_vec(), &[]).await
    }

    /// Ends a snapshot: ztunnel releases the pods this session did not add.
    pub async fn snapshot_done(&self) -> Result<(), AgentError> {
        let request = PodRequest {
            payload: Some(Payload::SnapshotDone(SnapshotDone {})),
        };
        self.request(&request.encode_to_vec(), &[]).await
    }
}
