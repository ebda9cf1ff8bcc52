//! Waypoints: which Gateways are waypoints, where each one is reached, and
//! which services and workloads send their traffic through one.
//!
//! As in Istio: a Gateway of class `istio-waypoint` is a waypoint, reached
//! through the Service of the same name in its namespace (its pods carry
//! `gateway.networking.k8s.io/gateway-name`). A Service, Pod or Namespace
//! labelled `istio.io/use-waypoint: <name>` (the object's own label wins
//! over its namespace's, `none` opts out, `istio.io/use-waypoint-namespace`
//! names another namespace) uses that waypoint for the traffic the
//! waypoint's `istio.io/waypoint-for` takes: service-addressed (`service`,
//! the default), pod-addressed (`workload`) or both (`all`).
//!
//! A waypoint that is named but missing, or whose Service has no address
//! yet, is still published, by hostname: proxies cannot resolve it and
//! refuse the traffic, which is never silently sent around the waypoint.

use std::{collections::BTreeMap, net::IpAddr};

use weft_proto::istio::workload;

use super::{ip_bytes, service_hostname, services::Services, MeshConfig};
use crate::{
    objects::{
        Gateway, Kind, Labels, Namespace, Object, WaypointFor, GATEWAY_NAME_LABEL,
        USE_WAYPOINT_LABEL, USE_WAYPOINT_NAMESPACE_LABEL,
    },
    source::ConfigSnapshot,
};

/// The HBONE port of a waypoint.
pub const WAYPOINT_HBONE_PORT: u32 = 15008;

/// One waypoint, as translation needs it.
#[derive(Clone, Debug)]
pub struct Waypoint {
    pub gateway: Gateway,
    /// Its Service's VIP, once the Service exists with one.
    pub vip: Option<IpAddr>,
}

/// Every waypoint of the snapshot, and the namespaces (for their labels).
pub struct Waypoints<'a> {
    by_name: BTreeMap<(String, String), Waypoint>,
    namespaces: BTreeMap<&'a str, &'a Namespace>,
    mesh: &'a MeshConfig,
}

/// What an object's labels (or its namespace's) ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// No waypoint asked for, or `none`.
    Unbound,
    /// `namespace/name` of the waypoint asked for.
    To { namespace: String, name: String },
}

/// The binding an object with `labels` in `namespace` asks for.
fn binding(labels: &Labels, namespace: &str, ns: Option<&Namespace>) -> Binding {
    let from = |labels: &Labels| {
        labels.get(USE_WAYPOINT_LABEL).map(|name| {
            if name == "none" {
                Binding::Unbound
            } else {
                Binding::To {
                    namespace: labels
                        .get(USE_WAYPOINT_NAMESPACE_LABEL)
                        .cloned()
                        .unwrap_or_else(|| namespace.to_owned()),
                    name: name.clone(),
                }
            }
        })
    };
    from(labels)
        .or_else(|| ns.and_then(|ns| from(&ns.labels)))
        .unwrap_or(Binding::Unbound)
}

impl<'a> Waypoints<'a> {
    pub fn translate(
        snapshot: &'a ConfigSnapshot,
        mesh: &'a MeshConfig,
        services: &Services,
    ) -> Self {
        let namespaces = snapshot
            .of_kind(Kind::Namespace)
            .filter_map(|o| match o {
                Object::Namespace(n) => Some((n.name.as_str(), n)),
                _ => None,
            })
            .collect();
        let by_name = snapshot
            .of_kind(Kind::Gateway)
            .filter_map(|o| match o {
                Object::Gateway(g) if g.is_waypoint() => Some(g),
                _ => None,
            })
            .map(|g| {
                let vip = services
                    .services
                    .iter()
                    .find(|s| s.source.namespace == g.namespace && s.source.name == g.name)
                    .and_then(|s| s.service.addresses.first())
                    .and_then(|a| super::ip_from_bytes(&a.address));
                (
                    (g.namespace.clone(), g.name.clone()),
                    Waypoint {
                        gateway: g.clone(),
                        vip,
                    },
                )
            })
            .collect();
        Self {
            by_name,
            namespaces,
            mesh,
        }
    }

