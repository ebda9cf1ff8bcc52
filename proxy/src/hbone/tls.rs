//! mTLS for HBONE: TLS 1.3 only, ALPN `h2`, SPIFFE identities on both ends.
//!
//! - The client checks that the server's chain ends at the mesh root and
//!   that its one URI SAN is exactly the identity the destination workload
//!   must have (not a DNS name: HBONE peers are named by identity).
//! - The server requires a client certificate chained to the mesh root, and
//!   [`peer_identity`] then reads the client's identity and checks its trust
//!   domain.
//!
//! The cipher preference puts AES-128-GCM first: with AES-NI it is the
//! cheapest AEAD per byte, and every byte of mesh traffic pays it twice.

use std::sync::Arc;

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{aws_lc_rs, CryptoProvider},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier},
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
};
use weft_proto::spiffe::Identity;

use crate::identity::{certificate::identity_of, WorkloadCertificate};

/// ALPN protocol of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration or a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("the mesh root certificate is unusable: {0}")]
    Roots(String),
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("the peer's certificate names no usable identity: {0}")]
    PeerIdentity(String),
    #[error("peer {identity} is from trust domain {}, not this mesh's {expected}", identity.trust_domain)]
    ForeignTrustDomain {
        identity: Identity,
        expected: String,
    },
}

/// aws-lc-rs with AES-128-GCM preferred and TLS 1.3 suites only.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
        aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    Arc::new(provider)
}

/// The mesh root(s) and trust domain peers must belong to.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    pub roots: Arc<RootCertStore>,
    pub trust_domain: String,
}

impl TrustBundle {
    pub fn new(roots: &[CertificateDer<'static>], trust_domain: &str) -> Result<Self, TlsError> {
        let mut store = RootCertStore::empty();
        for root in roots {
            store
                .add(root.clone())
                .map_err(|e| TlsError::Roots(e.to_string()))?;
        }
        if store.is_empty() {
            return Err(TlsError::Roots("no root certificate".into()));
        }
        Ok(Self {
            roots: Arc::new(store),
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// From a PEM bundle.
    pub fn from_pem(pem: &str, trust_domain: &str) -> Result<Self, TlsError> {
        use rustls_pki_types::pem::PemObject;
        let roots = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Roots(e.to_string()))?;
        Self::new(&roots, trust_domain)
    }
}

/// Checks a server's chain and that it is `expected`.
#[derive(Debug)]
struct IdentityVerifier {
    roots: Arc<RootCertStore>,
    expected: Identity,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let identity = identity_of(end_entity).map_err(rustls::Error::General)?;
        if identity != self.expected {
            return Err(rustls::Error::General(format!(
                "the server is {identity}, but the destination must be {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("HBONE requires TLS 1.3".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration presenting `source`'s certificate and accepting
/// only a server that proves `destination`.
pub fn client_config(
    source: &WorkloadCertificate,
    destination: &Identity,
    trust: &TrustBundle,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(IdentityVerifier {
        roots: trust.roots.clone(),
        expected: destination.clone(),
        provider: provider.clone(),
    });
    let key = source.certified_key()?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(FixedClientCert(key)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // A session per (source, destination) pair is pooled anyway; resumption
    // would only add state.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Presents one certificate as the client.
#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _hints: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// A server configuration presenting what `certs` resolves and requiring a
/// client certificate chained to the mesh root.
pub fn server_config(
    certs: Arc<dyn ResolvesServerCert>,
    trust: &TrustBundle,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(trust.roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Roots(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The verified peer's identity, after a server handshake.
pub fn peer_identity(
    certs: Option<&[CertificateDer<'static>]>,
    trust: &TrustBundle,
) -> Result<Identity, TlsError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    let identity = identity_of(leaf).map_err(TlsError::PeerIdentity)?;
    if identity.trust_domain != trust.trust_domain {
        return Err(TlsError::ForeignTrustDomain {
            identity,
            expected: trust.trust_domain.clone(),
        });
    }
    Ok(identity)
}

/// Resolves the server certificate of one workload from a source that
/// always holds its current certificate (renewals are picked up).
pub struct WorkloadCertResolver<F> {
    current: F,
}

impl<F> WorkloadCertResolver<F>
where
    F: Fn() -> Option<Arc<WorkloadCertificate>> + Send + Sync,
{
    pub fn new(current: F) -> Self {
        Self { current }
    }
}

impl<F> std::fmt::Debug for WorkloadCertResolver<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkloadCertResolver")
    }
}

impl<F> ResolvesServerCert for WorkloadCertResolver<F>
where
    F: Fn() -> Option<Arc<WorkloadCertificate>> + Send + Sync,
{
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let cert = (self.current)()?;
        match cert.certified_key() {
            Ok(key) => Some(key),
            Err(err) => {
                tracing::error!(identity = %cert.identity, %err, "unusable workload key");
                None
            }
        }
    }
}
