//! Assembles the control service: the config pipeline (source → translate
//! → store) and the TLS gRPC server carrying xDS and the CA.

use std::{net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};
use weft_proto::{
    envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer,
    istio::v1::auth::istio_certificate_service_server::IstioCertificateServiceServer,
};

use crate::{
    auth::{token_review::TokenReviewer, Authenticator, NodeCredentials},
    ca::{service::CaService, Authority, CaError},
    config::ControlConfig,
    source::{self, ConfigSnapshot, RunningSource},
    translate::translate,
    xds::{ClientStatus, XdsServer, XdsStore},
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(
        "binding the gRPC listener on {addr}: {source}; is another control service running there?"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    CaSecret(#[from] crate::cluster::ca_secret::CaSecretError),
}

/// A running control service.
pub struct Control {
    addr: SocketAddr,
    root_pem: String,
    store: Arc<XdsStore>,
    xds: XdsServer,
    snapshots: watch::Receiver<Arc<ConfigSnapshot>>,
    _source: RunningSource,
    tasks: Vec<JoinHandle<()>>,
    shutdown: watch::Sender<bool>,
}

impl Control {
    /// Reads the source once (on Kubernetes: lists every kind and takes the
    /// cluster's mesh root), loads (or creates) the CA, binds the listener
    /// and starts serving; returns once it accepts connections.
    pub async fn start(config: ControlConfig) -> Result<Self, ControlError> {
        // The source first: on Kubernetes the mesh root comes from the
        // cluster, through the same client.
        let running = source::start(&config.source, config.debounce).await?;
        if let Some(client) = running.kube_client() {
            crate::cluster::ca_secret::sync(
                client,
                &config.lease.namespace,
                &config.ca_dir,
                &config.mesh.trust_domain,
            )
            .await?;
        }
        let mut authority = Authority::load_or_create(&config.ca_dir, &config.mesh.trust_domain)?;
        authority.default_lifetime = config.cert_lifetime;
        authority.max_lifetime = config.cert_lifetime;
        let authority = Arc::new(authority);
        if let Some(client) = running.kube_client() {
            if let Err(err) = crate::cluster::ca_secret::publish_root(
                client,
                &config.lease.namespace,
                authority.root_pem(),
            )
            .await
            {
                tracing::warn!(%err, namespace = %config.lease.namespace, "cannot publish the mesh root as istio-ca-root-cert; ztunnel there cannot start without it");
            }
        }
        // Bound once the root exists: whoever sees the port open (weft local
        // starts ztunnel then) finds the root certificate written.
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ControlError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ControlError::Bind {
            addr: config.listen,
            source,
        })?;
        let mut names = vec![
            "weft-control".to_owned(),
            "weft-control.weft-system.svc".to_owned(),
            "localhost".to_owned(),
        ];
        names.extend(config.server_names.iter().cloned());
        let (chain, key) = authority.serving_certificate(&names, &[addr.ip()])?;
        let tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(chain.join(""), key));

        // Config pipeline: the first snapshot is loaded before serving, so
        // the first xDS response is already complete.
        let store = Arc::new(XdsStore::default());
        let snapshot_rx = running.snapshots.clone();
        let first = snapshot_rx.borrow().clone();
        store.update(translate(&first, &config.mesh));
        let mut tasks = Vec::new();
        let mut updates = snapshot_rx.clone();
        let pipeline_store = store.clone();
        let mesh = config.mesh.clone();
        tasks.push(tokio::spawn(async move {
            while updates.changed().await.is_ok() {
                let snapshot = updates.borrow_and_update().clone();
                pipeline_store.update(translate(&snapshot, &mesh));
            }
        }));

        // On Kubernetes, proxies prove their node with service-account
        // tokens; elsewhere with node tokens.
        let credentials = Arc::new(match running.kube_client() {
            Some(client) => Authenticator::Kubernetes(TokenReviewer::new(
                client.clone(),
                config.token_review.clone(),
                snapshot_rx.clone(),
            )),
            None => Authenticator::Nodes(NodeCredentials::new(&config.node_credentials_dir)),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        // On Kubernetes: one replica (the Lease holder) writes status and
        // deploys waypoints.
        if let Some(client) = running.kube_client() {
            let (leader, election) =
                crate::cluster::leader::start(client.clone(), config.lease.clone());
            tasks.push(election);
            tasks.push(crate::cluster::status::start(
                client.clone(),
                leader.clone(),
                store.subscribe(),
            ));
            let mut template = config.waypoint.clone();
            template.trust_domain = config.mesh.trust_domain.clone();
            template.audience = config.token_review.audience.clone();
            tasks.push(crate::cluster::waypoints::start(
                client.clone(),
                template,
                authority.root_pem().to_owned(),
                leader,
                snapshot_rx.clone(),
            ));
        }
        let xds = XdsServer::new(store.clone(), credentials.clone(), shutdown_rx.clone());
        let ca = CaService::new(authority.clone(), credentials, store.subscribe());
        let server = Server::builder()
            .tls_config(tls)
            .expect("a PEM identity is a valid TLS configuration")
            .add_service(AggregatedDiscoveryServiceServer::new(xds.clone()))
            .add_service(IstioCertificateServiceServer::new(ca));
        let incoming = TcpListenerStream::new(listener);
        let mut stop = shutdown_rx;
        // Not in `tasks`: on shutdown it closes the listener and drains the
        // connections (whose streams end on the same signal) by itself.
        tokio::spawn(async move {
            let signal = async move {
                let _ = stop.wait_for(|stop| *stop).await;
            };
            if let Err(err) = server.serve_with_incoming_shutdown(incoming, signal).await {
                tracing::error!(%err, "gRPC server stopped");
            }
        });
        tracing::info!(%addr, source = %config.source, "control service serving xDS and CA");
        Ok(Self {
            addr,
            root_pem: authority.root_pem().to_owned(),
            store,
            xds,
            snapshots: snapshot_rx,
            _source: running,
            tasks,
            shutdown,
        })
    }

    /// Where the gRPC listener is.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The mesh root certificate (PEM), which clients must trust.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn store(&self) -> &Arc<XdsStore> {
        &self.store
    }

    /// The proxies connected right now.
    pub fn clients(&self) -> Vec<ClientStatus> {
        self.xds.clients()
    }

    /// The current config snapshot (objects and rejected documents).
    pub fn snapshot(&self) -> Arc<ConfigSnapshot> {
        self.snapshots.borrow().clone()
    }

    /// Stops serving: the listener closes and every stream ends.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}