    /// The waypoint named `namespace/name`, if it exists.
    pub fn get(&self, namespace: &str, name: &str) -> Option<&Waypoint> {
        self.by_name.get(&(namespace.to_owned(), name.to_owned()))
    }

    pub fn all(&self) -> impl Iterator<Item = &Waypoint> {
        self.by_name.values()
    }

    /// Whether a pod with `labels` in `namespace` is one of a waypoint's
    /// own: it speaks HBONE itself and never goes through a waypoint.
    pub fn is_waypoint_pod(&self, namespace: &str, labels: &Labels) -> bool {
        labels
            .get(GATEWAY_NAME_LABEL)
            .is_some_and(|name| self.get(namespace, name).is_some())
    }

    /// What an object with `labels` in `namespace` is bound to.
    pub fn binding(&self, namespace: &str, labels: &Labels) -> Binding {
        binding(labels, namespace, self.namespaces.get(namespace).copied())
    }

    /// The address to publish for a binding, when the bound waypoint takes
    /// traffic of that kind (`takes`).
    fn address(
        &self,
        bound: &Binding,
        takes: fn(WaypointFor) -> bool,
    ) -> Option<workload::GatewayAddress> {
        let Binding::To { namespace, name } = bound else {
            return None;
        };
        let waypoint = self.get(namespace, name);
        // A waypoint that does not exist (yet) takes what it was asked for:
        // the traffic is refused until it does, not sent around it.
        if waypoint.is_some_and(|w| !takes(w.gateway.waypoint_for())) {
            return None;
        }
        let destination = match waypoint.and_then(|w| w.vip) {
            Some(vip) => {
                workload::gateway_address::Destination::Address(workload::NetworkAddress {
                    network: String::new(),
                    address: ip_bytes(vip),
                })
            }
            None => {
                workload::gateway_address::Destination::Hostname(workload::NamespacedHostname {
                    namespace: namespace.clone(),
                    hostname: service_hostname(self.mesh, namespace, name),
                })
            }
        };
        Some(workload::GatewayAddress {
            destination: Some(destination),
            hbone_mtls_port: WAYPOINT_HBONE_PORT,
        })
    }

    /// The waypoint of a Service (service-addressed traffic), unless the
    /// Service is a waypoint's own.
    pub fn for_service(
        &self,
        service: &crate::objects::Service,
    ) -> Option<workload::GatewayAddress> {
        if self.get(&service.namespace, &service.name).is_some() {
            return None;
        }
        self.address(
            &self.binding(&service.namespace, &service.labels),
            WaypointFor::takes_services,
        )
    }

    /// The waypoint of a pod (pod-addressed traffic), unless it is a
    /// waypoint's own pod.
    pub fn for_pod(&self, pod: &crate::objects::Pod) -> Option<workload::GatewayAddress> {
        if self.is_waypoint_pod(&pod.namespace, &pod.labels) {
            return None;
        }
        self.address(
            &self.binding(&pod.namespace, &pod.labels),
            WaypointFor::takes_workloads,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_objects_own_label_wins_and_none_opts_out() {
        let ns = Namespace {
            name: "shop".into(),
            labels: labels(&[(USE_WAYPOINT_LABEL, "ns-waypoint")]),
        };
        let to = |namespace: &str, name: &str| Binding::To {
            namespace: namespace.into(),
            name: name.into(),
        };
        let cases = [
            (labels(&[]), Some(&ns), to("shop", "ns-waypoint")),
            (
                labels(&[(USE_WAYPOINT_LABEL, "own")]),
                Some(&ns),
                to("shop", "own"),
            ),
            (
                labels(&[(USE_WAYPOINT_LABEL, "none")]),
                Some(&ns),
                Binding::Unbound,
            ),
            (
                labels(&[
                    (USE_WAYPOINT_LABEL, "shared"),
                    (USE_WAYPOINT_NAMESPACE_LABEL, "infra"),
                ]),
                Some(&ns),
                to("infra", "shared"),
            ),
            (labels(&[]), None, Binding::Unbound),
        ];
        for (own, namespace, expected) in cases {
            assert_eq!(binding(&own, "shop", namespace), expected, "{own:?}");
        }
    }
}
