//! ztunnel's side of the node-agent protocol.

use std::{collections::HashSet, net::IpAddr, sync::Arc};

use prost::Message;
use weft_proto::weft::nodeagent::v1::{pod_request::Payload, Ack, Hello, PodRequest};

use super::{
    wire::{PacketListener, Packets},
    VERSION,
};
use crate::{pods::Pods, proxy::PodInfo};

/// Serves agents on `listener` until the task is dropped.
pub async fn serve(listener: PacketListener, pods: Arc<Pods>) {
    loop {
        let connection = match listener.accept().await {
            Ok(connection) => connection,
            Err(err) => {
                tracing::warn!(%err, "node-agent accept failed");
                continue;
            }
        };
        let pods = pods.clone();
        tokio::spawn(async move {
            if let Err(err) = session(&connection, &pods).await {
                tracing::warn!(%err, "node-agent session ended with an error");
            }
        });
    }
}

async fn reply(connection: &Packets, error: Option<String>) -> std::io::Result<()> {
    let ack = Ack {
        error: error.unwrap_or_default(),
    };
    connection.send(&ack.encode_to_vec(), &[]).await
}

async fn session(connection: &Packets, pods: &Pods) -> std::io::Result<()> {
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
                        pods.add(info, netns).await.map_err(|e| e.to_string())
                    }
                }
            }
            Some(Payload::Remove(remove)) => {
                seen.remove(&remove.uid);
                pods.remove(&remove.uid).await;
                Ok(())
            }
            Some(Payload::SnapshotDone(_)) => {
                pods.retain(&seen).await;
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
