//! `istio.v1.auth.IstioCertificateService/CreateCertificate`.
//!
//! A node proxy asks for a certificate on behalf of one of its workloads
//! (a waypoint, on Kubernetes, for itself only). The caller is
//! authenticated by its node credential, and the identity in
//! the CSR must be that of a workload the current configuration schedules
//! on the caller's node: a compromised node can obtain only the identities
//! of workloads it already runs.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tonic::{Request, Response, Status};
use weft_proto::istio::{
    v1::auth::{
        istio_certificate_service_server::IstioCertificateService, IstioCertificateRequest,
        IstioCertificateResponse,
    },
    workload::address::Type,
};

use super::{Authority, CaError};
use crate::{
    auth::{Authenticator, Caller},
    xds::XdsSnapshot,
};

/// Metadata key naming the identity a node proxy requests for a workload.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

pub struct CaService {
    authority: Arc<Authority>,
    credentials: Arc<Authenticator>,
    snapshots: watch::Receiver<Arc<XdsSnapshot>>,
}

impl CaService {
    pub fn new(
        authority: Arc<Authority>,
        credentials: Arc<Authenticator>,
        snapshots: watch::Receiver<Arc<XdsSnapshot>>,
    ) -> Self {
        Self {
            authority,
            credentials,
            snapshots,
        }
    }

    /// Whether a pod with `identity` is scheduled on `node`: bound there
    /// (its address not known yet, as while its sandbox is set up), or a
    /// workload of the node.
    fn runs_on(&self, identity: &weft_proto::spiffe::Identity, node: &str) -> bool {
        let snapshot = self.snapshots.borrow().clone();
        if snapshot
            .resources
            .scheduled
            .get(node)
            .is_some_and(|identities| identities.contains(identity))
        {
            return true;
        }
        snapshot
            .resources
            .addresses
            .values()
            .any(|address| match &address.r#type {
                Some(Type::Workload(w)) => {
                    w.node == node
                        && w.trust_domain == identity.trust_domain
                        && w.namespace == identity.namespace
                        && w.service_account == identity.service_account
                }
                _ => false,
            })
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let caller = self.credentials.authenticate(request.metadata()).await?;
        let request = request.into_inner();
        let (identity, _) = self.authority.csr_identity(&request.csr).map_err(|err| {
            tracing::warn!(%caller, %err, "refused a certificate request");
            Status::invalid_argument(err.to_string())
        })?;
        let impersonated = request
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        if let Some(claimed) = impersonated {
            if claimed != identity.to_string() {
                let message = format!(
                    "refusing to sign: the CSR names {identity} but {IMPERSONATED_IDENTITY} says {claimed}"
                );
                tracing::warn!(%caller, %identity, "{message}");
                return Err(Status::invalid_argument(message));
            }
        }
        let refusal = match &caller {
            Caller::Node(node) if !self.runs_on(&identity, node) => Some(format!(
                "refusing to sign {identity} for node {node}: no workload with that identity is scheduled on {node}"
            )),
            Caller::Waypoint {
                namespace,
                service_account,
                ..
            } if identity.namespace != *namespace || identity.service_account != *service_account => {
                Some(format!(
                    "refusing to sign {identity} for {caller}: a waypoint gets its own identity only"
                ))
            }
            _ => None,
        };
        if let Some(message) = refusal {
            tracing::warn!(%caller, %identity, "{message}");
            return Err(Status::permission_denied(message));
        }
        let requested = u64::try_from(request.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let signed = self
            .authority
            .sign(&request.csr, requested)
            .map_err(|err| match err {
                CaError::Sign(_) => Status::internal(err.to_string()),
                other => Status::invalid_argument(other.to_string()),
            })?;
        tracing::info!(%caller, identity = %signed.identity, not_after = %signed.not_after, "signed a workload certificate");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: signed.chain_pem,
        }))
    }
}
