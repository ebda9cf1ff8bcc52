//! `wt-l7-engine LISTEN BACKEND [WORKERS]`: the waypoint's L7 engine on
//! plain TCP (WORKERS worker threads, as the waypoint's `--concurrency`:
//! 0, the default, is one per core),
//! for the `waypoint-l7` benchmark's same-hop comparison with nginx as a
//! reverse proxy.
//!
//! It runs the waypoint's own request path (`waypoint::http::serve`:
//! framing checks, path normalization, policy lookup, route selection,
//! endpoint choice, the pooled upstream connections, metrics and one
//! access line per request on stdout) for connections accepted on LISTEN,
//! as if each had arrived in a tunnel from `bench/client` addressed to a
//! service whose one endpoint, outside the mesh, is BACKEND. Only the
//! tunnel is missing — the HBONE termination and origination the mesh
//! benchmark rows pay for — so what is measured is the L7 engine, hop for
//! hop against nginx. Never part of a deployment: it trusts every caller.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use anyhow::Context;
use waypoint::{
    http::{Downstream, Version},
    proxy::{Target, Waypoint},
};
use weft_proto::spiffe::Identity;
use weft_proxy::{
    control::ControlPlane,
    hbone::tls::TrustBundle,
    identity::{ca_client::CaClient, CertificateManager},
    peer_metadata::PeerClaims,
    state::{AddressResource, PortMapping, ProxyState, Service, TunnelProtocol, Workload},
};

const TRUST_DOMAIN: &str = "cluster.local";
const SERVICE: &str = "web.bench.svc.cluster.local";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (listen, backend, workers) = match args.as_slice() {
        [listen, backend] => (listen, backend, "0"),
        [listen, backend, workers] => (listen, backend, workers.as_str()),
        _ => anyhow::bail!("usage: wt-l7-engine LISTEN BACKEND [WORKERS] (both ip:port)"),
    };
    let listen: SocketAddr = listen.parse().context("LISTEN is not ip:port")?;
    let backend: SocketAddr = backend.parse().context("BACKEND is not ip:port")?;
    let workers: usize = workers.parse().context("WORKERS is not a number")?;
    waypoint::app::init_logging("text");
    // Run as the waypoint runs: a worker per core (`waypoint::workers`).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, backend, workers))
}

async fn serve(listen: SocketAddr, backend: SocketAddr, workers: usize) -> anyhow::Result<()> {
    let identity = |sa: &str| -> anyhow::Result<Identity> {
        Ok(format!("spiffe://{TRUST_DOMAIN}/ns/bench/sa/{sa}").parse()?)
    };
    let state = Arc::new(ProxyState::default());
    let key = format!("bench/{SERVICE}");
    let mapping = PortMapping {
        service_port: listen.port(),
        target_port: backend.port(),
    };
    state.upsert_address(
        &key,
        AddressResource::Service(Service::new(
            "web".into(),
            "bench".into(),
            SERVICE.into(),
            vec![listen.ip()],
            vec![mapping],
            None,
        )),
    );
    state.upsert_address(
        "bench/web-0",
        AddressResource::Workload(Box::new(Workload {
            uid: "bench/web-0".into(),
            name: "web-0".into(),
            namespace: "bench".into(),
            ips: vec![backend.ip()],
            identity: identity("web")?,
            node: "bench".into(),
            protocol: TunnelProtocol::None,
            canonical_name: "web".into(),
            canonical_revision: "v1".into(),
            workload_name: "web".into(),
            cluster_id: "bench".into(),
            services: BTreeMap::from([(key.clone(), vec![mapping])]),
            authorization_policies: Vec::new(),
            healthy: true,
            host_network: false,
            waypoint: None,
        })),
    );
    let service = state
        .service(&key)
        .context("the benchmark's service is in the state")?;
    // The CA is never asked: the one endpoint is reached over plain TCP.
    let root = rcgen::generate_simple_self_signed(vec!["bench-root".into()])?;
    let control = ControlPlane {
        address: "127.0.0.1:1".into(),
        server_name: "weft-control".into(),
        root_pem: root.cert.pem(),
        token: String::new().into(),
    };
    let (_status, xds) = tokio::sync::watch::channel(Default::default());
    let wp = Arc::new(Waypoint::new(
        "bench".into(),
        "waypoint".into(),
        identity("waypoint")?,
        "bench/waypoint-0".into(),
        state,
        CertificateManager::new(CaClient::new(control)),
        TrustBundle::new(&[root.cert.der().clone()], TRUST_DOMAIN)?,
        Arc::default(),
        Arc::default(),
        Arc::default(),
        xds,
    ));
    let client = identity("client")?;
    let listener = waypoint::workers::bind(listen)?;
    let _workers = waypoint::workers::Workers::start(
        listener,
        waypoint::workers::count(workers),
        move |stream, peer| serve_one(wp.clone(), client.clone(), service.clone(), stream, peer),
    )?;
    println!("listening={listen}");
    std::future::pending::<()>().await;
    Ok(())
}

/// Serves one accepted connection as a tunnel from `client` to `service`.
async fn serve_one(
    wp: Arc<Waypoint>,
    client: Identity,
    service: Arc<Service>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let Ok(listen) = stream.local_addr() else {
        return;
    };
    let down = Arc::new(Downstream::new(
        &wp,
        peer,
        client,
        listen,
        Target::Service {
            service,
            port: listen.port(),
        },
        Version::Http1,
        PeerClaims::default(),
    ));
    if let Err(err) = waypoint::http::serve(wp, stream, down).await {
        tracing::debug!(%err, "connection ended");
    }
}
