//! Outbound (15001): an enrolled pod's captured connection, to its
//! destination.
//!
//! The original destination is a workload IP or a service VIP:port. A
//! service is load-balanced (round robin) over its healthy endpoints, with
//! the service port mapped to the endpoint's target port. A destination in
//! the mesh (HBONE) is reached through a tunnel to its 15008, presenting the
//! source pod's identity and requiring the destination's; anything else
//! passes through as plain TCP.

use std::{net::SocketAddr, sync::Arc};

use http::{HeaderName, HeaderValue};
use tokio::net::{TcpListener, TcpStream};
use weft_proxy::{
    copy::{self, CopyFailure},
    hbone::{
        client::{handshake, HboneError},
        pool::PoolKey,
        tls::client_config,
    },
    state::{TunnelProtocol, Workload},
};

use weft_proxy::{
    metrics::{Ends, Reporter, TcpLabels},
    peer_metadata::{self, PeerMetadata},
    state::Service,
};

use crate::{
    access_log::ConnectionLog,
    connections::Opening,
    guard::{self, Refusal},
    local,
    proxy::{PodContext, Proxy},
    socket::{self, SKIP_MARK},
};

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error(
        "{addr} is claimed by several workloads ({workloads}); refused until the control \
         service's config gives it to one (a stale pod, or an address reused too early?)"
    )]
    AddressConflict { addr: SocketAddr, workloads: String },
    #[error(transparent)]
    Balance(#[from] weft_proxy::balance::BalanceError),
    #[error("no certificate for {0}")]
    Certificate(String),
    #[error(transparent)]
    Hbone(#[from] HboneError),
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Copy(#[from] CopyFailure),
    #[error(transparent)]
    NoConfig(#[from] crate::proxy::NoConfig),
    #[error("{0}")]
    Denied(String),
    #[error(
        "the control service gives this pod {ip}, which its network namespace does not hold; \
         its connections are refused until the control service describes its current address \
         (its sandbox recreated with a new address, or the node agent named the wrong namespace)"
    )]
    Contradicted { ip: std::net::IpAddr },
    #[error("closed by a policy change: {0}")]
    Revoked(String),
    #[error("splicing the connection: {source}")]
    Splice {
        #[source]
        source: std::io::Error,
    },
}

/// Where a connection goes.
#[derive(Debug)]
pub enum Route {
    Hbone {
        /// The destination workload, or the waypoint's.
        workload: Arc<Workload>,
        /// Its HBONE endpoint (its address, port 15008).
        hbone: SocketAddr,
        /// The CONNECT authority: the endpoint's address and target port,
        /// or, through a waypoint, the original destination.
        authority: SocketAddr,
        service: Option<Arc<Service>>,
        /// Whether `workload` is a waypoint in front of the destination.
        waypoint: bool,
    },
    Direct {
        addr: SocketAddr,
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    },
}

/// Decides where `dst` goes. A service (by VIP) or a pod whose traffic
/// goes through a waypoint is tunnelled to the waypoint, with `dst` as the
/// CONNECT authority; the waypoint chooses the endpoint.
pub fn resolve(proxy: &Proxy, dst: SocketAddr) -> Result<Route, OutboundError> {
    if let Some((service, _)) = proxy.state.service_by_vip(dst) {
        if let Some(waypoint) = &service.waypoint {
            return via_waypoint(proxy, waypoint, dst, Some(service.clone()));
        }
        let endpoint = proxy
            .balancer
            .service_endpoint(&proxy.state, &service, dst.port())?;
        return Ok(route_to(
            proxy,
            endpoint.workload,
            endpoint.addr,
            Some(service),
        ));
    }
    match proxy.state.workload_by_ip(dst.ip()) {
        Some(workload) => match &workload.waypoint {
            Some(waypoint) => via_waypoint(proxy, waypoint, dst, None),
            None => Ok(route_to(proxy, workload, dst, None)),
        },
        None => {
            // An address two workloads claim is nobody's: sending it in
            // plaintext could expose what belongs in a tunnel.
            let claims = proxy.state.address_claims(dst.ip());
            if claims.len() > 1 {
                return Err(OutboundError::AddressConflict {
                    addr: dst,
                    workloads: claims.join(", "),
                });
            }
            Ok(Route::Direct {
                addr: dst,
                workload: None,
                service: None,
            })
        }
    }
}

fn via_waypoint(
    proxy: &Proxy,
    waypoint: &weft_proxy::state::GatewayAddress,
    dst: SocketAddr,
    service: Option<Arc<Service>>,
) -> Result<Route, OutboundError> {
    let endpoint = proxy.balancer.waypoint(&proxy.state, waypoint)?;
    Ok(Route::Hbone {
        workload: endpoint.workload,
        hbone: endpoint.addr,
        authority: dst,
        service,
        waypoint: true,
    })
}

fn route_to(
    proxy: &Proxy,
    workload: Arc<Workload>,
    authority: SocketAddr,
    service: Option<Arc<Service>>,
) -> Route {
    match workload.protocol {
        TunnelProtocol::Hbone => Route::Hbone {
            hbone: SocketAddr::new(authority.ip(), proxy.ports.hbone),
            authority,
            workload,
            service,
            waypoint: false,
        },
        TunnelProtocol::None => Route::Direct {
            addr: authority,
            workload: Some(workload),
            service,
        },
    }
}

/// Accepts the pod's captured connections until the listener is dropped.
pub async fn serve(proxy: Arc<Proxy>, pod: Arc<PodContext>, listener: TcpListener) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(pod = %pod.info.uid, %err, "outbound accept failed");
                socket::after_accept_error().await;
                continue;
            }
        };
        let (proxy, pod) = (proxy.clone(), pod.clone());
        tokio::spawn(async move { handle(&proxy, &pod, client, peer).await });
    }
}

