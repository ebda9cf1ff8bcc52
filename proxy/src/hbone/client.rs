//! Opening HBONE: mTLS + HTTP/2 handshake to a peer's 15008, then CONNECT
//! streams on that connection.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use rustls::ClientConfig;
use tokio::{net::TcpStream, task::JoinHandle};
use tokio_rustls::TlsConnector;

use super::{
    CONNECTION_WINDOW, FRAME_SIZE, HANDSHAKE_TIMEOUT, SEND_BUFFER, STREAM_TIMEOUT, STREAM_WINDOW,
};
use crate::copy::H2Stream;

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {addr} failed: {source}")]
    Tls {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} did not negotiate HTTP/2 (ALPN h2); is it an HBONE port?")]
    NoH2 { addr: SocketAddr },
    #[error("handshake with {addr} timed out")]
    Timeout { addr: SocketAddr },
    #[error(
        "CONNECT {authority} through {addr} got no answer within {}s; is the destination \
         application or its ztunnel overloaded?",
        STREAM_TIMEOUT.as_secs()
    )]
    StreamTimeout { addr: SocketAddr, authority: String },
    #[error("HTTP/2 with {addr}: {source}")]
    H2 {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("{addr} answered CONNECT {authority} with {status}")]
    Status {
        addr: SocketAddr,
        authority: String,
        status: StatusCode,
    },
    #[error("no certificate for the source workload: {0}")]
    Certificate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// An HBONE connection: the handle to open streams, and its driver task.
pub struct Connection {
    pub send: SendRequest<Bytes>,
    pub driver: JoinHandle<()>,
    pub addr: SocketAddr,
}

/// TLS and HTTP/2 handshakes over an established TCP connection to `addr`.
pub async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> Result<Connection, HboneError> {
    let _ = tcp.set_nodelay(true);
    let work = async {
        // The verifier checks the peer's SPIFFE identity; the name is only
        // a formality of the TLS API.
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = TlsConnector::from(config)
            .connect(
                name,
                tokio::io::BufReader::with_capacity(super::READ_BUFFER, tcp),
            )
            .await
            .map_err(|source| HboneError::Tls { addr, source })?;
        if tls.get_ref().1.alpn_protocol() != Some(super::tls::ALPN_H2) {
            return Err(HboneError::NoH2 { addr });
        }
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(FRAME_SIZE)
            .max_send_buffer_size(SEND_BUFFER)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| HboneError::H2 { addr, source })?;
        Ok((send, connection))
    };
    let (send, mut connection) = tokio::time::timeout(HANDSHAKE_TIMEOUT, work)
        .await
        .map_err(|_| HboneError::Timeout { addr })??;
    let mut pings = connection.ping_pong();
    let driver = tokio::spawn(async move {
        let keepalive = async {
            // PING every 30 s; a peer that does not answer within 10 s is gone.
            let Some(pings) = pings.as_mut() else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                let pong = tokio::time::timeout(
                    std::time::Duration::from_secs(10),
                    pings.ping(h2::Ping::opaque()),
                )
                .await;
                if !matches!(pong, Ok(Ok(_))) {
                    tracing::warn!(%addr, "HBONE peer did not answer PING; closing the connection");
                    return;
                }
            }
        };
        tokio::select! {
            result = &mut connection => {
                if let Err(err) = result {
                    tracing::debug!(%addr, %err, "HBONE connection ended");
                }
            }
            () = keepalive => {}
        }
    });
    Ok(Connection { send, driver, addr })
}

/// Opens a CONNECT stream to `authority`; success is a 200 answer only.
pub async fn connect_stream(
    send: &SendRequest<Bytes>,
    addr: SocketAddr,
    authority: SocketAddr,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<H2Stream, HboneError> {
    let h2_error = |source| HboneError::H2 { addr, source };
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(authority.to_string());
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(())
        .expect("an authority and headers make a valid request");
    let exchange = async {
        let mut ready = send.clone().ready().await.map_err(h2_error)?;
        let (response, send_stream) = ready.send_request(request, false).map_err(h2_error)?;
        let response = response.await.map_err(h2_error)?;
        Ok::<_, HboneError>((response, send_stream))
    };
    let (response, send_stream) = tokio::time::timeout(STREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| HboneError::StreamTimeout {
            addr,
            authority: authority.to_string(),
        })??;
    if response.status() != StatusCode::OK {
        return Err(HboneError::Status {
            addr,
            authority: authority.to_string(),
            status: response.status(),
        });
    }
    Ok(H2Stream {
        send: send_stream,
        recv: response.into_body(),
    })
}
