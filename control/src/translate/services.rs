//! Services → `istio.workload.Service`, with VIPs for those that lack one.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use sha2::{Digest, Sha256};

use weft_proto::istio::workload;

use super::{ip_bytes, service_hostname, MeshConfig};
use crate::{
    objects::{ClusterIp, Kind, Object, Service},
    source::ConfigSnapshot,
};

/// A translated service with what workloads need to know about it.
pub struct TranslatedService {
    pub source: Service,
    pub service: workload::Service,
}

pub struct Services {
    pub services: Vec<TranslatedService>,
}

impl Services {
    /// The services whose selector selects a pod with `labels` in `namespace`.
    pub fn selecting<'a>(
        &'a self,
        namespace: &'a str,
        labels: &'a crate::objects::Labels,
    ) -> impl Iterator<Item = &'a TranslatedService> + 'a {
        self.services.iter().filter(move |s| {
            s.source.namespace == namespace
                && s.source
                    .selector
                    .as_ref()
                    .is_some_and(|sel| !sel.is_empty() && crate::objects::selects(sel, labels))
        })
    }
}

pub fn translate(
    snapshot: &ConfigSnapshot,
    mesh: &MeshConfig,
    warnings: &mut Vec<String>,
) -> Services {
    let services: Vec<&Service> = snapshot
        .of_kind(Kind::Service)
        .filter_map(|o| match o {
            Object::Service(s) => Some(s),
            _ => None,
        })
        .collect();
    let vips = allocate_vips(&services, mesh, warnings);
    let services = services
        .into_iter()
        .map(|s| {
            let key = format!("{}/{}", s.namespace, s.name);
            let addresses = vips
                .get(&key)
                .map(|ip| {
                    vec![workload::NetworkAddress {
                        network: String::new(),
                        address: ip_bytes(*ip),
                    }]
                })
                .unwrap_or_default();
            let ports = s
                .ports
                .iter()
                .map(|p| workload::Port {
                    service_port: u32::from(p.port),
                    // A named target port is resolved per workload (in the
                    // workload's `services` map); 0 means "see the workload".
                    target_port: match &p.target_port {
                        crate::objects::TargetPort::Number(n) => u32::from(*n),
                        crate::objects::TargetPort::Name(_) => 0,
                    },
                })
                .collect();
            TranslatedService {
                service: workload::Service {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    hostname: service_hostname(mesh, &s.namespace, &s.name),
                    addresses,
                    ports,
                    ..Default::default()
                },
                source: s.clone(),
            }
        })
        .collect();
    Services { services }
}

/// Explicit `clusterIP`s are kept; the others get an address of the VIP range
/// chosen by a hash of `namespace/name`, so a service keeps its VIP across
/// control-service restarts (linear probing on collision, in name order).
fn allocate_vips(
    services: &[&Service],
    mesh: &MeshConfig,
    warnings: &mut Vec<String>,
) -> BTreeMap<String, IpAddr> {
    let mut out = BTreeMap::new();
    let mut taken: BTreeSet<IpAddr> = BTreeSet::new();
    for s in services {
        if let ClusterIp::Ip(ip) = s.cluster_ip {
            let key = format!("{}/{}", s.namespace, s.name);
            if !taken.insert(ip) {
                warnings.push(format!(
                    "Service {key}: clusterIP {ip} is used by another service too"
                ));
            }
            out.insert(key, ip);
        }
    }
    let range = mesh.service_vips;
    let base = u32::from(range.network());
    // Usable host offsets: skip the network and broadcast addresses.
    let size = (1u64 << (32 - range.prefix_len())).saturating_sub(2).max(1) as u32;
    for s in services {
        if s.cluster_ip != ClusterIp::Unset {
            continue;
        }
        let key = format!("{}/{}", s.namespace, s.name);
        // A stable hash (not std's, whose algorithm may change).
        let digest = Sha256::digest(key.as_bytes());
        let hash = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
        let start = (hash % u64::from(size)) as u32;
        let found = (0..size)
            .map(|i| IpAddr::V4(Ipv4Addr::from(base + 1 + (start + i) % size)))
            .find(|ip| !taken.contains(ip));
        match found {
            Some(ip) => {
                taken.insert(ip);
                out.insert(key, ip);
            }
            None => warnings.push(format!(
                "Service {key}: the VIP range {range} is exhausted; it gets no address"
            )),
        }
    }
    out
}
