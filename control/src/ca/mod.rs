//! The certificate authority: a root kept on disk, and the gRPC service
//! (`istio.v1.auth.IstioCertificateService`) through which node proxies get
//! certificates for their workloads.

pub mod authority;
pub mod service;

pub use authority::{Authority, CaError};
