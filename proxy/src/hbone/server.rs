//! Accepting HBONE: mTLS handshake, peer identity, CONNECT streams.

use bytes::Bytes;
use h2::{server::SendResponse, RecvStream};
use http::{HeaderMap, Method, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use weft_proto::spiffe::Identity;

use super::{
    tls::{peer_identity, TlsError, TrustBundle},
    CONNECTION_WINDOW, FRAME_SIZE, HANDSHAKE_TIMEOUT, MAX_STREAMS, SEND_BUFFER, STREAM_WINDOW,
};
use crate::copy::H2Stream;

/// Why an HBONE connection was refused before any stream.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("TLS handshake with {peer} failed: {source}")]
    Tls {
        peer: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("handshake with {0} timed out")]
    Timeout(std::net::SocketAddr),
    #[error("refused {peer}: {source}")]
    Identity {
        peer: std::net::SocketAddr,
        #[source]
        source: TlsError,
    },
    #[error("HTTP/2 with {peer} failed: {source}")]
    H2 {
        peer: std::net::SocketAddr,
        #[source]
        source: h2::Error,
    },
}

/// One CONNECT request on an accepted HBONE connection.
pub struct InboundConnect {
    /// The verified identity of the connecting workload.
    pub peer: Identity,
    /// Where the TCP connection came from (the source pod's address).
    pub peer_addr: std::net::SocketAddr,
    /// The `:authority`: the destination `ip:port`.
    pub authority: String,
    pub headers: HeaderMap,
    respond: SendResponse<Bytes>,
    recv: RecvStream,
}

impl InboundConnect {
    /// Refuses the stream with `status`.
    pub fn reject(mut self, status: StatusCode) {
        let response = Response::builder()
            .status(status)
            .body(())
            .expect("a status is a valid response");
        let _ = self.respond.send_response(response, true);
    }

    /// Answers 200 and returns the tunnel.
    pub fn accept(self) -> Result<H2Stream, h2::Error> {
        self.accept_with(&[])
    }

    /// Answers 200 with `headers` and returns the tunnel.
    pub fn accept_with(
        mut self,
        headers: &[(http::HeaderName, http::HeaderValue)],
    ) -> Result<H2Stream, h2::Error> {
        let mut response = Response::builder().status(StatusCode::OK);
        for (name, value) in headers {
            response = response.header(name, value);
        }
        let response = response.body(()).expect("valid response");
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream {
            send,
            recv: self.recv,
        })
    }
}

/// Serves one HBONE connection: verifies the client, then hands every
/// CONNECT stream to `handler` on its own task. Anything but CONNECT is
/// answered 400.
pub async fn serve<F, Fut>(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    trust: &TrustBundle,
    handler: F,
) -> Result<(), AcceptError>
where
    F: Fn(InboundConnect) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let peer_addr = tcp.peer_addr().map_err(|source| AcceptError::Tls {
        peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        acceptor.accept(tokio::io::BufReader::with_capacity(super::READ_BUFFER, tcp)),
    )
    .await
    .map_err(|_| AcceptError::Timeout(peer_addr))?
    .map_err(|source| AcceptError::Tls {
        peer: peer_addr,
        source,
    })?;
    let peer = peer_identity(tls.get_ref().1.peer_certificates(), trust).map_err(|source| {
        AcceptError::Identity {
            peer: peer_addr,
            source,
        }
    })?;
    // The HTTP/2 preface must follow the TLS handshake promptly too: a
    // client that stops after TLS holds nothing for long.
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(FRAME_SIZE)
        .max_send_buffer_size(SEND_BUFFER)
        .max_concurrent_streams(MAX_STREAMS)
        .handshake(tls);
    let mut connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| AcceptError::Timeout(peer_addr))?
        .map_err(|source| AcceptError::H2 {
            peer: peer_addr,
            source,
        })?;
    let handler = std::sync::Arc::new(handler);
    while let Some(accepted) = connection.accept().await {
        let (request, mut respond) = match accepted {
            Ok(accepted) => accepted,
            Err(source) => {
                return Err(AcceptError::H2 {
                    peer: peer_addr,
                    source,
                })
            }
        };
        if request.method() != Method::CONNECT {
            tracing::warn!(%peer, %peer_addr, method = %request.method(), "refused an HBONE request that is not CONNECT (400)");
            let response = Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(())
                .expect("valid response");
            let _ = respond.send_response(response, true);
            continue;
        }
        let authority = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let (parts, recv) = request.into_parts();
        let connect = InboundConnect {
            peer: peer.clone(),
            peer_addr,
            authority,
            headers: parts.headers,
            respond,
            recv,
        };
        tokio::spawn(handler(connect));
    }
    Ok(())
}
