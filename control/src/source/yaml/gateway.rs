//! Gateway API kinds (`gateway.networking.k8s.io`) → [`crate::objects`].

use serde::Deserialize;

use super::from_spec;
use crate::objects::{Gateway, Labels, Listener, WaypointFor, WAYPOINT_FOR_LABEL};

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GatewaySpecYaml {
    #[serde(default)]
    gateway_class_name: String,
    #[serde(default)]
    listeners: Vec<ListenerYaml>,
    /// Accepted and ignored: a waypoint's address is its Service's.
    #[serde(default)]
    addresses: Vec<serde_yaml::Value>,
    /// Accepted and ignored (Istio's deployment customisation).
    #[serde(default)]
    infrastructure: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListenerYaml {
    name: String,
    port: u16,
    protocol: String,
}

pub(super) fn gateway(
    namespace: String,
    name: String,
    labels: Labels,
    spec: serde_yaml::Value,
) -> Result<Gateway, String> {
    let spec: GatewaySpecYaml = from_spec(spec, "spec")?;
    if spec.gateway_class_name.is_empty() {
        return Err("spec.gatewayClassName is required (istio-waypoint for a waypoint)".into());
    }
    if let Some(value) = labels.get(WAYPOINT_FOR_LABEL) {
        WaypointFor::parse(value).map_err(|e| format!("metadata.labels: {e}"))?;
    }
    let _ = (spec.addresses, spec.infrastructure);
    Ok(Gateway {
        namespace,
        name,
        labels,
        class: spec.gateway_class_name,
        listeners: spec
            .listeners
            .into_iter()
            .map(|l| Listener {
                name: l.name,
                port: l.port,
                protocol: l.protocol,
            })
            .collect(),
    })
}
