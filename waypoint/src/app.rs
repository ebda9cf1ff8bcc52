//! Running the waypoint: connect to the control service, follow its
//! config and keep its certificate, serve HBONE and the admin endpoints.

use std::sync::Arc;

use http::StatusCode;
use serde::Serialize;
use weft_proto::spiffe::Identity;
use weft_proxy::{
    admin::{Reply, Routes},
    control::ControlPlane,
    hbone::tls::TrustBundle,
    identity::{ca_client::CaClient, CertificateManager},
    state::ProxyState,
    xds::{client::proxy_node, AddressHandler, AuthorizationHandler, XdsClient},
};

use crate::{config::Config, inbound, proxy::Waypoint};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    ControlPlane(#[from] weft_proxy::control::ControlPlaneError),
    #[error("the mesh root certificate: {0}")]
    Trust(#[from] weft_proxy::hbone::tls::TlsError),
    #[error("namespace {namespace:?} or service account {service_account:?} does not make an identity: {reason}")]
    Identity {
        namespace: String,
        service_account: String,
        reason: String,
    },
    #[error(transparent)]
    Tracing(#[from] weft_proxy::otlp::OtlpError),
    #[error("--trace-sampling {0} is not a percentage between 0 and 100")]
    Sampling(f64),
    #[error(transparent)]
    Workers(#[from] crate::workers::WorkersError),
    #[error("binding the {what} endpoint on {addr}: {source}; is another process using it?")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A started waypoint.
pub struct Started {
    pub hbone_address: std::net::SocketAddr,
    pub admin_address: std::net::SocketAddr,
    pub metrics_address: std::net::SocketAddr,
    pub readiness_address: std::net::SocketAddr,
    pub waypoint: Arc<Waypoint>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The HBONE acceptor and the worker threads (stopped with it).
    _workers: crate::workers::Workers,
}

impl Drop for Started {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Serialize)]
struct UpstreamConnections {
    idle_http1: usize,
    shared_http2: usize,
}

#[derive(Serialize)]
struct ConfigDump<'a> {
    waypoint: &'a str,
    identity: String,
    xds: weft_proxy::xds::XdsStatus,
    #[serde(flatten)]
    state: weft_proxy::state::StateDump,
    routes: std::collections::BTreeMap<String, Arc<crate::routes::ServiceRoutes>>,
    policies: Vec<Arc<crate::policy::Policy>>,
    backends: Vec<crate::backends::BackendView>,
    /// Kept upstream HTTP connections: idle HTTP/1.1 ones, shared HTTP/2.
    upstream_connections: UpstreamConnections,
    certificates: Vec<weft_proxy::identity::CertificateInfo>,
}

pub async fn start(config: Config) -> Result<Started, StartError> {
    let mut control = ControlPlane::from_files(
        &config.control_address,
        &config.root_cert,
        &config.token_file,
    )?;
    control.server_name = config.control_server_name.clone();
    let trust = TrustBundle::from_pem(&control.root_pem, &config.trust_domain)?;
    let identity: Identity = format!(
        "spiffe://{}/ns/{}/sa/{}",
        config.trust_domain,
        config.namespace,
        config.service_account()
    )
    .parse()
    .map_err(
        |e: weft_proto::spiffe::IdentityError| StartError::Identity {
            namespace: config.namespace.clone(),
            service_account: config.service_account().to_owned(),
            reason: e.to_string(),
        },
    )?;
    let state = Arc::new(ProxyState::default());
    let routes = Arc::new(crate::routes::RouteTable::default());
    let policies = Arc::new(crate::policy::PolicyTable::default());
    let backends = Arc::new(crate::backends::Backends::default());
    let pod = config
        .pod_name
        .clone()
        .unwrap_or_else(|| config.name.clone());
    let xds = XdsClient::new(
        control.clone(),
        proxy_node(
            "waypoint",
            &config.node_name,
            &format!("waypoint~{}~{}", config.namespace, pod),
        ),
        vec![
            Arc::new(AddressHandler::new(state.clone())),
            Arc::new(AuthorizationHandler::new(state.clone())),
            Arc::new(crate::routes::RoutesHandler::new(routes.clone())),
            Arc::new(crate::policy::PolicyHandler::new(policies.clone())),
            Arc::new(crate::backends::BackendsHandler::new(backends.clone())),
        ],
    );
    let xds_status = xds.status();
    let certs = CertificateManager::new(CaClient::new(control));
    let mut tasks = vec![tokio::spawn(xds.run())];
    let mut wp = Waypoint::new(
        config.namespace.clone(),
        config.name.clone(),
        identity.clone(),
        format!("waypoint~{}~{}", config.namespace, pod),
        state,
        certs.clone(),
        trust,
        routes,
        policies,
        backends,
        xds_status,
    );
    wp.path_normalization = config.path_normalization;
    if !(0.0..=100.0).contains(&config.trace_sampling) {
        return Err(StartError::Sampling(config.trace_sampling));
    }
    wp.trace_sampling = config.trace_sampling;
    if let Some(endpoint) = &config.otlp_endpoint {
        wp.tracer = weft_proxy::otlp::Exporter::start(
            endpoint,
            &format!("{}.{}", config.name, config.namespace),
            vec![
                ("k8s.namespace.name", config.namespace.clone()),
                ("k8s.pod.name", config.pod_name.clone().unwrap_or_default()),
                ("istio.canonical_service", config.name.clone()),
            ],
        )?;
    }
    let wp = Arc::new(wp);
    // The certificate is needed before the first tunnel; fetched now, and
    // renewed in the background from then on.
    let (c, id) = (certs.clone(), identity.clone());
    tasks.push(tokio::spawn(async move {
        if let Err(err) = c.fetch(&id).await {
            tracing::warn!(%err, "first certificate request failed; retrying in the background");
        }
    }));
    let bind = |what, addr| async move {
        weft_proxy::admin::bind(addr)
            .await
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    // HBONE: one listening socket, its connections spread over the
    // workers (see `workers`).
    let hbone = crate::workers::bind(config.hbone_address)?;
    let hbone_address = hbone.local_addr().map_err(|source| StartError::Bind {
        what: "HBONE",
        addr: config.hbone_address,
        source,
    })?;
    let (admin, admin_address) = bind("admin", config.admin_address).await?;
    let (ready, readiness_address) = bind("readiness", config.readiness_address).await?;
    let (metrics, metrics_address) = bind("metrics", config.metrics_address).await?;
    let registry = wp.metrics.clone();
    tasks.push(tokio::spawn(weft_proxy::admin::serve(
        metrics,
        weft_proxy::admin::metrics_routes(move || registry.render()),
    )));
    // HBONE is served by every worker: this runtime and one more thread
    // per core.
    let server = inbound::Server::new(wp.clone())?;
    let workers = crate::workers::Workers::start(
        hbone,
        crate::workers::count(config.concurrency),
        move |tcp, peer| server.clone().serve(tcp, peer),
    )?;
    let dump = wp.clone();
    tasks.push(tokio::spawn(weft_proxy::admin::serve(
        admin,
        Routes::default().route("/config_dump", move |_, _| {
            Reply::json(&ConfigDump {
                waypoint: &dump.name,
                identity: dump.identity.to_string(),
                xds: dump.xds(),
                state: dump.state.dump(),
                routes: dump.routes.dump(),
                policies: dump.policies.dump(),
                backends: dump.backends_view(),
                upstream_connections: {
                    let (idle_http1, shared_http2) = dump.http_pool.counts();
                    UpstreamConnections {
                        idle_http1,
                        shared_http2,
                    }
                },
                certificates: dump.certs.info(),
            })
        }),
    )));
    let readiness = wp.clone();
    tasks.push(tokio::spawn(weft_proxy::admin::serve(
        ready,
        Routes::default().route("/healthz/ready", move |_, _| {
            if !readiness.xds().synced {
                return Reply::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: xDS has not synced\n",
                );
            }
            match readiness.certs.current(&readiness.identity) {
                Some(c) if c.is_valid_at(std::time::SystemTime::now()) => {
                    Reply::text(StatusCode::OK, "ready\n")
                }
                _ => Reply::text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "not ready: no valid certificate for {}\n",
                        readiness.identity
                    ),
                ),
            }
        }),
    )));
    tracing::info!(waypoint = %wp.name, identity = %identity, %hbone_address, %admin_address, workers = workers.len(), "waypoint started");
    Ok(Started {
        hbone_address,
        admin_address,
        metrics_address,
        readiness_address,
        waypoint: wp,
        tasks,
        _workers: workers,
    })
}

/// The binary's entry point.
pub fn main() -> anyhow::Result<()> {
    main_from(std::env::args_os())
}

/// Logs (access lines included) to stdout as `format` (`text` or
/// `json`), filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: &str) {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    crate::access_log::set_format(match format {
        "json" => crate::access_log::Format::Json,
        _ => crate::access_log::Format::Text,
    });
    let format = match format {
        "json" => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
        _ => tracing_subscriber::fmt::layer().with_ansi(ansi).boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .init();
}

/// Runs the waypoint with `args` (the first is the program name).
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let config = <Config as clap::Parser>::parse_from(args);
    init_logging(&config.log_format);
    // The first worker: the control side runs here too (see `workers`).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let started = start(config).await?;
            // Machine-readable, for tools that start it on port 0.
            println!(
                "hbone={} admin={} readiness={} metrics={}",
                started.hbone_address,
                started.admin_address,
                started.readiness_address,
                started.metrics_address
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down");
            drop(started);
            Ok(())
        })
}
