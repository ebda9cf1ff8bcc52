//! Status written back, by server-side apply on the status subresource
//! (field manager `weft-control-status`), by the leader only: waypoint Gateways
//! (`Accepted`, `Programmed`, the Service's address), HTTPRoute and
//! GRPCRoute parent statuses, `istio.io/WaypointBound` on Services, and
//! AuthorizationPolicies' `ZtunnelAccepted` / `WaypointAccepted`.
//! Each object is written when what it should say changes (and once more
//! whenever this replica becomes the leader); a failed write is retried
//! ([`super::reconcile`]).

use std::{collections::BTreeMap, sync::Arc};

use kube::{
    api::{Api, DynamicObject, Patch, PatchParams},
    discovery::ApiResource,
    Client,
};
use serde_json::{json, Value};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    objects::{Kind, ParentRef},
    source::kubernetes::{find_resource, GATEWAY_API},
    translate::{routes::Condition, Resources},
    xds::XdsSnapshot,
};

/// The field manager of the objects the control service writes
/// (waypoints' objects, the CA Secret).
pub const FIELD_MANAGER: &str = "weft-control";
/// The field manager of status writes. Not [`FIELD_MANAGER`]: an apply
/// through `/status` sets what its manager owns to what it sends, and
/// metadata is writable there, so under one manager a status write would
/// take away the labels and owner references that manager applied to the
/// object (a waypoint's Service, no longer owned by its Gateway, would
/// outlive it).
pub const STATUS_FIELD_MANAGER: &str = "weft-control-status";
/// The controller named in route parent statuses: the one of the
/// `istio-waypoint` GatewayClass, so status reads as it does with Istio.
pub const CONTROLLER_NAME: &str = "istio.io/gateway-controller";

/// An object whose status is written.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Target {
    kind: Kind,
    namespace: String,
    name: String,
}

/// Starts the writer: it acts while `leader` says so.
pub fn start(
    client: Client,
    leader: watch::Receiver<bool>,
    store: watch::Receiver<Arc<XdsSnapshot>>,
) -> JoinHandle<()> {
    tokio::spawn(super::reconcile::while_leading(
        leader,
        store,
        "cannot write status",
        |snapshot: &Arc<XdsSnapshot>| desired(&snapshot.resources),
        Writer {
            client,
            resources: BTreeMap::new(),
        },
        |writer, target, status| Box::pin(write(writer, target, status)),
    ))
}

/// The client, and the status kinds' resources as discovery found them.
struct Writer {
    client: Client,
    resources: BTreeMap<Kind, ApiResource>,
}

