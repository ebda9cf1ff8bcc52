//! Certificates and TLS clients for testing refusals: certificates signed
//! by the mesh root key directly (so they can be expired, or name another
//! trust domain, which the CA would never issue), and a client that does not
//! check the server, to see what the server itself refuses.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context;
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType,
};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, SignatureScheme,
};
use weft_proto::spiffe::Identity;
use weft_proxy::identity::WorkloadCertificate;

/// A certificate for `identity` valid from `not_before` to `not_after`
/// (relative to now), signed with the root key in the CA directory.
pub fn certificate(
    ca_dir: &Path,
    identity: &Identity,
    not_before: i64,
    not_after: i64,
) -> anyhow::Result<WorkloadCertificate> {
    let root_pem =
        std::fs::read_to_string(ca_dir.join("root-cert.pem")).context("root certificate")?;
    let root_key = KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("root-key.pem"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&root_pem, root_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::seconds(not_before);
    params.not_after = now + time::Duration::seconds(not_after);
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer)?;
    Ok(WorkloadCertificate::from_chain_pem(
        identity,
        &[cert.pem(), root_pem],
        key.serialize_der(),
        key.public_key_raw(),
    )?)
}

/// Accepts any server certificate (the test checks the server's verdict).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS 1.3 client offering `h2`, presenting `cert` (or none), trusting
/// any server.
pub fn client_config(
    cert: Option<&WorkloadCertificate>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = weft_proxy::hbone::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut config = match cert {
        Some(cert) => builder.with_client_auth_cert(cert.chain.clone(), cert.key())?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Tries a TLS handshake and one read over `tcp`; `Ok` only if the server
/// sent application data (it should not, for a refused client).
pub async fn tls_exchange(
    tcp: tokio::net::TcpStream,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let name = ServerName::try_from("hbone").expect("valid name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await??;
    anyhow::ensure!(n > 0, "closed");
    Ok(n)
}
