//! The waypoint controller: for every Gateway of class `istio-waypoint`,
//! the leader applies (server-side, field manager `weft-control`) a
//! ServiceAccount, a Deployment and a Service of the Gateway's name, owned
//! by the Gateway — so deleting the Gateway lets Kubernetes' garbage
//! collector remove them — and the mesh root certificate as the ConfigMap
//! `istio-ca-root-cert` in the Gateway's namespace, where the waypoint pod
//! mounts it (Istio's name, so Istio-style workloads find it too).
//!
//! The waypoint pod is configured like ztunnel: the control service's
//! address, the root certificate, and a projected service-account token
//! (audience `istio-ca`) that it presents for its own identity.

use std::sync::Arc;

use kube::{
    api::{Api, DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::ApiResource,
    Client,
};
use serde_json::{json, Value};
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    objects::{Gateway, Kind, Object, GATEWAY_NAME_LABEL, WAYPOINT_FOR_LABEL},
    source::{
        kubernetes::{find_resource, GATEWAY_API},
        ConfigSnapshot,
    },
};

use super::status::FIELD_MANAGER;

/// The label Istio puts on what its controller manages for a waypoint.
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
pub const MANAGED_VALUE: &str = "istio.io-mesh-controller";
/// The ConfigMap holding the mesh root certificate, in each namespace with
/// a waypoint.
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";

/// What every waypoint Deployment gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointTemplate {
    /// The waypoint image.
    pub image: String,
    /// The control service as pods reach it (`host:port`).
    pub control_address: String,
    pub trust_domain: String,
    /// The audience of the token the waypoint presents.
    pub audience: String,
}

impl Default for WaypointTemplate {
    fn default() -> Self {
        Self {
            image: format!("weft/waypoint:{}", env!("CARGO_PKG_VERSION")),
            control_address: "weft-control.weft-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
            audience: "istio-ca".into(),
        }
    }
}

/// Starts the controller: it acts while `leader` says so.
pub fn start(
    client: Client,
    template: WaypointTemplate,
    root_pem: String,
    leader: watch::Receiver<bool>,
    snapshots: watch::Receiver<Arc<ConfigSnapshot>>,
) -> JoinHandle<()> {
    tokio::spawn(super::reconcile::while_leading(
        leader,
        snapshots,
        "cannot deploy the waypoint",
        |snapshot: &Arc<ConfigSnapshot>| {
            snapshot
                .of_kind(Kind::Gateway)
                .filter_map(|o| match o {
                    Object::Gateway(g) if g.is_waypoint() => {
                        Some(((g.namespace.clone(), g.name.clone()), g.clone()))
                    }
                    _ => None,
                })
                .collect()
        },
        Deployer {
            client,
            template,
            root_pem,
            gateway_resource: None,
        },
        |deployer, _, gateway| Box::pin(apply(deployer, gateway)),
    ))
}

/// What deploying a waypoint needs, and the Gateway kind's resource once
/// discovery found it.
struct Deployer {
    client: Client,
    template: WaypointTemplate,
    root_pem: String,
    gateway_resource: Option<ApiResource>,
}

async fn apply(deployer: &mut Deployer, gateway: &Gateway) -> Result<(), kube::Error> {
    let Deployer {
        client,
        template,
        root_pem,
        gateway_resource,
    } = deployer;
    let resource = match gateway_resource {
        Some(resource) => resource.clone(),
        None => {
            let Some(found) = find_resource(client, GATEWAY_API, Kind::Gateway).await? else {
                return Ok(());
            };
            *gateway_resource = Some(found.clone());
            found
        }
    };
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &gateway.namespace, &resource);
    let Some(live) = gateways.get_opt(&gateway.name).await? else {
        return Ok(()); // deleted meanwhile
    };
    let uid = live.metadata.uid.unwrap_or_default();
    let owner = json!({
        "apiVersion": resource.api_version,
        "kind": "Gateway",
        "name": gateway.name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for (gvk, plural, body) in objects(template, root_pem, gateway, &owner) {
        let api_resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &gateway.namespace, &api_resource);
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        api.patch(&name, &params, &Patch::Apply(&body)).await?;
    }
    tracing::info!(namespace = %gateway.namespace, name = %gateway.name, "waypoint deployed");
    Ok(())
}

