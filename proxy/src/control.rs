//! How a proxy reaches the control service: one TLS gRPC endpoint for xDS
//! and the CA, authenticated with the node's credential.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

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
    /// The bearer credential sent on every call.
    pub token: Token,
}

/// The proxy's bearer credential: a node token, or a projected Kubernetes
/// service-account token, which the kubelet rotates in its file — so a
/// file is read again for every call.
#[derive(Clone, Debug)]
pub enum Token {
    Value(String),
    File(PathBuf),
}

impl From<String> for Token {
    fn from(value: String) -> Self {
        Token::Value(value)
    }
}

impl From<&str> for Token {
    fn from(value: &str) -> Self {
        Token::Value(value.to_owned())
    }
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

/// The interceptor adding the proxy's credential to every call.
#[derive(Clone)]
pub struct NodeAuth {
    token: Token,
    /// The last header built from the token file, used while the file
    /// cannot be read (mid-rotation).
    last: Arc<Mutex<Option<MetadataValue<tonic::metadata::Ascii>>>>,
}

fn bearer(token: &str) -> MetadataValue<tonic::metadata::Ascii> {
    format!("Bearer {}", token.trim())
        .parse()
        .unwrap_or_else(|_| MetadataValue::from_static("Bearer invalid-token-characters"))
}

impl NodeAuth {
    fn header(&self) -> MetadataValue<tonic::metadata::Ascii> {
        match &self.token {
            Token::Value(token) => bearer(token),
            Token::File(path) => {
                let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
                match std::fs::read_to_string(path) {
                    Ok(token) => {
                        let header = bearer(&token);
                        *last = Some(header.clone());
                        header
                    }
                    Err(err) => {
                        tracing::warn!(path = %path.display(), %err, "cannot read the token file; sending the last token read");
                        last.clone().unwrap_or_else(|| bearer(""))
                    }
                }
            }
        }
    }
}

impl Interceptor for NodeAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.header());
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
            token: {
                // Readable now, so a wrong path fails at start.
                read("the token", token)?;
                Token::File(token.to_owned())
            },
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
        NodeAuth {
            token: self.token.clone(),
            last: Arc::default(),
        }
    }
}
