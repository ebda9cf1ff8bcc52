//! Objects → workload-API resources, the way istiod serves ambient mode.
//!
//! Every ztunnel receives every `Address` (each workload and each service:
//! a node proxy must know any destination's address, identity and whether it
//! speaks HBONE, wherever it runs) and every `Authorization` (small, and the
//! destination ztunnel evaluates the ones its local workloads list or that
//! are scoped to their namespace or the mesh). Resource names follow Istio:
//! a workload's uid, `namespace/hostname` for a service, `namespace/name` for
//! a policy.

mod authz;
mod l7_policy;
mod peer_authn;
pub mod routes;
mod services;
pub mod status;
mod traffic;
pub mod waypoints;
mod workloads;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnet::Ipv4Net;
use weft_proto::{
    istio::{security, workload},
    weft::l7::v1 as l7,
};

use crate::{
    objects::{Kind, Object},
    source::ConfigSnapshot,
};

/// Mesh-wide settings translation depends on.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// SPIFFE trust domain of every workload identity.
    pub trust_domain: String,
    /// Cluster id carried in workload uids and `cluster_id`.
    pub cluster_id: String,
    /// DNS suffix of services: `<svc>.<ns>.svc.<cluster_domain>`.
    pub cluster_domain: String,
    /// Policies here apply mesh-wide.
    pub root_namespace: String,
    /// Where services without a `clusterIP` get their VIP.
    pub service_vips: Ipv4Net,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            cluster_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            service_vips: Ipv4Net::new(Ipv4Addr::new(198, 19, 0, 0), 20).expect("valid prefix"),
        }
    }
}

/// The resources served to proxies, by resource name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub addresses: BTreeMap<String, workload::Address>,
    pub authorizations: BTreeMap<String, security::Authorization>,
    /// L7 routes of services behind waypoints, by `namespace/hostname`.
    pub routes: BTreeMap<String, l7::ServiceRoutes>,
    /// DestinationRule traffic policies, by service `namespace/hostname`.
    pub backend_policies: BTreeMap<String, l7::BackendPolicy>,
    /// Waypoint-enforced AuthorizationPolicies, by `namespace/name`.
    pub l7_policies: BTreeMap<String, l7::Policy>,
    /// Each HTTPRoute's status, per parent, by `namespace/name`.
    pub route_status: BTreeMap<String, Vec<routes::ParentStatus>>,
    /// Waypoint Gateways' and bound Services' statuses.
    pub statuses: status::Statuses,
    /// Things users should know about (policies that cannot be enforced as
    /// written, exhausted VIP ranges, …), one sentence each.
    pub warnings: Vec<String>,
    /// The identities of pods scheduled on each node, by node: what the CA
    /// signs for that node's ztunnel, from the moment a pod is bound there
    /// (its sandbox is set up, and ztunnel asks for its certificate, before
    /// kubelet reports its address and it becomes a workload).
    pub scheduled: BTreeMap<String, BTreeSet<weft_proto::spiffe::Identity>>,
}

/// Translates a snapshot.
pub fn translate(snapshot: &ConfigSnapshot, mesh: &MeshConfig) -> Resources {
    let mut out = Resources {
        scheduled: workloads::scheduled(snapshot, mesh),
        ..Resources::default()
    };
    let mut services = services::translate(snapshot, mesh, &mut out.warnings);
    let waypoints = waypoints::Waypoints::translate(snapshot, mesh, &services);
    for s in &mut services.services {
        s.service.waypoint = waypoints.for_service(&s.source);
    }
    for policy in l7_policy::translate(snapshot, &services, &waypoints, &mut out.warnings) {
        out.l7_policies
            .insert(format!("{}/{}", policy.namespace, policy.name), policy);
    }
    out.statuses = status::translate(&waypoints, &services);
    let compiled = routes::translate(snapshot, &services, &mut out.warnings);
    out.routes = compiled.services;
    out.route_status = compiled.status;
    for (service, faults) in traffic::faults(snapshot, &services, &mut out.warnings) {
        out.routes
            .entry(service.clone())
            .or_insert_with(|| l7::ServiceRoutes {
                service,
                ..Default::default()
            })
            .faults = faults;
    }
    for (service, protocols) in traffic::port_protocols(&services) {
        out.routes
            .entry(service.clone())
            .or_insert_with(|| l7::ServiceRoutes {
                service,
                ..Default::default()
            })
            .protocols = protocols;
    }
    for routes in out.routes.values_mut() {
        routes.default_route = routes.routes.is_empty();
    }
    out.backend_policies = traffic::backend_policies(snapshot, &services, &mut out.warnings);
    let policies = authz::translate(snapshot, mesh, &mut out.warnings);
    let peer = peer_authn::translate(snapshot, mesh);
    for policy in policies.policies.into_iter().chain(peer.policies) {
        out.authorizations
            .insert(format!("{}/{}", policy.namespace, policy.name), policy);
    }
    for w in workloads::translate(
        snapshot,
        mesh,
        &services,
        &policies.selectors,
        &peer.per_workload,
        &waypoints,
        &mut out.warnings,
    ) {
        out.addresses.insert(
            w.uid.clone(),
            workload::Address {
                r#type: Some(workload::address::Type::Workload(w)),
            },
        );
    }
    for s in services.services {
        out.addresses.insert(
            format!("{}/{}", s.service.namespace, s.service.hostname),
            workload::Address {
                r#type: Some(workload::address::Type::Service(s.service)),
            },
        );
    }
    out.statuses.policies = status::policies(
        snapshot
            .of_kind(Kind::AuthorizationPolicy)
            .filter_map(|o| match o {
                Object::AuthorizationPolicy(p) => Some(p),
                _ => None,
            }),
        &out.l7_policies,
        &out.warnings,
    );
    for warning in &out.warnings {
        tracing::warn!(%warning, "translation");
    }
    out
}

/// Istio's uid for a pod.
pub fn pod_uid(mesh: &MeshConfig, namespace: &str, name: &str) -> String {
    format!("{}//Pod/{namespace}/{name}", mesh.cluster_id)
}

/// A service's FQDN.
pub fn service_hostname(mesh: &MeshConfig, namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.{}", mesh.cluster_domain)
}

fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => Some(<[u8; 4]>::try_from(bytes).ok()?.into()),
        16 => Some(<[u8; 16]>::try_from(bytes).ok()?.into()),
        _ => None,
    }
}

fn ip_bytes(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}
