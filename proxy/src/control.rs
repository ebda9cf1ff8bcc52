//! How a proxy reaches the control service: one TLS gRPC endpoint for xDS
//! and the CA, authenticated with the node's credential.

use std::{path::PathBuf, time::Duration};

use tonic::{
    metadata::MetadataValue,
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
    Request, Status,
};

/// Where the control service is and how to trust and authenticate to it.
#[derive(Clone)]
pub struct ControlPlane {
    /// `host:port` of the control service's gRPC listener.
    pub address: String,
    /// The name its certificate must carry (default `weft-control`).
    pub server_name: String,
    /// The mesh root certificate, PEM.
    pub root_pem: String,
    /// This node's bearer token.
    pub token: String,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("reading {what} from {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the control service address {address:?} is not usable: {source}")]
    Address {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "cannot reach the control service at {address}: {source}; is it running, and does \
         its certificate chain to the configured root?"
    )]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// The interceptor adding the node credential to every call.
#[derive(Clone)]
pub struct NodeAuth {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl Interceptor for NodeAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(request)
    }
}

/// A channel that authenticates every call as this node.
pub type AuthedChannel = InterceptedService<Channel, NodeAuth>;

impl ControlPlane {
    /// Reads the root certificate and token from files.
    pub fn from_files(
        address: impl Into<String>,
        root_pem: &std::path::Path,
        token: &std::path::Path,
    ) -> Result<Self, ControlPlaneError> {
        let read = |what, path: &std::path::Path| {
            std::fs::read_to_string(path).map_err(|source| ControlPlaneError::Read {
                what,
                path: path.to_owned(),
                source,
            })
        };
        Ok(Self {
            address: address.into(),
            server_name: "weft-control".into(),
            root_pem: read("the mesh root certificate", root_pem)?,
            token: read("the node token", token)?.trim().to_owned(),
        })
    }

    fn endpoint(&self) -> Result<Endpoint, ControlPlaneError> {
        let address_error = |source| ControlPlaneError::Address {
            address: self.address.clone(),
            source,
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.root_pem))
            .domain_name(self.server_name.clone());
        Ok(Endpoint::from_shared(format!("https://{}", self.address))
            .map_err(address_error)?
            .tls_config(tls)
            .map_err(address_error)?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10)))
    }

    /// Connects now (TLS handshake included), so failures surface here.
    pub async fn connect(&self) -> Result<AuthedChannel, ControlPlaneError> {
        let channel =
            self.endpoint()?
                .connect()
                .await
                .map_err(|source| ControlPlaneError::Connect {
                    address: self.address.clone(),
                    source,
                })?;
        Ok(InterceptedService::new(channel, self.auth()))
    }

    fn auth(&self) -> NodeAuth {
        let header = format!("Bearer {}", self.token)
            .parse()
            .unwrap_or_else(|_| MetadataValue::from_static("Bearer invalid-token-characters"));
        NodeAuth { header }
    }
}
