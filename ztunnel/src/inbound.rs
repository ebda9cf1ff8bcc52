//! Inbound: HBONE tunnels on 15008 and plaintext on 15006, to the pod's
//! application.
//!
//! Both reach the application from the client's own address (a transparent
//! socket inside the pod), so the application sees who connected. HBONE
//! requires a client certificate chained to the mesh root in this trust
//! domain; a CONNECT whose authority is not this pod's address is refused
//! with 400, and one the application refuses gets 503.

use std::{net::SocketAddr, sync::Arc};

use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use weft_proxy::{
    copy,
    hbone::{
        server::{self, InboundConnect},
        tls::{server_config, WorkloadCertResolver},
    },
};

use weft_proxy::{
    authz::Decision,
    metrics::{Ends, Reporter, TcpLabels},
    peer_metadata::{PeerClaims, PeerMetadata},
};

use crate::{
    access_log::ConnectionLog,
    authorization,
    connections::Opening,
    guard::{self, Refusal},
    proxy::{PodContext, Proxy},
    socket::{self, TPROXY_MARK},
};

/// Connects to the pod's application at `app` from the client's own
/// address `source`, through a transparent socket inside the pod.
pub(crate) async fn connect_app(
    proxy: &Proxy,
    pod: &PodContext,
    app: SocketAddr,
    source: std::net::IpAddr,
) -> std::io::Result<Upstream> {
    let (socket, bound) = socket::transparent(&pod.netns, app, TPROXY_MARK, source)?;
    // Bound already, so registered before the SYN leaves.
    let own = proxy.guard.own_sockets.register(pod.cookie, bound);
    let connect = proxy.capture.connect_upstream(socket, bound, app);
    let stream = tokio::time::timeout(socket::CONNECT_TIMEOUT, connect)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {}s", socket::CONNECT_TIMEOUT.as_secs()),
            )
        })??;
    Ok(Upstream { stream, _own: own })
}

/// ztunnel's connection to a pod's application; known as ztunnel's own
/// while it lives.
pub(crate) struct Upstream {
    pub stream: TcpStream,
    _own: crate::guard::OwnSocket,
}

/// Serves HBONE for the pod until the listener is dropped.
pub async fn serve_hbone(proxy: Arc<Proxy>, pod: Arc<PodContext>, listener: TcpListener) {
    let (certs, identity) = (proxy.certs.clone(), pod.identity.clone());
    let resolver = Arc::new(WorkloadCertResolver::new(move || certs.current(&identity)));
    let acceptor = match server_config(resolver, &proxy.trust) {
        Ok(config) => TlsAcceptor::from(config),
        Err(err) => {
            tracing::error!(pod = %pod.info.uid, %err, "cannot serve HBONE");
            return;
        }
    };
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(pod = %pod.info.uid, %err, "HBONE accept failed");
                socket::after_accept_error().await;
                continue;
            }
        };
        // HBONE comes from other pods' ztunnels over the network; on the
        // pod's loopback it can only be the pod itself.
        let local = tcp.local_addr().ok();
        if let Some(local) = local.filter(|l| l.ip().to_canonical().is_loopback()) {
            let log = ConnectionLog::new("inbound", peer, local);
            proxy
                .guard
                .refuse(&tcp, log, &Refusal::OwnEndpoint { dst: local });
            continue;
        }
        // Each HBONE connection holds a descriptor in the pod's share.
        let slot = match proxy.claim(&pod) {
            Ok(slot) => slot,
            Err(refusal) => {
                let log = ConnectionLog::new("inbound", peer, local.unwrap_or(peer));
                proxy.guard.refuse(&tcp, log, &refusal);
                continue;
            }
        };
        let (proxy, pod, acceptor) = (proxy.clone(), pod.clone(), acceptor.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let trust = proxy.trust.clone();
            let handler_pod = pod.clone();
            let result = server::serve(tcp, acceptor, &trust, move |connect| {
                let (proxy, pod) = (proxy.clone(), handler_pod.clone());
                async move { tunnel(&proxy, &pod, connect).await }
            })
            .await;
            if let Err(err) = result {
                tracing::warn!(pod = %pod.info.uid, %peer, %err, "refused an HBONE connection");
            }
        });
    }
}

