//! Weft's node side on Kubernetes.
//!
//! - [`cni`]: `weft-cni`, the chained CNI plugin the container runtime runs
//!   for every pod after the cluster's own plugin;
//! - [`agent`]: the node agent, which answers the plugin, decides with the
//!   API server which pods are in the mesh ([`enrollment`], the control
//!   service's own rules) and hands them to the node's ztunnel over ZDS
//!   (`weft_zds`);
//! - [`plugin_api`]: what the two say to each other;
//! - [`install`]: the plugin's binary and its place in the node's CNI
//!   configuration;
//! - [`running`]: pods already running, enrolled and released as labels
//!   change, their namespaces found through `/proc`.
//!
//! The node agent runs in its own DaemonSet, not in ztunnel's pod, as
//! Istio's CNI agent does: it holds every pod's network namespace and the
//! plugin's answers, so ztunnel can be upgraded (the new one gets a
//! snapshot, new pods wait) without a pod ever starting uncaptured.

pub mod agent;
pub mod app;
pub mod cni;
pub mod enrollment;
pub mod install;
pub mod plugin_api;
pub mod running;
