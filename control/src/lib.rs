//! Weft's control service.
//!
//! Data flows one way: a source ([`source::local`] reads a directory of
//! Kubernetes-style YAML; [`source::kubernetes`] reads the API server)
//! produces snapshots of [`objects`]; [`translate`] turns each snapshot into
//! workload-API resources (`Address`, `Authorization`); the [`xds`] store
//! versions them and the delta-ADS server pushes the differences to every
//! connected ztunnel and waypoint. The [`ca`] signs workload certificates for
//! node proxies, checking that each identity belongs to a workload scheduled
//! on the caller's node, which it learns from the same snapshots.

pub mod app;
pub mod auth;
pub mod ca;
pub mod cluster;
pub mod config;
pub mod crds;
pub mod objects;
pub mod server;
pub mod source;
pub mod translate;
pub mod xds;