async fn handle(proxy: &Proxy, pod: &PodContext, mut client: TcpStream, accepted_from: SocketAddr) {
    let _ = client.set_nodelay(true);
    // eBPF capture connects the application to ztunnel over the pod's
    // loopback; the connection's source is still the pod.
    let peer = match (accepted_from.ip().is_loopback(), pod.info.ips.first()) {
        (true, Some(ip)) => SocketAddr::new(*ip, accepted_from.port()),
        _ => accepted_from,
    };
    let listener = client
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], proxy.ports.outbound)));
    let mut log = ConnectionLog::new("outbound", peer, listener);
    log.src_workload = Some(pod.info.name.clone());
    log.src_namespace = Some(pod.info.namespace.clone());
    log.src_identity = Some(pod.identity.to_string());
    // Before anything else: nothing here may connect anywhere for a
    // connection that is ztunnel's own, or past the pod's share.
    let admitted = admit(proxy, pod, &client, accepted_from, listener);
    let (original, _slot) = match admitted {
        Ok(admitted) => admitted,
        Err(refusal) => return proxy.guard.refuse(&client, log, &refusal),
    };
    log.dst_addr = original;
    let result = forward(proxy, pod, &mut client, peer, original, &mut log).await;
    match result {
        Ok(transferred) => {
            log.bytes_sent = transferred.sent;
            log.bytes_recv = transferred.received;
            log.finish(None);
        }
        Err(err) => {
            if let OutboundError::Copy(failure) = &err {
                log.bytes_sent = failure.transferred.sent;
                log.bytes_recv = failure.transferred.received;
            }
            // The application learns of a refusal (401, 503, no route) as a
            // reset, as it would from the destination itself.
            let _ = socket2::SockRef::from(&client).set_linger(Some(std::time::Duration::ZERO));
            log.finish(Some(&err))
        }
    }
}

/// The checks every captured connection passes before it is proxied: not
/// from ztunnel's own socket, within the pod's share, and with an original
/// destination that is neither unknown nor ztunnel or the pod itself.
fn admit(
    proxy: &Proxy,
    pod: &PodContext,
    client: &TcpStream,
    accepted_from: SocketAddr,
    listener: SocketAddr,
) -> Result<(SocketAddr, crate::limits::PodSlot), Refusal> {
    if proxy.guard.own_sockets.contains(pod.cookie, accepted_from) {
        return Err(Refusal::OwnSocket {
            peer: accepted_from,
        });
    }
    // Looked up (and so taken out of capture's map) before anything can
    // refuse the connection.
    let original = proxy
        .capture
        .outbound_original_dst(pod.cookie, client)
        .map_err(|err| Refusal::NoOriginalDestination {
            listener,
            reason: err.to_string(),
        })?;
    let slot = proxy.claim(pod)?;
    guard::outbound_destination(&pod.info.ips, listener, original)?;
    Ok((original, slot))
}

