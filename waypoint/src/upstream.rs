//! Connections from the waypoint to the endpoint it chose: an HBONE stream
//! (from the pool, presenting the waypoint's identity and requiring the
//! endpoint's) when the endpoint is in the mesh, plain TCP when it is not.

use std::{
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use weft_proxy::{
    balance::Endpoint,
    hbone::{
        client::{handshake, HboneError},
        io::H2Io,
        pool::{PoolKey, PooledStream},
        tls::client_config,
        HBONE_PORT,
    },
    state::TunnelProtocol,
};

use crate::proxy::Waypoint;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no certificate for the waypoint: {0}")]
    Certificate(String),
    #[error(transparent)]
    Hbone(#[from] HboneError),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A byte stream to the endpoint.
pub enum UpstreamIo {
    Tunnel {
        io: H2Io,
        /// Keeps the pooled connection's stream count until the stream ends.
        _pooled: PooledStream,
    },
    Plain(TcpStream),
}

/// Opens a stream to `endpoint` (its address and target port).
/// Connects to `endpoint`: over HBONE (the CONNECT carrying `tunnel`'s
/// headers) unless it is outside the mesh.
pub async fn connect(
    wp: &Waypoint,
    endpoint: &Endpoint,
    tunnel: &[(http::HeaderName, http::HeaderValue)],
) -> Result<UpstreamIo, UpstreamError> {
    let destination = &endpoint.workload;
    if destination.protocol == TunnelProtocol::None {
        let stream =
            TcpStream::connect(endpoint.addr)
                .await
                .map_err(|source| UpstreamError::Connect {
                    addr: endpoint.addr,
                    source,
                })?;
        let _ = stream.set_nodelay(true);
        return Ok(UpstreamIo::Plain(stream));
    }
    let hbone = SocketAddr::new(endpoint.addr.ip(), HBONE_PORT);
    let cert = wp
        .certs
        .fetch(&wp.identity)
        .await
        .map_err(|e| UpstreamError::Certificate(e.to_string()))?;
    let key = PoolKey {
        source_workload: wp.source_workload.clone(),
        source: wp.identity.clone(),
        destination: destination.identity.clone(),
        address: hbone,
    };
    let mut pooled = wp
        .pool
        .stream(&key, endpoint.addr, tunnel, || {
            let (cert, identity, trust) = (cert.clone(), destination.identity.clone(), &wp.trust);
            async move {
                let config = client_config(&cert, &identity, trust)
                    .map_err(|e| HboneError::Config(e.to_string()))?;
                let tcp =
                    TcpStream::connect(hbone)
                        .await
                        .map_err(|source| HboneError::Connect {
                            addr: hbone,
                            source,
                        })?;
                handshake(tcp, hbone, config).await
            }
        })
        .await?;
    let io = H2Io::new(pooled.take());
    Ok(UpstreamIo::Tunnel {
        io,
        _pooled: pooled,
    })
}

impl AsyncRead for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel { io, .. } => Pin::new(io).poll_read(cx, buf),
            UpstreamIo::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Tunnel { io, .. } => Pin::new(io).poll_write(cx, buf),
            UpstreamIo::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel { io, .. } => Pin::new(io).poll_flush(cx),
            UpstreamIo::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Tunnel { io, .. } => Pin::new(io).poll_shutdown(cx),
            UpstreamIo::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
        }
    }
}
