//! The mesh's root of trust and the signing of workload certificates.
//!
//! The root (ECDSA P-256) is created on first start and persisted as
//! `root-cert.pem` / `root-key.pem` (mode 0600) in the CA directory; later
//! starts load it, so certificates survive restarts. Workload certificates
//! carry exactly one URI SAN, the SPIFFE identity, and nothing a CSR asks
//! for beyond its public key: a CSR cannot make itself a CA or add names.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use weft_proto::spiffe::Identity;

pub const ROOT_CERT: &str = "root-cert.pem";
pub const ROOT_KEY: &str = "root-key.pem";
/// Certificates start this long before "now", to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(60);
/// The root lives ten years.
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// No workload certificate lives shorter: proxies renew at half-life, and a
/// lifetime near zero would have every proxy renewing in a tight loop.
pub const MIN_LIFETIME: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA files in {dir} are unusable ({reason}); restore them, or remove both to create a new root (every workload certificate then changes)")]
    BadRoot { dir: PathBuf, reason: String },
    #[error("the CSR is not a valid, self-signed PKCS#10 request in PEM: {0}")]
    BadCsr(String),
    #[error("the CSR must name exactly one identity as a URI SAN (spiffe://…); it names {0}")]
    CsrNames(String),
    #[error(transparent)]
    Identity(#[from] weft_proto::spiffe::IdentityError),
    #[error("identity {identity} is outside this mesh's trust domain {trust_domain}")]
    ForeignTrustDomain {
        identity: Identity,
        trust_domain: String,
    },
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("the CSR's key is {0}; workload keys must be ECDSA P-256 or P-384")]
    KeyType(String),
    #[error(
        "{path} is readable by others (mode {mode:o}); the mesh root key must be private to the \
         control service: chmod 600 {path}"
    )]
    OpenKey { path: PathBuf, mode: u32 },
}

/// A signed certificate chain, leaf first.
#[derive(Clone, Debug)]
pub struct SignedChain {
    pub identity: Identity,
    pub chain_pem: Vec<String>,
    pub not_after: OffsetDateTime,
}

