//! Small applications tests run inside pods: stand-ins for user workloads.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};

/// Serves `listener` forever: for each connection, reads until the client
/// half-closes, then answers `"<name> saw <peer>: <request>"` and closes. The
/// reply lets a test check both that it reached the right server and which
/// source address the server saw.
pub fn spawn_echo(listener: std::net::TcpListener, name: &str) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let name = name.to_owned();
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, peer)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                if stream.read_to_end(&mut request).await.is_ok() {
                    let reply = echo_reply(&name, peer, &String::from_utf8_lossy(&request));
                    let _ = stream.write_all(reply.as_bytes()).await;
                }
            });
        }
    }))
}

/// The reply [`spawn_echo`] gives.
pub fn echo_reply(name: &str, peer: SocketAddr, request: &str) -> String {
    format!("{name} saw {}: {request}", peer.ip())
}

/// The JSON line `weft-probe` prints.
#[derive(Debug, serde::Deserialize)]
pub struct ProbeReport {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    pub socket_cookie: u64,
    pub reply: String,
}

impl ProbeReport {
    /// Parses the probe's stdout.
    pub fn parse(stdout: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(stdout)
    }
}
