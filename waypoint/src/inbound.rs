//! The waypoint's HBONE listener: mTLS with the waypoint's own identity,
//! one CONNECT per client connection, whose authority is the original
//! destination (a service VIP:port, or a pod's address). What the tunnel
//! carries decides what happens: HTTP/1.1 or HTTP/2 is proxied request by
//! request ([`crate::http`]), anything else at L4 ([`crate::tcp`]).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::StatusCode;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use weft_proxy::hbone::{
    io::H2Io,
    server::{self, InboundConnect},
    tls::{server_config, TlsError, WorkloadCertResolver},
};

use crate::{
    http::{Downstream, Version},
    proxy::{Target, Waypoint},
    routes::AppProtocol,
    tcp,
};

/// How long the waypoint waits for a client's first bytes before taking
/// the tunnel for a protocol where the server speaks first (L4).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a port declared HTTP waits for the request's first line.
const HTTP_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// What a tunnel's first bytes say it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    Http(Version),
    Opaque,
    /// Too few bytes to tell yet.
    NeedMore,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Recognises HTTP/2's connection preface and an HTTP/1.x request line
/// (`TOKEN SP target SP HTTP/1.x`); everything else is opaque.
pub fn sniff(bytes: &[u8]) -> Sniffed {
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniffed::Http(Version::Http2)
        } else {
            Sniffed::NeedMore
        };
    }
    let line_end = bytes.iter().position(|b| *b == b'\n');
    let line = &bytes[..line_end.unwrap_or(bytes.len())];
    // Any token is taken as a method (a lower-case one is then refused with
    // 400): what looks like HTTP is never carried at L4 past L7 policy.
    let method_len = line
        .iter()
        .take_while(|b| b.is_ascii_alphabetic() || **b == b'-')
        .count();
    if method_len == 0 || method_len > 16 {
        return Sniffed::Opaque;
    }
    if line.len() == method_len {
        return if line_end.is_none() {
            Sniffed::NeedMore
        } else {
            Sniffed::Opaque
        };
    }
    if line[method_len] != b' ' {
        return Sniffed::Opaque;
    }
    match line_end {
        None if line.len() < 1024 => Sniffed::NeedMore,
        None => Sniffed::Opaque,
        Some(_) => {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0") {
                Sniffed::Http(Version::Http1)
            } else {
                Sniffed::Opaque
            }
        }
    }
}

/// The waypoint's HBONE server: one TLS configuration for every worker,
/// one call per accepted connection.
#[derive(Clone)]
pub struct Server {
    wp: Arc<Waypoint>,
    acceptor: TlsAcceptor,
}

impl Server {
    pub fn new(wp: Arc<Waypoint>) -> Result<Self, TlsError> {
        let (certs, identity) = (wp.certs.clone(), wp.identity.clone());
        let resolver = Arc::new(WorkloadCertResolver::new(move || certs.current(&identity)));
        let acceptor = TlsAcceptor::from(server_config(resolver, &wp.trust)?);
        Ok(Server { wp, acceptor })
    }

    /// Serves one accepted connection's tunnels until it closes.
    pub async fn serve(self, tcp: TcpStream, peer: SocketAddr) {
        let Server { wp, acceptor } = self;
        let trust = wp.trust.clone();
        let result = server::serve(tcp, acceptor, &trust, move |connect| {
            let wp = wp.clone();
            async move { tunnel(wp, connect).await }
        })
        .await;
        if let Err(err) = result {
            tracing::warn!(%peer, %err, "refused an HBONE connection");
        }
    }
}

