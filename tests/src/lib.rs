//! Weft's test harness and end-to-end tests.
//!
//! [`topology`] builds a small cluster out of network namespaces: a fabric
//! namespace plays the physical network, each node is a namespace wired to it
//! with a veth and routes to the other nodes' pod subnets, and each pod is a
//! namespace (plus a cgroup v2 directory) whose network comes from Debian's
//! real CNI `bridge` + `host-local` plugins, invoked as a container runtime
//! would. Tests, benchmarks and `weft local` all build on it.
//!
//! Everything the harness creates carries one name prefix ([`topology::PREFIX`])
//! and the creating process's pid, so a later run can find and remove what a
//! killed run left behind; [`topology::leftovers`] lists anything remaining.
//!
//! [`kube`] runs a real Kubernetes API server (etcd, kube-apiserver,
//! kube-controller-manager) on loopback for the tests that read a cluster.
//!
//! [`privilege`] makes tests that need root and kernel features fail with an
//! explanation rather than skip.

pub mod apps;
pub mod bench;
pub mod capture;
pub mod forge;
pub mod grpc;
pub mod kube;
pub mod kubelet;
pub mod mesh;
pub mod otlp;
pub mod privilege;
pub mod processes;
pub mod prometheus;
pub mod topology;
