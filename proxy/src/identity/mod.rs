//! Workload identities and their certificates.
//!
//! [`CertificateManager`] obtains a certificate per identity from the CA
//! ([`ca_client`]), keeps one per identity, renews it at half-life, and keeps
//! a still-valid certificate when renewal fails (retrying with backoff).

pub mod ca_client;
pub mod certificate;
pub mod manager;

pub use certificate::{CertificateError, WorkloadCertificate};
pub use manager::{CertificateInfo, CertificateManager};
pub use weft_proto::spiffe::Identity;
