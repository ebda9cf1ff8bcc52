//! What the status of the objects Weft acts on should say: waypoint
//! Gateways (`Accepted`, `Programmed`, addresses) and the Services bound to
//! a waypoint (Istio's `istio.io/WaypointBound`). Routes' parent statuses
//! come from [`super::routes`]. A source that can write status (the
//! Kubernetes one) writes these; the local source shows them in the CLI.

use std::{collections::BTreeMap, net::IpAddr};

use super::{
    services::Services,
    waypoints::{Binding, Waypoints},
};
/// A waypoint Gateway's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayStatus {
    /// Its Service's VIP: programmed once there is one.
    pub address: Option<IpAddr>,
    pub message: String,
}

/// `istio.io/WaypointBound` on a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointBound {
    pub bound: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Whether an AuthorizationPolicy is enforced as written: Istio's
/// `ZtunnelAccepted` (node proxies enforce it) or `WaypointAccepted` (it
/// targets waypoints or their Services).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyAccepted {
    pub kind: &'static str,
    pub accepted: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Statuses, by `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statuses {
    pub gateways: BTreeMap<String, GatewayStatus>,
    pub services: BTreeMap<String, WaypointBound>,
    pub policies: BTreeMap<String, PolicyAccepted>,
}

/// Each AuthorizationPolicy's acceptance, from what translation said about
/// it (`warnings` name it as `AuthorizationPolicy ns/name: …`) and whether
/// a waypoint took it (`l7_policies`, by `ns/name`).
pub fn policies<'a>(
    policies: impl Iterator<Item = &'a crate::objects::AuthorizationPolicy>,
    l7_policies: &BTreeMap<String, weft_proto::weft::l7::v1::Policy>,
    warnings: &[String],
) -> BTreeMap<String, PolicyAccepted> {
    let mut out = BTreeMap::new();
    for policy in policies {
        let key = format!("{}/{}", policy.namespace, policy.name);
        let prefix = format!("AuthorizationPolicy {key}: ");
        let said: Vec<&str> = warnings
            .iter()
            .filter_map(|w| w.strip_prefix(&prefix))
            .collect();
        let accepted = if policy.target_refs.is_empty() {
            match said.as_slice() {
                [] => PolicyAccepted {
                    kind: "ZtunnelAccepted",
                    accepted: true,
                    reason: "Accepted",
                    message: "attached to ztunnel".into(),
                },
                _ => PolicyAccepted {
                    kind: "ZtunnelAccepted",
                    accepted: false,
                    reason: "UnsupportedValue",
                    message: said.join("; "),
                },
            }
        } else {
            match (l7_policies.get(&key), said.as_slice()) {
                (Some(compiled), []) => PolicyAccepted {
                    kind: "WaypointAccepted",
                    accepted: true,
                    reason: "Accepted",
                    message: format!(
                        "bound to {}",
                        compiled
                            .waypoints
                            .iter()
                            .chain(&compiled.services)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                },
                (Some(_), said) => PolicyAccepted {
                    kind: "WaypointAccepted",
                    accepted: false,
                    reason: "UnsupportedValue",
                    message: said.join("; "),
                },
                (None, said) => PolicyAccepted {
                    kind: "WaypointAccepted",
                    accepted: false,
                    reason: "TargetNotFound",
                    message: if said.is_empty() {
                        format!("no waypoint enforces {}", policy.target_refs.join(", "))
                    } else {
                        said.join("; ")
                    },
                },
            }
        };
        out.insert(key, accepted);
    }
    out
}

pub fn translate(waypoints: &Waypoints<'_>, services: &Services) -> Statuses {
    let mut out = Statuses::default();
    for waypoint in waypoints.all() {
        let g = &waypoint.gateway;
        let hostname = format!("{}.{}.svc", g.name, g.namespace);
        let message = match waypoint.vip {
            Some(_) => format!("Resource programmed, assigned to service(s) {hostname}:15008"),
            None => format!("Service {hostname} has no address yet"),
        };
        out.gateways.insert(
            format!("{}/{}", g.namespace, g.name),
            GatewayStatus {
                address: waypoint.vip,
                message,
            },
        );
    }
    for s in &services.services {
        let service = &s.source;
        // A waypoint's own Service is never bound to a waypoint.
        if waypoints.get(&service.namespace, &service.name).is_some() {
            continue;
        }
        let Binding::To { namespace, name } =
            waypoints.binding(&service.namespace, &service.labels)
        else {
            continue;
        };
        let bound = match waypoints.get(&namespace, &name) {
            None => WaypointBound {
                bound: false,
                reason: "WaypointNotFound",
                message: format!("waypoint {namespace}/{name} does not exist"),
            },
            Some(w) if !w.gateway.waypoint_for().takes_services() => WaypointBound {
                bound: false,
                reason: "WaypointTakesNoServices",
                message: format!(
                    "waypoint {namespace}/{name} is for {} traffic, not service traffic",
                    w.gateway.waypoint_for().as_str()
                ),
            },
            Some(w) if w.vip.is_none() => WaypointBound {
                bound: false,
                reason: "WaypointNotReady",
                message: format!("waypoint {namespace}/{name} has no address yet"),
            },
            Some(_) => WaypointBound {
                bound: true,
                reason: "WaypointAccepted",
                message: format!("bound to {name}.{namespace}.svc"),
            },
        };
        out.services
            .insert(format!("{}/{}", service.namespace, service.name), bound);
    }
    out
}
