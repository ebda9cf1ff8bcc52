//! Running ztunnel: connect to the control service, keep config and
//! certificates, enroll pods from the node agent, serve the admin endpoints.

use std::sync::Arc;

use tokio::sync::Notify;
use weft_proxy::{
    control::ControlPlane,
    hbone::tls::TrustBundle,
    identity::{ca_client::CaClient, CertificateManager},
    metrics::Metrics,
    state::ProxyState,
    xds::{client::proxy_node, AddressHandler, AuthorizationHandler, XdsClient},
};

use crate::{
    admin, capture::Capture, config::Config, netns::own_netns, pods::Pods, proxy::Ports,
    proxy::Proxy, telemetry::Telemetry, zds,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    ControlPlane(#[from] weft_proxy::control::ControlPlaneError),
    #[error("the mesh root certificate: {0}")]
    Trust(#[from] weft_proxy::hbone::tls::TlsError),
    #[error("binding the {what} endpoint on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("capture: {0}")]
    Capture(#[from] crate::capture::CaptureError),
    #[error("opening ztunnel's own network namespace: {0}")]
    Netns(std::io::Error),
}

/// A started ztunnel.
pub struct Ztunnel {
    pub admin_address: std::net::SocketAddr,
    pub readiness_address: std::net::SocketAddr,
    pub metrics_address: std::net::SocketAddr,
    pub pods: Arc<Pods>,
    /// Notified by `POST /quitquitquit`.
    pub quit: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Ztunnel {
    /// SIGTERM in a rolling update: the in-pod listeners close at once, so
    /// the next ztunnel (bound beside them) takes every new connection;
    /// open ones run on for at most `timeout`. Capture is left in place.
    pub async fn drain(&self, timeout: std::time::Duration) {
        self.pods.stop_listening();
        let open = self.pods.open_connections();
        tracing::info!(
            open,
            ?timeout,
            "draining: in-pod listeners closed, waiting for open connections"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        while self.pods.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let left = self.pods.open_connections();
        if left > 0 {
            tracing::warn!(left, "drain timed out; closing the connections left");
        }
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts ztunnel; `logging` lets `/logging` change the log filter.
pub async fn start(
    config: Config,
    logging: Option<admin::LogControl>,
) -> Result<Ztunnel, StartError> {
    let mut control = ControlPlane::from_files(
        &config.control_address,
        &config.root_cert,
        &config.token_file,
    )?;
    control.server_name = config.control_server_name.clone();
    let trust = TrustBundle::from_pem(&control.root_pem, &config.trust_domain)?;
    let state = Arc::new(ProxyState::default());
    let xds = XdsClient::new(
        control.clone(),
        proxy_node(
            "ztunnel",
            &config.node_name,
            &format!("ztunnel~{}", config.node_name),
        ),
        vec![
            Arc::new(AddressHandler::new(state.clone())),
            Arc::new(AuthorizationHandler::new(state.clone())),
        ],
    );
    let xds_status = xds.status();
    let certificates = CertificateManager::new(CaClient::new(control));
    let mut tasks = vec![tokio::spawn(xds.run())];
    let capture = tokio::task::block_in_place(|| Capture::start(&config, Ports::default()))?;
    let proxy = Arc::new(
        Proxy::new(
            config.node_name.clone(),
            state.clone(),
            certificates.clone(),
            trust,
            Metrics::default(),
            Arc::new(capture),
            xds_status.clone(),
        )
        .with_splice(config.splice)
        .with_limits(crate::limits::Limits::at_start(
            config.max_connections_per_pod,
        )),
    );
    let pods = Arc::new(Pods::new(
        proxy.clone(),
        own_netns().map_err(StartError::Netns)?,
    ));

    // Bind everything before reporting the addresses.
    let bind = |what, addr| async move {
        weft_proxy::admin::bind(addr)
            .await
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let (admin_listener, admin_address) = bind("admin", config.admin_address).await?;
    let (ready_listener, readiness_address) = bind("readiness", config.readiness_address).await?;
    let (metrics_listener, metrics_address) = bind("metrics", config.metrics_address).await?;
    let agent_link = zds::LinkStatus::default();
    tasks.push(tokio::spawn(zds::run(
        config.node_agent_socket.clone(),
        pods.clone(),
        config.node_agent_uid,
        agent_link.clone(),
    )));
    tasks.push(tokio::spawn(proxy.connections.clone().watch(proxy.clone())));

    let sources = admin::Sources {
        node: config.node_name.clone(),
        proxy: proxy.clone(),
        pods: pods.clone(),
        certs: certificates.clone(),
        xds: xds_status.clone(),
        agent: agent_link,
    };
    let telemetry = Arc::new(Telemetry::new(
        proxy.clone(),
        pods.clone(),
        xds_status,
        certificates,
    ));
    let quit = Arc::new(Notify::new());
    let admin_routes = admin::admin_routes(sources.clone(), logging, quit.clone());
    tasks.push(tokio::spawn(weft_proxy::admin::serve(
        admin_listener,
        admin_routes,
    )));
    tasks.push(tokio::spawn(weft_proxy::admin::serve(
        metrics_listener,
        admin::metrics_routes(telemetry),
    )));
    tasks.push(tokio::spawn(weft_proxy::admin::serve(
        ready_listener,
        admin::readiness_routes(sources),
    )));
    tracing::info!(node = %config.node_name, control = %config.control_address, %admin_address, %readiness_address, socket = %config.node_agent_socket.display(), "ztunnel started");
    Ok(Ztunnel {
        admin_address,
        readiness_address,
        metrics_address,
        pods,
        quit,
        tasks,
    })
}

/// `ztunnel uninstall`: removing the pins detaches the programs (no process
/// holds them once ztunnel is stopped) and frees the maps.
fn uninstall_capture(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    if !pin_dir.exists() {
        println!("nothing to remove: {} does not exist", pin_dir.display());
        return Ok(());
    }
    crate::capture::ebpf::EbpfCapture::remove_pins(pin_dir)?;
    println!(
        "removed the eBPF capture pinned under {}",
        pin_dir.display()
    );
    Ok(())
}

/// Blocks until SIGTERM or SIGINT (as PID 1 of a container, which has no
/// default handlers, it must catch them to stop at all).
fn hold_until_stopped() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?
        .block_on(async {
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            anyhow::Ok(())
        })
}

/// The binary's entry point: parse the configuration, start, run until
/// SIGTERM or Ctrl-C.
pub fn main() -> anyhow::Result<()> {
    main_from(std::env::args_os())
}

/// Runs ztunnel with `args` (the first is the program name).
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    use tracing_subscriber::{
        layer::SubscriberExt, reload, util::SubscriberInitExt, EnvFilter, Layer,
    };
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    if args.get(1).is_some_and(|a| a == "uninstall") {
        let mut name = args[0].clone();
        name.push(" uninstall");
        let uninstall = <crate::config::Uninstall as clap::Parser>::parse_from(
            std::iter::once(&name).chain(&args[2..]),
        );
        uninstall_capture(&uninstall.bpf_pin_dir)?;
        if uninstall.hold {
            hold_until_stopped()?;
        }
        return Ok(());
    }
    let config = <Config as clap::Parser>::parse_from(args);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let (filter, handle) = reload::Layer::new(filter);
    // Colour only on a terminal: log files stay greppable.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let format = match config.log_format.as_str() {
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
    let logging: admin::LogControl = Arc::new(move |level: &str| {
        let filter =
            EnvFilter::try_new(level).map_err(|e| format!("{level:?} is not a log filter: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let drain_seconds = config.drain_seconds;
            let ztunnel = start(config, Some(logging)).await?;
            // Machine-readable, for tools that start ztunnel on port 0.
            println!(
                "admin={} readiness={} metrics={}",
                ztunnel.admin_address, ztunnel.readiness_address, ztunnel.metrics_address
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let drain = tokio::select! {
                _ = tokio::signal::ctrl_c() => false,
                _ = term.recv() => true,
                _ = ztunnel.quit.notified() => false,
            };
            if drain {
                ztunnel
                    .drain(std::time::Duration::from_secs(drain_seconds))
                    .await;
            }
            tracing::info!("shutting down");
            drop(ztunnel);
            Ok(())
        })
}
