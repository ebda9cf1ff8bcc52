//! Asking the CA to sign: a fresh ECDSA P-256 key and CSR per request.

use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use tokio::sync::Mutex;
use weft_proto::{
    istio::v1::auth::{
        istio_certificate_service_client::IstioCertificateServiceClient, IstioCertificateRequest,
    },
    spiffe::Identity,
};

use super::certificate::{CertificateError, WorkloadCertificate};
use crate::control::{AuthedChannel, ControlPlane, ControlPlaneError};

/// Metadata key naming the identity requested on a workload's behalf.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

#[derive(Debug, thiserror::Error)]
pub enum CaClientError {
    #[error(transparent)]
    Connect(#[from] ControlPlaneError),
    #[error("the CA refused to sign {identity}: {message} ({code:?})")]
    Refused {
        identity: Identity,
        code: tonic::Code,
        message: String,
    },
    #[error("building a CSR for {identity}: {reason}")]
    Csr { identity: Identity, reason: String },
    #[error("the CA's answer for {identity} is unusable: {source}")]
    Certificate {
        identity: Identity,
        #[source]
        source: CertificateError,
    },
}

/// A client of `IstioCertificateService`, reusing one connection.
pub struct CaClient {
    control: ControlPlane,
    channel: Mutex<Option<AuthedChannel>>,
    /// Requested certificate lifetime (the CA may shorten it).
    pub lifetime: Option<Duration>,
}

impl CaClient {
    pub fn new(control: ControlPlane) -> Self {
        Self {
            control,
            channel: Mutex::new(None),
            lifetime: None,
        }
    }

    /// Requests a certificate for `identity`.
    pub async fn sign(&self, identity: &Identity) -> Result<WorkloadCertificate, CaClientError> {
        let csr_error = |e: rcgen::Error| CaClientError::Csr {
            identity: identity.clone(),
            reason: e.to_string(),
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(csr_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity.to_string().try_into().map_err(csr_error)?,
        )];
        let csr = params
            .serialize_request(&key)
            .map_err(csr_error)?
            .pem()
            .map_err(csr_error)?;
        let request = IstioCertificateRequest {
            csr,
            validity_duration: self.lifetime.map(|d| d.as_secs() as i64).unwrap_or(0),
            metadata: Some(prost_types::Struct {
                fields: [(
                    IMPERSONATED_IDENTITY.to_owned(),
                    prost_types::Value {
                        kind: Some(prost_types::value::Kind::StringValue(identity.to_string())),
                    },
                )]
                .into(),
            }),
        };
        let channel = self.channel().await?;
        let response = IstioCertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
            .map_err(|status| {
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown
                ) {
                    // The connection may be broken: make a new one next time.
                    if let Ok(mut guard) = self.channel.try_lock() {
                        *guard = None;
                    }
                }
                CaClientError::Refused {
                    identity: identity.clone(),
                    code: status.code(),
                    message: status.message().to_owned(),
                }
            })?
            .into_inner();
        WorkloadCertificate::from_chain_pem(
            identity,
            &response.cert_chain,
            key.serialize_der(),
            key.public_key_raw(),
        )
        .map_err(|source| CaClientError::Certificate {
            identity: identity.clone(),
            source,
        })
    }

    async fn channel(&self) -> Result<AuthedChannel, ControlPlaneError> {
        let mut guard = self.channel.lock().await;
        if let Some(channel) = guard.as_ref() {
            return Ok(channel.clone());
        }
        let channel = self.control.connect().await?;
        *guard = Some(channel.clone());
        Ok(channel)
    }
}
