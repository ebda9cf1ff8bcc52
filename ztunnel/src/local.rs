//! Same-node connections: both pods are served by this ztunnel, so the
//! connection never leaves the node and needs no tunnel.
//!
//! ztunnel decides it with the destination's policies exactly as its
//! inbound side would (the source's identity is known first-hand), reaches
//! the application from the client's own address, registers the connection
//! at both ends (metrics, connections table, live policy re-evaluation), and
//! then joins the two sockets inside the kernel ([`crate::splice`]; with
//! `--splice false` it copies them instead).

use std::net::SocketAddr;

use tokio::net::TcpStream;
use weft_proxy::{
    copy,
    metrics::ConnectionMeter,
    peer_metadata::{PeerClaims, PeerMetadata},
    state::Service,
};

use crate::{
    access_log::ConnectionLog,
    authorization, inbound,
    outbound::OutboundError,
    proxy::{PodContext, Proxy},
    splice,
};

enum Outcome<T> {
    Done(T),
    Revoked(String),
}

/// Carries `client` (captured from `src`) to the application of `dst` at
/// `authority`. `outbound` is the source-side registration's meter.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    proxy: &Proxy,
    src: &PodContext,
    dst: &PodContext,
    client: &mut TcpStream,
    peer: SocketAddr,
    authority: SocketAddr,
    outbound: &ConnectionMeter,
    service: Option<&Service>,
    log: &mut ConnectionLog,
) -> Result<copy::Transferred, OutboundError> {
    proxy.pod_known(dst).await;
    let attrs = authorization::attributes(dst, peer.ip(), Some(src.identity.clone()), authority);
    // What the source would have said on a CONNECT.
    let claims = PeerClaims {
        metadata: proxy
            .pod_workload(src)
            .map(|w| PeerMetadata::of(&w))
            .unwrap_or_default(),
        service_host: service.map(|s| s.hostname.clone()),
    };
    let opening = inbound::opening(
        proxy,
        dst,
        peer,
        authority,
        Some(&src.identity),
        &claims,
        attrs.clone(),
    );
    inbound::authorize(proxy, &attrs, log).map_err(OutboundError::Denied)?;
    let mut registration = proxy.connections.open(opening);
    // The connection to the application holds a place in the destination
    // pod's share.
    let _slot = proxy
        .claim(dst)
        .map_err(|refusal| OutboundError::Denied(refusal.to_string()))?;
    let upstream = inbound::connect_app(proxy, dst, authority, peer.ip())
        .await
        .map_err(|source| OutboundError::Connect {
            addr: authority,
            source,
        })?;
    let mut upstream = upstream.stream;
    let meter = ConnectionMeter {
        request: [outbound.request.clone(), registration.meter.request.clone()].concat(),
        response: [
            outbound.response.clone(),
            registration.meter.response.clone(),
        ]
        .concat(),
    };
    let copy_meter = copy::Meter::new(&meter, true);
    let outcome = if proxy.splices() {
        proxy.spliced_connections.inc();
        tokio::select! {
            result = splice::run(client, &upstream, &meter, &proxy.spliced_bytes) => Outcome::Done(
                result
                    .inspect(|moved| log.bytes_spliced = moved.sent + moved.received)
                    .map_err(|source| OutboundError::Splice { source }),
            ),
            reason = registration.revoked() => Outcome::Revoked(reason),
        }
    } else {
        tokio::select! {
            result = copy::tcp_tcp(client, &mut upstream, &copy_meter) => {
                Outcome::Done(result.map_err(OutboundError::from))
            }
            reason = registration.revoked() => Outcome::Revoked(reason),
        }
    };
    match outcome {
        Outcome::Done(result) => result,
        Outcome::Revoked(reason) => {
            // The application's side is reset here; the caller resets the
            // client's.
            let _ = socket2::SockRef::from(&upstream).set_linger(Some(std::time::Duration::ZERO));
            Err(OutboundError::Revoked(reason))
        }
    }
}