/// The CA: root certificate and key, and the signing policy.
pub struct Authority {
    trust_domain: String,
    root_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// Lifetime when the request does not ask for one.
    pub default_lifetime: Duration,
    /// Upper bound on any requested lifetime.
    pub max_lifetime: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the root from `dir`, or creates (and saves) one there.
    pub fn load_or_create(dir: &Path, trust_domain: &str) -> Result<Self, CaError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join(ROOT_CERT);
        let key_path = dir.join(ROOT_KEY);
        let bad = |reason: String| CaError::BadRoot {
            dir: dir.to_owned(),
            reason,
        };
        let (root_pem, key) = match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&key_path)
                    .map_err(io(&key_path))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(CaError::OpenKey {
                        path: key_path,
                        mode: mode & 0o777,
                    });
                }
                let root_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
                let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
                let key =
                    KeyPair::from_pem(&key_pem).map_err(|e| bad(format!("{ROOT_KEY}: {e}")))?;
                (root_pem, key)
            }
            (false, false) => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
                let cert = root_params(trust_domain).self_signed(&key)?;
                let root_pem = cert.pem();
                write_private(&key_path, key.serialize_pem().as_bytes()).map_err(io(&key_path))?;
                std::fs::write(&cert_path, &root_pem).map_err(io(&cert_path))?;
                tracing::info!(dir = %dir.display(), %trust_domain, "created a new mesh root CA");
                (root_pem, key)
            }
            _ => {
                return Err(bad(format!(
                    "only one of {ROOT_CERT} and {ROOT_KEY} exists"
                )))
            }
        };
        let issuer = Issuer::from_ca_cert_pem(&root_pem, key)
            .map_err(|e| bad(format!("{ROOT_CERT}: {e}")))?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            root_pem,
            issuer,
            default_lifetime: Duration::from_secs(24 * 3600),
            max_lifetime: Duration::from_secs(24 * 3600),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificate, PEM: what every proxy trusts.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// The identity a CSR asks for, after checking its signature and shape.
    pub fn csr_identity(
        &self,
        csr_pem: &str,
    ) -> Result<(Identity, CertificateSigningRequestParams), CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let algorithm = csr.public_key.algorithm();
        if algorithm != &rcgen::PKCS_ECDSA_P256_SHA256
            && algorithm != &rcgen::PKCS_ECDSA_P384_SHA384
        {
            return Err(CaError::KeyType(format!("{algorithm:?}")));
        }
        let names: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| format!("{san:?}"))
            .collect();
        let identity = match csr.params.subject_alt_names.as_slice() {
            [SanType::URI(uri)] => uri.as_str().parse::<Identity>()?,
            _ => {
                return Err(CaError::CsrNames(if names.is_empty() {
                    "no SAN".into()
                } else {
                    names.join(", ")
                }))
            }
        };
        if identity.trust_domain != self.trust_domain {
            return Err(CaError::ForeignTrustDomain {
                identity,
                trust_domain: self.trust_domain.clone(),
            });
        }
        Ok((identity, csr))
    }

    /// Signs a workload certificate for the CSR's identity and public key.
    /// The caller must already have decided the caller may have it.
    pub fn sign(&self, csr_pem: &str, requested: Option<Duration>) -> Result<SignedChain, CaError> {
        let (identity, csr) = self.csr_identity(csr_pem)?;
        let lifetime = requested
            .filter(|d| !d.is_zero())
            .unwrap_or(self.default_lifetime)
            .min(self.max_lifetime)
            .max(MIN_LIFETIME);
        let now = OffsetDateTime::now_utc();
        let mut params = leaf_params(now, lifetime);
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let not_after = params.not_after;
        let leaf = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        }
        .signed_by(&self.issuer)?;
        Ok(SignedChain {
            identity,
            chain_pem: vec![leaf.pem(), self.root_pem.clone()],
            not_after,
        })
    }

    /// A serving certificate (and its new key, PEM) for the control service
    /// itself: its DNS names and IPs, plus its own SPIFFE identity.
    pub fn serving_certificate(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
    ) -> Result<(Vec<String>, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = leaf_params(
            OffsetDateTime::now_utc(),
            Duration::from_secs(365 * 24 * 3600),
        );
        let identity = Identity::new(&self.trust_domain, "weft-system", "weft-control");
        params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
        for name in dns_names {
            params
                .subject_alt_names
                .push(SanType::DnsName(name.clone().try_into()?));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((vec![cert.pem(), self.root_pem.clone()], key.serialize_pem()))
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn leaf_params(now: OffsetDateTime, lifetime: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    params
}

fn root_params(trust_domain: &str) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, trust_domain);
    dn.push(DnType::CommonName, "Weft mesh root CA");
    params.distinguished_name = dn;
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = now + ROOT_LIFETIME;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(alg: &'static rcgen::SignatureAlgorithm) -> String {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/demo/sa/app".try_into().unwrap(),
        )];
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn only_p256_and_p384_keys_are_signed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::load_or_create(dir.path(), "cluster.local").unwrap();
        let cases = [
            (&rcgen::PKCS_ECDSA_P256_SHA256, true),
            (&rcgen::PKCS_ECDSA_P384_SHA384, true),
            (&rcgen::PKCS_ED25519, false),
        ];
        for (alg, signed) in cases {
            let result = ca.sign(&csr(alg), None);
            assert_eq!(result.is_ok(), signed, "{alg:?}: {:?}", result.err());
            if let Err(err) = result {
                assert!(err.to_string().contains("ECDSA P-256 or P-384"), "{err}");
            }
        }
    }

    #[test]
    fn no_certificate_lives_shorter_than_the_minimum() {
        let dir = tempfile::tempdir().unwrap();
        let mut ca = Authority::load_or_create(dir.path(), "cluster.local").unwrap();
        ca.default_lifetime = Duration::ZERO;
        let before = OffsetDateTime::now_utc();
        for requested in [None, Some(Duration::from_millis(100))] {
            let signed = ca
                .sign(&csr(&rcgen::PKCS_ECDSA_P256_SHA256), requested)
                .unwrap();
            assert!(
                signed.not_after >= before + MIN_LIFETIME,
                "{requested:?}: not after {}",
                signed.not_after
            );
        }
    }

    #[test]
    fn a_root_key_others_can_read_is_refused_at_load() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        Authority::load_or_create(dir.path(), "cluster.local").unwrap();
        let key = dir.path().join(ROOT_KEY);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Authority::load_or_create(dir.path(), "cluster.local").unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        Authority::load_or_create(dir.path(), "cluster.local").unwrap();
    }
}