async fn tunnel(proxy: &Proxy, pod: &PodContext, connect: InboundConnect) {
    let peer = connect.peer_addr;
    let authority: Option<SocketAddr> = connect.authority.parse().ok();
    let mut log = ConnectionLog::new(
        "inbound",
        peer,
        authority.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
    );
    log.src_identity = Some(connect.peer.to_string());
    if let Some(source) = proxy.state.workload_by_ip(peer.ip()) {
        log.src_workload = Some(source.name.clone());
        log.src_namespace = Some(source.namespace.clone());
    }
    log.dst_workload = Some(pod.info.name.clone());
    log.dst_namespace = Some(pod.info.namespace.clone());
    log.dst_identity = Some(pod.identity.to_string());
    let Some(authority) = authority else {
        let reason = format!(
            "CONNECT authority {:?} is not ip:port (400)",
            connect.authority
        );
        connect.reject(StatusCode::BAD_REQUEST);
        return log.finish(Some(&reason));
    };
    if let Err(err) = proxy.config_ready().await {
        connect.reject(StatusCode::SERVICE_UNAVAILABLE);
        return log.finish(Some(&format!("{err} (503)")));
    }
    if let Err(refusal) = guard::inbound_destination(&proxy.ports, authority) {
        connect.reject(StatusCode::BAD_REQUEST);
        return proxy.guard.record(log, &refusal);
    }
    if !pod.owns(authority.ip()) {
        let reason = format!(
            "CONNECT authority {authority} is not an address of pod {}/{} (400)",
            pod.info.namespace, pod.info.name
        );
        connect.reject(StatusCode::BAD_REQUEST);
        return log.finish(Some(&reason));
    }
    // The connection to the application holds a descriptor in the pod's
    // share.
    let _slot = match proxy.claim(pod) {
        Ok(slot) => slot,
        Err(refusal) => {
            connect.reject(StatusCode::SERVICE_UNAVAILABLE);
            return proxy.guard.record(log, &refusal);
        }
    };
    log.dst_hbone_addr = Some(SocketAddr::new(authority.ip(), proxy.ports.hbone));
    proxy.pod_known(pod).await;
    let attrs = authorization::attributes(pod, peer.ip(), Some(connect.peer.clone()), authority);
    let opening = opening(
        proxy,
        pod,
        peer,
        authority,
        Some(&connect.peer),
        &PeerClaims::from_headers(&connect.headers),
        attrs.clone(),
    );
    let mut registration = match authorize(proxy, &attrs, &mut log) {
        Ok(()) => proxy.connections.open(opening),
        Err(reason) => {
            connect.reject(StatusCode::UNAUTHORIZED);
            return log.finish(Some(&format!("{reason} (401)")));
        }
    };
    let mut upstream = match connect_app(proxy, pod, authority, peer.ip()).await {
        Ok(upstream) => upstream,
        Err(err) => {
            let reason =
                format!("the application at {authority} refused the connection: {err} (503)");
            connect.reject(StatusCode::SERVICE_UNAVAILABLE);
            return log.finish(Some(&reason));
        }
    };
    // The answer says who the destination is, as Istio's does.
    let baggage = proxy
        .pod_workload(pod)
        .map(|w| PeerMetadata::of(&w).to_baggage())
        .and_then(|b| http::HeaderValue::from_str(&b).ok());
    let answer: Vec<_> = baggage
        .into_iter()
        .map(|v| (http::HeaderName::from_static("baggage"), v))
        .collect();
    let stream = match connect.accept_with(&answer) {
        Ok(stream) => stream,
        Err(err) => return log.finish(Some(&err)),
    };
    // The copy's first leg is the application: what it received is what
    // the client sent.
    let counters = registration.meter.clone();
    let meter = copy::Meter::new(&counters, false);
    let outcome = tokio::select! {
        result = copy::tcp_h2(&mut upstream.stream, stream, &meter) => Outcome::Done(result),
        reason = registration.revoked() => Outcome::Revoked(reason),
    };
    finish(log, outcome, &upstream.stream, |t| (t.received, t.sent));
}

/// How a proxied connection ended.
enum Outcome {
    Done(Result<copy::Transferred, copy::CopyFailure>),
    /// Cut by a policy change, with the reason.
    Revoked(String),
}

fn finish(
    mut log: ConnectionLog,
    outcome: Outcome,
    upstream: &TcpStream,
    // (bytes the client sent, bytes it received), from the copy's counts.
    direction: impl Fn(&copy::Transferred) -> (u64, u64),
) {
    let error: Option<String> = match outcome {
        Outcome::Done(Ok(t)) => {
            (log.bytes_sent, log.bytes_recv) = direction(&t);
            None
        }
        Outcome::Done(Err(failure)) => {
            (log.bytes_sent, log.bytes_recv) = direction(&failure.transferred);
            Some(failure.error.to_string())
        }
        Outcome::Revoked(reason) => {
            // Both legs are reset: the tunnel stream was dropped with the
            // copy (RST_STREAM), and the application's side here.
            let _ = socket2::SockRef::from(upstream).set_linger(Some(std::time::Duration::ZERO));
            Some(reason)
        }
    };
    log.finish(error.as_ref().map(|e| e as &dyn std::fmt::Display));
}

/// The checks a plaintext connection passes before it is decided: not from
/// ztunnel's own socket, within the pod's share, and headed for the
/// application (not one of ztunnel's ports, not loopback).
fn admit_plaintext(
    proxy: &Proxy,
    pod: &PodContext,
    client: &TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
) -> Result<(SocketAddr, crate::limits::PodSlot), Refusal> {
    if proxy.guard.own_sockets.contains(pod.cookie, peer) {
        return Err(Refusal::OwnSocket { peer });
    }
    let slot = proxy.claim(pod)?;
    let original = proxy.capture.inbound_original_dst(client).map_err(|err| {
        Refusal::NoOriginalDestination {
            listener,
            reason: err.to_string(),
        }
    })?;
    guard::inbound_destination(&proxy.ports, original)?;
    Ok((original, slot))
}

