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

/// Statuses, by `namespace/name`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statuses {
    pub gateways: BTreeMap<String, GatewayStatus>,
    pub services: BTreeMap<String, WaypointBound>,
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