async fn write(writer: &mut Writer, target: &Target, status: &Value) -> Result<(), kube::Error> {
    let Writer { client, resources } = writer;
    let resource = match resources.get(&target.kind) {
        Some(resource) => resource.clone(),
        None => {
            let group = match target.kind {
                Kind::Service => "",
                Kind::AuthorizationPolicy => "security.istio.io",
                _ => GATEWAY_API,
            };
            let Some(resource) = find_resource(client, group, target.kind).await? else {
                tracing::debug!(kind = %target.kind, "not served; its status is not written");
                return Ok(());
            };
            resources.insert(target.kind, resource.clone());
            resource
        }
    };
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &target.namespace, &resource);
    let mut status = status.clone();
    stamp(&mut status, &now());
    // An apply creates what does not exist, even through /status (a bare
    // object no one would own): write only to the object that is there, the
    // version read being the apply's precondition. A deleted object then
    // answers 404 (a Service, 422: a bare one fails validation), never a
    // creation; a 409 from a newer version is retried on that version.
    for _ in 0..3 {
        let Some(live) = api.get_opt(&target.name).await? else {
            return Ok(());
        };
        let body = json!({
            "apiVersion": resource.api_version,
            "kind": resource.kind,
            "metadata": {
                "name": target.name,
                "namespace": target.namespace,
                "resourceVersion": live.metadata.resource_version,
            },
            "status": status,
        });
        let params = PatchParams::apply(STATUS_FIELD_MANAGER).force();
        match api
            .patch_status(&target.name, &params, &Patch::Apply(&body))
            .await
        {
            Ok(_) => return Ok(()),
            // Deleted since: nothing to say about it.
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(err) => return Err(err),
        }
    }
    Err(kube::Error::Api(Box::new(
        kube::core::Status::failure(
            "the object kept changing while its status was written",
            "Conflict",
        )
        .with_code(409),
    )))
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Sets `lastTransitionTime` on every condition (kept out of the compared
/// status so that time alone is never a change).
fn stamp(value: &mut Value, time: &str) {
    match value {
        Value::Object(map) => {
            if map.contains_key("type") && map.contains_key("reason") {
                map.insert("lastTransitionTime".into(), time.into());
            }
            map.values_mut().for_each(|v| stamp(v, time));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| stamp(v, time)),
        _ => {}
    }
}

fn condition(kind: &str, status: bool, reason: &str, message: &str) -> Value {
    json!({
        "type": kind,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
    })
}

fn route_condition(c: &Condition) -> Value {
    condition(c.kind, c.status, c.reason, &c.message)
}

fn parent_ref(parent: &ParentRef) -> Value {
    let (group, kind, namespace, name, port, section) = match parent {
        ParentRef::Service {
            namespace,
            name,
            port,
            section,
        } => ("", "Service", namespace, name, port, section),
        ParentRef::Gateway {
            namespace,
            name,
            port,
            section,
        } => (GATEWAY_API, "Gateway", namespace, name, port, section),
    };
    let mut out = json!({"group": group, "kind": kind, "namespace": namespace, "name": name});
    if let Some(port) = port {
        out["port"] = json!(port);
    }
    if let Some(section) = section {
        out["sectionName"] = json!(section);
    }
    out
}

/// Every status to write, without timestamps.
fn desired(resources: &Resources) -> BTreeMap<Target, Value> {
    let mut out = BTreeMap::new();
    let split = |key: &str| {
        key.split_once('/')
            .map(|(ns, name)| (ns.to_owned(), name.to_owned()))
    };
    for (key, gateway) in &resources.statuses.gateways {
        let Some((namespace, name)) = split(key) else {
            continue;
        };
        let programmed = gateway.address.is_some();
        let mut status = json!({
            "conditions": [
                condition("Accepted", true, "Accepted", "Resource accepted"),
                condition(
                    "Programmed",
                    programmed,
                    if programmed { "Programmed" } else { "NoResources" },
                    &gateway.message,
                ),
            ],
        });
        if let Some(address) = gateway.address {
            status["addresses"] = json!([{"type": "IPAddress", "value": address.to_string()}]);
        }
        out.insert(
            Target {
                kind: Kind::Gateway,
                namespace,
                name,
            },
            status,
        );
    }
    for (key, parents) in &resources.route_status {
        let (kind, key) = match key.strip_prefix("GRPCRoute/") {
            Some(rest) => (Kind::GrpcRoute, rest),
            None => (Kind::HttpRoute, key.as_str()),
        };
        let Some((namespace, name)) = split(key) else {
            continue;
        };
        let parents: Vec<Value> = parents
            .iter()
            .map(|p| {
                json!({
                    "parentRef": parent_ref(&p.parent_ref),
                    "controllerName": CONTROLLER_NAME,
                    "conditions": p.conditions.iter().map(route_condition).collect::<Vec<_>>(),
                })
            })
            .collect();
        out.insert(
            Target {
                kind,
                namespace,
                name,
            },
            json!({"parents": parents}),
        );
    }
    for (key, bound) in &resources.statuses.services {
        let Some((namespace, name)) = split(key) else {
            continue;
        };
        out.insert(
            Target {
                kind: Kind::Service,
                namespace,
                name,
            },
            json!({"conditions": [condition(
                "istio.io/WaypointBound",
                bound.bound,
                bound.reason,
                &bound.message,
            )]}),
        );
    }
    for (key, policy) in &resources.statuses.policies {
        let Some((namespace, name)) = split(key) else {
            continue;
        };
        out.insert(
            Target {
                kind: Kind::AuthorizationPolicy,
                namespace,
                name,
            },
            json!({"conditions": [condition(
                policy.kind,
                policy.accepted,
                policy.reason,
                &policy.message,
            )]}),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_go_on_conditions_only() {
        let mut status = json!({
            "addresses": [{"type": "IPAddress", "value": "198.19.0.20"}],
            "parents": [{"parentRef": {"kind": "Service"}, "conditions": [
                {"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""}
            ]}],
        });
        stamp(&mut status, "2026-12-01T00:00:00Z");
        assert!(status["addresses"][0].get("lastTransitionTime").is_none());
        assert!(status["parents"][0]["parentRef"]
            .get("lastTransitionTime")
            .is_none());
        assert_eq!(
            status["parents"][0]["conditions"][0]["lastTransitionTime"],
            "2026-12-01T00:00:00Z"
        );
    }

    #[test]
    fn parent_refs_are_written_as_the_route_wrote_them() {
        let cases = [
            (
                ParentRef::Service {
                    namespace: "shop".into(),
                    name: "web".into(),
                    port: Some(80),
                    section: None,
                },
                json!({"group": "", "kind": "Service", "namespace": "shop", "name": "web", "port": 80}),
            ),
            (
                ParentRef::Gateway {
                    namespace: "shop".into(),
                    name: "waypoint".into(),
                    port: None,
                    section: Some("mesh".into()),
                },
                json!({"group": GATEWAY_API, "kind": "Gateway", "namespace": "shop", "name": "waypoint", "sectionName": "mesh"}),
            ),
        ];
        for (parent, expected) in cases {
            assert_eq!(parent_ref(&parent), expected);
        }
    }
}
