//! Pods → `istio.workload.Workload`.

use std::collections::BTreeMap;

use weft_proto::istio::workload;

use super::{ip_bytes, pod_uid, services::Services, MeshConfig};
use crate::{
    objects::{Kind, Labels, Namespace, Object},
    source::ConfigSnapshot,
};

/// Istio's canonical service name and revision labels, with its fallbacks.
fn canonical(labels: &Labels, pod_name: &str) -> (String, String) {
    let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k).cloned());
    let name = first(&[
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ])
    .unwrap_or_else(|| pod_name.to_owned());
    let revision = first(&[
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ])
    .unwrap_or_else(|| "latest".to_owned());
    (name, revision)
}

/// Addresses more than one live pod claims, with the pods, in a sentence
/// each: a stale pod or an address reused too early. Both pods are still
/// published; the proxies treat such an address as nobody's (and decide
/// inbound connections by the pod they serve, not by address).
fn address_conflicts<'a>(pods: impl Iterator<Item = &'a crate::objects::Pod>) -> Vec<String> {
    let mut claims: BTreeMap<std::net::IpAddr, Vec<String>> = BTreeMap::new();
    // Host-network pods share their node's address by design.
    for pod in pods.filter(|p| !p.host_network) {
        for ip in &pod.ips {
            claims
                .entry(*ip)
                .or_default()
                .push(format!("Pod {}/{}", pod.namespace, pod.name));
        }
    }
    claims
        .into_iter()
        .filter(|(_, pods)| pods.len() > 1)
        .map(|(ip, pods)| {
            format!(
                "{} all claim address {ip}; it belongs to none of them until only one does \
                 (delete the stale pod, or set its status.phase to Succeeded or Failed)",
                pods.join(", ")
            )
        })
        .collect()
}

/// The identity of every pod bound to a node and not finished, by node,
/// whether or not it has an address yet.
pub fn scheduled(
    snapshot: &ConfigSnapshot,
    mesh: &MeshConfig,
) -> BTreeMap<String, std::collections::BTreeSet<weft_proto::spiffe::Identity>> {
    let mut out: BTreeMap<String, std::collections::BTreeSet<_>> = BTreeMap::new();
    for object in snapshot.of_kind(Kind::Pod) {
        let Object::Pod(pod) = object else { continue };
        if pod.node_name.is_empty() || pod.terminated {
            continue;
        }
        out.entry(pod.node_name.clone())
            .or_default()
            .insert(weft_proto::spiffe::Identity::new(
                &mesh.trust_domain,
                &pod.namespace,
                &pod.service_account,
            ));
    }
    out
}

pub fn translate(
    snapshot: &ConfigSnapshot,
    mesh: &MeshConfig,
    services: &Services,
    selector_policies: &[(String, String, Labels)],
    peer_policies: &BTreeMap<(String, String), Vec<String>>,
    waypoints: &super::waypoints::Waypoints<'_>,
    warnings: &mut Vec<String>,
) -> Vec<workload::Workload> {
    let namespaces: BTreeMap<&str, &Namespace> = snapshot
        .of_kind(Kind::Namespace)
        .filter_map(|o| match o {
            Object::Namespace(n) => Some((n.name.as_str(), n)),
            _ => None,
        })
        .collect();
    let live = || {
        snapshot.of_kind(Kind::Pod).filter_map(|o| match o {
            Object::Pod(p) if !p.ips.is_empty() && !p.terminated => Some(p),
            _ => None,
        })
    };
    warnings.extend(address_conflicts(live()));
    live()
        .map(|pod| {
            // A waypoint's own pod terminates HBONE itself.
            let enrolled = pod.is_enrolled(namespaces.get(pod.namespace.as_str()).copied())
                || waypoints.is_waypoint_pod(&pod.namespace, &pod.labels);
            let (canonical_name, canonical_revision) = canonical(&pod.labels, &pod.name);
            let mut service_ports = BTreeMap::new();
            for s in services.selecting(&pod.namespace, &pod.labels) {
                let ports = s
                    .source
                    .ports
                    .iter()
                    .filter_map(|p| {
                        pod.resolve_port(&p.target_port)
                            .map(|target| workload::Port {
                                service_port: u32::from(p.port),
                                target_port: u32::from(target),
                            })
                    })
                    .collect();
                service_ports.insert(
                    format!("{}/{}", s.service.namespace, s.service.hostname),
                    workload::PortList { ports },
                );
            }
            let mut authorization_policies: Vec<String> = selector_policies
                .iter()
                .filter(|(namespace, _, selector)| {
                    // A selector policy of the root namespace selects
                    // matching pods of every namespace, as in Istio.
                    (*namespace == pod.namespace || *namespace == mesh.root_namespace)
                        && crate::objects::selects(selector, &pod.labels)
                })
                .map(|(namespace, name, _)| format!("{namespace}/{name}"))
                .collect();
            if let Some(extra) = peer_policies.get(&(pod.namespace.clone(), pod.name.clone())) {
                authorization_policies.extend(extra.iter().cloned());
            }
            workload::Workload {
                uid: pod_uid(mesh, &pod.namespace, &pod.name),
                name: pod.name.clone(),
                namespace: pod.namespace.clone(),
                addresses: pod.ips.iter().copied().map(ip_bytes).collect(),
                tunnel_protocol: if enrolled {
                    workload::TunnelProtocol::Hbone as i32
                } else {
                    workload::TunnelProtocol::None as i32
                },
                trust_domain: mesh.trust_domain.clone(),
                service_account: pod.service_account.clone(),
                node: pod.node_name.clone(),
                canonical_name,
                canonical_revision,
                workload_type: workload::WorkloadType::Pod as i32,
                workload_name: pod.name.clone(),
                services: service_ports,
                authorization_policies,
                status: workload::WorkloadStatus::Healthy as i32,
                cluster_id: mesh.cluster_id.clone(),
                waypoint: waypoints.for_pod(pod),
                network_mode: if pod.host_network {
                    workload::NetworkMode::HostNetwork as i32
                } else {
                    workload::NetworkMode::Standard as i32
                },
                ..Default::default()
            }
        })
        .collect()
}