async fn tunnel(wp: Arc<Waypoint>, connect: InboundConnect) {
    let peer = connect.peer_addr;
    let identity = connect.peer.clone();
    let Ok(authority) = connect.authority.parse::<SocketAddr>() else {
        tracing::warn!(%peer, authority = %connect.authority, "CONNECT authority is not ip:port (400)");
        return connect.reject(StatusCode::BAD_REQUEST);
    };
    if let Err(err) = wp.config_ready().await {
        tracing::warn!(%peer, %authority, %err, "refused a tunnel (503)");
        return connect.reject(StatusCode::SERVICE_UNAVAILABLE);
    }
    let target = match wp.target(authority) {
        Ok(target) => target,
        Err(err) => {
            tracing::warn!(%peer, src.identity = %identity, %authority, %err, "refused a tunnel (400)");
            return connect.reject(StatusCode::BAD_REQUEST);
        }
    };
    let claims = weft_proxy::peer_metadata::PeerClaims::from_headers(&connect.headers);
    let stream = match connect.accept() {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%peer, %err, "tunnel closed before it was answered");
            return;
        }
    };
    let mut io = H2Io::new(stream);
    let declared = match &target {
        Target::Service { service, port } => wp
            .routes
            .get(service.key())
            .and_then(|r| r.protocols.get(port).copied()),
        Target::Workload { .. } => None,
    };
    let sniffed = match declared {
        // Declared not HTTP: carried from the first byte, whoever speaks
        // first.
        Some(AppProtocol::Tcp) => Sniffed::Opaque,
        Some(AppProtocol::Http2) => Sniffed::Http(Version::Http2),
        // Declared HTTP: HTTP/1.1 or HTTP/2 by the first bytes, never L4.
        Some(AppProtocol::Http) => {
            match tokio::time::timeout(HTTP_HEAD_TIMEOUT, sniff_stream(&mut io)).await {
                Ok(Ok(Sniffed::Http(version))) => Sniffed::Http(version),
                Ok(Ok(_)) | Err(_) => {
                    tracing::warn!(%peer, %authority, "not HTTP on a port declared HTTP; tunnel closed");
                    return;
                }
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "tunnel ended before it carried anything");
                    return;
                }
            }
        }
        None => match tokio::time::timeout(SNIFF_TIMEOUT, sniff_stream(&mut io)).await {
            Ok(Ok(sniffed)) => sniffed,
            Ok(Err(err)) => {
                tracing::debug!(%peer, %err, "tunnel ended before it carried anything");
                return;
            }
            // The client says nothing: a protocol where the server speaks
            // first. Carried at L4.
            Err(_) => Sniffed::Opaque,
        },
    };
    match sniffed {
        Sniffed::Http(version) => {
            let down = Arc::new(Downstream::new(
                &wp, peer, identity, authority, target, version, claims,
            ));
            if let Err(err) = crate::http::serve(wp, io, down).await {
                tracing::debug!(%peer, %err, "HTTP connection ended with an error");
            }
        }
        Sniffed::Opaque | Sniffed::NeedMore => {
            tcp::forward(&wp, io, peer, &identity, authority, &target).await
        }
    }
}

/// Reads until the first bytes tell the protocol (or the stream ends).
async fn sniff_stream(io: &mut H2Io) -> std::io::Result<Sniffed> {
    let mut seen = 0;
    loop {
        let bytes = io.peek_more().await?;
        if bytes.len() == seen {
            // The peer ended the stream: whatever it sent is all there is.
            return Ok(match sniff(bytes) {
                Sniffed::NeedMore => Sniffed::Opaque,
                other => other,
            });
        }
        seen = bytes.len();
        match sniff(bytes) {
            Sniffed::NeedMore => continue,
            other => return Ok(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_http_from_anything_else() {
        let cases: [(&[u8], Sniffed); 12] = [
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                Sniffed::Http(Version::Http1),
            ),
            (b"POST /x?y=1 HTTP/1.0\r\n", Sniffed::Http(Version::Http1)),
            (b"OPTIONS * HTTP/1.1\n", Sniffed::Http(Version::Http1)),
            (H2_PREFACE, Sniffed::Http(Version::Http2)),
            (b"PRI * HTTP/2.0\r\n", Sniffed::NeedMore),
            (b"GE", Sniffed::NeedMore),
            (b"GET /long", Sniffed::NeedMore),
            (b"\x16\x03\x01\x02\x00", Sniffed::Opaque),
            (b"SSH-2.0-OpenSSH\r\n", Sniffed::Opaque),
            (b"get / HTTP/1.1\r\n", Sniffed::Http(Version::Http1)),
            (b"GET / HTTP/2.0\r\n", Sniffed::Opaque),
            (b"HELLO\r\n", Sniffed::Opaque),
        ];
        for (bytes, expected) in cases {
            assert_eq!(
                sniff(bytes),
                expected,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}