async fn forward(
    proxy: &Proxy,
    pod: &PodContext,
    client: &mut TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
    log: &mut ConnectionLog,
) -> Result<copy::Transferred, OutboundError> {
    proxy.config_ready().await?;
    // A description that contradicts the pod's namespace may be stale for
    // a moment after its sandbox is recreated; until it is current, the pod
    // does not speak with the identity it was enrolled under.
    if let Some(ip) = proxy.pod_contradicted(pod) {
        if !proxy.pod_known(pod).await {
            return Err(OutboundError::Contradicted {
                ip: proxy.pod_contradicted(pod).unwrap_or(ip),
            });
        }
    }
    let source = proxy.pod_workload(pod);
    let route = resolve(proxy, original)?;
    let (destination, service, mtls) = match &route {
        Route::Hbone {
            workload, service, ..
        } => (Some(workload.clone()), service.clone(), true),
        Route::Direct {
            workload, service, ..
        } => (workload.clone(), service.clone(), false),
    };
    let labels = TcpLabels::new(&Ends {
        reporter: Reporter::Source,
        source: source.as_deref(),
        source_identity: Some(&pod.identity),
        destination: destination.as_deref(),
        destination_identity: destination.as_ref().filter(|_| mtls).map(|w| &w.identity),
        service: service.as_deref(),
        mtls,
    });
    let tracking = proxy.connections.open(Opening {
        direction: "outbound",
        src: peer,
        dst: original,
        src_identity: Some(pod.identity.to_string()),
        dst_identity: destination
            .as_ref()
            .filter(|_| mtls)
            .map(|w| w.identity.to_string()),
        labels,
        policy: None,
    });
    let meter = copy::Meter::new(&tracking.meter, true);
    log.dst_service = service.as_ref().map(|s| s.key().to_owned());
    match route {
        Route::Hbone {
            workload,
            hbone,
            authority,
            waypoint,
            ..
        } => {
            log.dst_workload = Some(workload.name.clone());
            log.dst_namespace = Some(workload.namespace.clone());
            log.dst_identity = Some(workload.identity.to_string());
            log.waypoint = waypoint;
            // A destination on this node is reached without a tunnel.
            if let Some(local) = proxy
                .local_pod(authority.ip())
                .filter(|local| !waypoint && local.identity == workload.identity)
            {
                return local::forward(
                    proxy,
                    pod,
                    &local,
                    client,
                    peer,
                    authority,
                    &tracking.meter,
                    service.as_deref(),
                    log,
                )
                .await;
            }
            log.dst_hbone_addr = Some(hbone);
            let cert = proxy
                .certs
                .fetch(&pod.identity)
                .await
                .map_err(|e| OutboundError::Certificate(e.to_string()))?;
            let key = PoolKey {
                source_workload: pod.info.uid.clone(),
                source: pod.identity.clone(),
                destination: workload.identity.clone(),
                address: hbone,
            };
            let headers = request_headers(peer, source.as_deref(), service.as_deref());
            let mut pooled = proxy
                .pool
                .stream(&key, authority, &headers, || {
                    let (cert, destination) = (cert.clone(), workload.identity.clone());
                    async move {
                        let config = client_config(&cert, &destination, &proxy.trust)
                            .map_err(|e| HboneError::Config(e.to_string()))?;
                        let tcp = socket::connect(&pod.netns, hbone, SKIP_MARK)
                            .await
                            .map_err(|source| HboneError::Connect {
                                addr: hbone,
                                source,
                            })?;
                        handshake(tcp, hbone, config).await
                    }
                })
                .await?;
            Ok(copy::tcp_h2(client, pooled.take(), &meter).await?)
        }
        Route::Direct { addr, workload, .. } => {
            if let Some(w) = workload {
                log.dst_workload = Some(w.name.clone());
                log.dst_namespace = Some(w.namespace.clone());
            }
            // Registered as ztunnel's own before it can reach any listener.
            let (mut upstream, _own) = socket::connect_then(&pod.netns, addr, SKIP_MARK, |local| {
                proxy.guard.own_sockets.register(pod.cookie, local)
            })
            .await
            .map_err(|source| OutboundError::Connect { addr, source })?;
            Ok(copy::tcp_tcp(client, &mut upstream, &meter).await?)
        }
    }
}

/// What Istio's ztunnel sends on a CONNECT: `forwarded` (RFC 7239) with
/// the client's address and the addressed service's hostname, the
/// source's peer metadata in `baggage`, and a fresh W3C `traceparent`.
fn request_headers(
    client: SocketAddr,
    source: Option<&Workload>,
    service: Option<&Service>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = peer_metadata::connect_headers(
        client,
        service.map(|s| s.hostname.as_str()),
        source.map(PeerMetadata::of).as_ref(),
    );
    let trace: u128 = rand::random();
    let span: u64 = rand::random();
    let traceparent = format!("00-{trace:032x}-{span:016x}-01");
    if let Ok(value) = HeaderValue::from_str(&traceparent) {
        headers.push((HeaderName::from_static("traceparent"), value));
    }
    headers
}
