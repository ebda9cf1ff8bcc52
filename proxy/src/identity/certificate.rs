//! A workload's certificate and key, checked on arrival.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rustls::sign::CertifiedKey;

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use weft_proto::spiffe::Identity;
use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// Why a signed chain cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    #[error("the CA returned no certificates")]
    Empty,
    #[error("the CA returned a chain that is not PEM certificates: {0}")]
    Pem(String),
    #[error("the CA returned an unparseable certificate: {0}")]
    Parse(String),
    #[error("the CA signed {got:?} but {wanted} was asked for")]
    WrongIdentity { wanted: Identity, got: Vec<String> },
    #[error("the CA certified a different public key than the one in the request")]
    WrongKey,
}

/// A certificate chain (leaf first), its private key and the roots it
/// chains to.
pub struct WorkloadCertificate {
    pub identity: Identity,
    /// Leaf and intermediates (what a TLS peer is sent).
    pub chain: Vec<CertificateDer<'static>>,
    /// The trust anchors (the last certificate of the CA's chain).
    pub roots: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When this copy arrived; renewal is due halfway from here to expiry.
    pub received: SystemTime,
    certified: OnceLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl WorkloadCertificate {
    /// Checks the CA's answer to a request for `identity` made with `key`
    /// (PKCS#8 DER) whose public key is `public_key` (SubjectPublicKeyInfo
    /// DER contents).
    pub fn from_chain_pem(
        identity: &Identity,
        chain_pem: &[String],
        key_pkcs8: Vec<u8>,
        public_key: &[u8],
    ) -> Result<Self, CertificateError> {
        let mut certs = Vec::new();
        for pem in chain_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                certs.push(cert.map_err(|e| CertificateError::Pem(e.to_string()))?);
            }
        }
        if certs.is_empty() {
            return Err(CertificateError::Empty);
        }
        let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&certs[0])
            .map_err(|e| CertificateError::Parse(e.to_string()))?;
        let uris = uri_sans_of(&leaf);
        if uris != [identity.to_string()] {
            return Err(CertificateError::WrongIdentity {
                wanted: identity.clone(),
                got: uris,
            });
        }
        if leaf.public_key().subject_public_key.data.as_ref() != public_key {
            return Err(CertificateError::WrongKey);
        }
        let time = |t: x509_parser::time::ASN1Time| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
        };
        let not_before = time(leaf.validity().not_before);
        let not_after = time(leaf.validity().not_after);
        let serial = leaf.raw_serial_as_string();
        let roots = if certs.len() > 1 {
            vec![certs.pop().expect("len > 1")]
        } else {
            Vec::new()
        };
        Ok(Self {
            identity: identity.clone(),
            chain: certs,
            roots,
            key: PrivatePkcs8KeyDer::from(key_pkcs8),
            serial,
            not_before,
            not_after,
            received: SystemTime::now(),
            certified: OnceLock::new(),
        })
    }

    /// The chain and signing key as rustls uses them (built once).
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>, rustls::Error> {
        if let Some(key) = self.certified.get() {
            return Ok(key.clone());
        }
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signing = provider.key_provider.load_private_key(self.key())?;
        let key = Arc::new(CertifiedKey::new(self.chain.clone(), signing));
        Ok(self.certified.get_or_init(|| key).clone())
    }

    /// The private key, for a TLS configuration.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// When to renew: halfway through the remaining lifetime at arrival.
    pub fn refresh_at(&self) -> SystemTime {
        let remaining = self
            .not_after
            .duration_since(self.received)
            .unwrap_or_default();
        self.received + remaining / 2
    }
}

fn uri_sans_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The SPIFFE identity a (peer's) certificate carries as its only URI SAN.
pub fn identity_of(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| format!("unparseable certificate: {e}"))?;
    match uri_sans_of(&cert).as_slice() {
        [uri] => uri.parse::<Identity>().map_err(|e| e.to_string()),
        [] => Err("the certificate has no URI SAN (no SPIFFE identity)".into()),
        many => Err(format!(
            "the certificate has {} URI SANs; a workload has one identity",
            many.len()
        )),
    }
}