/// The objects of one waypoint, in the order they are applied.
fn objects(
    template: &WaypointTemplate,
    root_pem: &str,
    gateway: &Gateway,
    owner: &Value,
) -> Vec<(GroupVersionKind, &'static str, Value)> {
    let (ns, name) = (&gateway.namespace, &gateway.name);
    let mut labels = json!({
        GATEWAY_NAME_LABEL: name,
        MANAGED_LABEL: MANAGED_VALUE,
    });
    if let Some(traffic) = gateway.labels.get(WAYPOINT_FOR_LABEL) {
        labels[WAYPOINT_FOR_LABEL] = json!(traffic);
    }
    let meta = |name: &str| json!({"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner]});
    let selector = json!({ GATEWAY_NAME_LABEL: name });
    let field = |path: &str| json!({"valueFrom": {"fieldRef": {"fieldPath": path}}});
    let env = json!([
        {"name": "POD_NAME", "valueFrom": field("metadata.name")["valueFrom"]},
        {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")["valueFrom"]},
        {"name": "NODE_NAME", "valueFrom": field("spec.nodeName")["valueFrom"]},
        {"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")["valueFrom"]},
        {"name": "WEFT_WAYPOINT_NAME", "value": name},
        {"name": "WEFT_CONTROL_ADDRESS", "value": template.control_address},
        {"name": "WEFT_TRUST_DOMAIN", "value": template.trust_domain},
        {"name": "WEFT_ROOT_CERT", "value": "/var/run/secrets/istio/root-cert.pem"},
        {"name": "WEFT_TOKEN_FILE", "value": "/var/run/secrets/tokens/istio-token"},
    ]);
    let core = |kind: &str| GroupVersionKind::gvk("", "v1", kind);
    vec![
        (
            core("ConfigMap"),
            "configmaps",
            // Shared by the namespace's waypoints: owned by none of them.
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": ROOT_CERT_CONFIGMAP, "namespace": ns},
                "data": {"root-cert.pem": root_pem},
            }),
        ),
        (
            core("ServiceAccount"),
            "serviceaccounts",
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name)}),
        ),
        (
            GroupVersionKind::gvk("apps", "v1", "Deployment"),
            "deployments",
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": meta(name),
                "spec": {
                    "replicas": 1,
                    "selector": {"matchLabels": selector},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "serviceAccountName": name,
                            "automountServiceAccountToken": false,
                            "terminationGracePeriodSeconds": 2,
                            "containers": [{
                                "name": "waypoint",
                                "image": template.image,
                                "env": env,
                                "ports": [
                                    {"name": "hbone", "containerPort": 15008, "protocol": "TCP"},
                                    {"name": "metrics", "containerPort": 15020, "protocol": "TCP"},
                                    {"name": "status", "containerPort": 15021, "protocol": "TCP"},
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/healthz/ready", "port": 15021},
                                    "periodSeconds": 2,
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": false,
                                    "readOnlyRootFilesystem": true,
                                    "runAsNonRoot": true,
                                    "runAsUser": 1337,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [
                                    {"name": "istio-token", "mountPath": "/var/run/secrets/tokens", "readOnly": true},
                                    {"name": "root-cert", "mountPath": "/var/run/secrets/istio", "readOnly": true},
                                ],
                            }],
                            "volumes": [
                                {"name": "istio-token", "projected": {"sources": [{
                                    "serviceAccountToken": {
                                        "audience": template.audience,
                                        "expirationSeconds": 43200,
                                        "path": "istio-token",
                                    },
                                }]}},
                                {"name": "root-cert", "configMap": {"name": ROOT_CERT_CONFIGMAP}},
                            ],
                        },
                    },
                },
            }),
        ),
        (
            core("Service"),
            "services",
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": meta(name),
                "spec": {
                    "type": "ClusterIP",
                    "selector": selector,
                    "ports": [
                        {"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP", "appProtocol": "all"},
                    ],
                },
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::Labels;

    #[test]
    fn a_waypoint_is_a_service_account_a_deployment_and_a_service_owned_by_its_gateway() {
        let mut labels = Labels::new();
        labels.insert(WAYPOINT_FOR_LABEL.into(), "all".into());
        let gateway = Gateway {
            namespace: "shop".into(),
            name: "waypoint".into(),
            labels,
            class: "istio-waypoint".into(),
            listeners: Vec::new(),
        };
        let owner = json!({"kind": "Gateway", "name": "waypoint", "uid": "u1"});
        let objects = objects(&WaypointTemplate::default(), "PEM", &gateway, &owner);
        let kinds: Vec<&str> = objects
            .iter()
            .map(|(gvk, _, _)| gvk.kind.as_str())
            .collect();
        assert_eq!(
            kinds,
            ["ConfigMap", "ServiceAccount", "Deployment", "Service"]
        );
        for (gvk, _, body) in &objects[1..] {
            assert_eq!(
                body["metadata"]["ownerReferences"][0], owner,
                "{}",
                gvk.kind
            );
            assert_eq!(body["metadata"]["labels"][GATEWAY_NAME_LABEL], "waypoint");
            assert_eq!(body["metadata"]["labels"][WAYPOINT_FOR_LABEL], "all");
        }
        assert!(objects[0].2["metadata"].get("ownerReferences").is_none());
        let pod = &objects[2].2["spec"]["template"]["spec"];
        assert_eq!(pod["serviceAccountName"], "waypoint");
        assert_eq!(
            pod["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "istio-ca"
        );
        assert_eq!(objects[3].2["spec"]["ports"][0]["port"], 15008);
    }
}