/// The table entry (and metric labels) of an inbound connection.
pub(crate) fn opening(
    proxy: &Proxy,
    pod: &PodContext,
    peer: SocketAddr,
    dst: SocketAddr,
    peer_identity: Option<&weft_proto::spiffe::Identity>,
    claims: &PeerClaims,
    attrs: authorization::Attributes,
) -> Opening {
    let source = proxy.state.workload_by_ip(peer.ip());
    let destination = proxy.pod_workload(pod);
    // The service the client addressed is known only to the source; it
    // counts if this pod backs it.
    let service = destination
        .as_deref()
        .and_then(|w| claims.service_key(w))
        .and_then(|key| proxy.state.service(&key));
    let labels = TcpLabels::new(&Ends {
        reporter: Reporter::Destination,
        source: source.as_deref(),
        source_identity: peer_identity,
        destination: destination.as_deref(),
        destination_identity: Some(&pod.identity),
        service: service.as_deref(),
        mtls: peer_identity.is_some(),
    })
    .with_source_metadata(&claims.metadata);
    Opening {
        direction: "inbound",
        src: peer,
        dst,
        src_identity: peer_identity.map(ToString::to_string),
        dst_identity: Some(pod.identity.to_string()),
        labels,
        policy: Some(attrs),
    }
}

/// Decides the connection; records audits and denials in the log.
pub(crate) fn authorize(
    proxy: &Proxy,
    attrs: &authorization::Attributes,
    log: &mut ConnectionLog,
) -> Result<(), String> {
    match authorization::decide(proxy, attrs) {
        Decision::Allow { audited } => {
            log.audited = audited;
            Ok(())
        }
        Decision::Deny { reason, audited } => {
            log.audited = audited;
            log.policy = Some(reason.policy());
            proxy.connections.denied(&reason.policy());
            Err(reason.to_string())
        }
    }
}

/// Serves plaintext inbound (15006) for the pod until the listener is
/// dropped.
pub async fn serve_plaintext(proxy: Arc<Proxy>, pod: Arc<PodContext>, listener: TcpListener) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(pod = %pod.info.uid, %err, "plaintext accept failed");
                socket::after_accept_error().await;
                continue;
            }
        };
        let (proxy, pod) = (proxy.clone(), pod.clone());
        tokio::spawn(async move { plaintext(&proxy, &pod, client, peer).await });
    }
}

async fn plaintext(proxy: &Proxy, pod: &PodContext, mut client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    let listener = client
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], proxy.ports.inbound_plaintext)));
    let mut log = ConnectionLog::new("inbound", peer, listener);
    log.dst_workload = Some(pod.info.name.clone());
    log.dst_namespace = Some(pod.info.namespace.clone());
    if let Some(source) = proxy.state.workload_by_ip(peer.ip()) {
        log.src_workload = Some(source.name.clone());
        log.src_namespace = Some(source.namespace.clone());
    }
    let admitted = admit_plaintext(proxy, pod, &client, peer, listener);
    let (original, _slot) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return proxy.guard.refuse(&client, log, &refusal),
    };
    log.dst_addr = original;
    if !pod.owns(original.ip()) {
        let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
        return log.finish(Some(&format!(
            "plaintext to {original} is not for this pod's application"
        )));
    }
    if let Err(err) = proxy.config_ready().await {
        let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
        return log.finish(Some(&err));
    }
    proxy.pod_known(pod).await;
    let attrs = authorization::attributes(pod, peer.ip(), None, original);
    let opening = opening(
        proxy,
        pod,
        peer,
        original,
        None,
        &PeerClaims::default(),
        attrs.clone(),
    );
    let mut registration = match authorize(proxy, &attrs, &mut log) {
        Ok(()) => proxy.connections.open(opening),
        Err(reason) => {
            // Refused plaintext is reset, not merely closed.
            let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
            return log.finish(Some(&reason));
        }
    };
    let mut upstream = match connect_app(proxy, pod, original, peer.ip()).await {
        Ok(upstream) => upstream,
        Err(err) => {
            return log.finish(Some(&format!(
                "the application at {original} refused the connection: {err}"
            )))
        }
    };
    let counters = registration.meter.clone();
    let meter = copy::Meter::new(&counters, true);
    let outcome = tokio::select! {
        result = copy::tcp_tcp(&mut client, &mut upstream.stream, &meter) => Outcome::Done(result),
        reason = registration.revoked() => Outcome::Revoked(reason),
    };
    if matches!(outcome, Outcome::Revoked(_)) {
        let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
    }
    finish(log, outcome, &upstream.stream, |t| (t.sent, t.received));
}
