//! `weft waypoint` on a cluster: the same verbs and the same Gateway as on
//! the local mesh, written and read through the API server; the control
//! service (its leader) deploys the waypoint and reports its status.

use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::{self, ApiResource},
    Client,
};
use serde_json::Value;
use weft_control::objects::{USE_WAYPOINT_LABEL, WAYPOINT_CLASS, WAYPOINT_FOR_LABEL};

use crate::waypoint::{
    gateway_yaml, parse_timeout, print_list, print_status, Observed, WaypointCommand,
};

/// The field manager of what `weft waypoint` writes.
const FIELD_MANAGER: &str = "weft";

async fn gateways(client: &Client) -> anyhow::Result<ApiResource> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway");
    let (resource, _) = discovery::pinned_kind(client, &gvk).await.context(
        "the cluster has no Gateway API CRDs (gateway.networking.k8s.io/v1 Gateway); install \
         them first (see docs/install.md)",
    )?;
    Ok(resource)
}

fn condition<'a>(gateway: &'a DynamicObject, kind: &str) -> Option<&'a Value> {
    gateway.data["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// The waypoints of `namespace` (all namespaces: `None`), as their status
/// says.
pub(crate) async fn observe(
    client: &Client,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<Observed>> {
    let resource = gateways(client).await?;
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    let mut out = Vec::new();
    for gateway in api.list(&ListParams::default()).await? {
        if gateway.data["spec"]["gatewayClassName"] != WAYPOINT_CLASS {
            continue;
        }
        let programmed = condition(&gateway, "Programmed");
        let text = |key: &str| {
            programmed
                .and_then(|c| c[key].as_str())
                .unwrap_or_default()
                .to_owned()
        };
        out.push(Observed {
            namespace: gateway.metadata.namespace.clone().unwrap_or_default(),
            name: gateway.metadata.name.clone().unwrap_or_default(),
            traffic: gateway
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(WAYPOINT_FOR_LABEL))
                .cloned()
                .unwrap_or_else(|| "service".into()),
            programmed: programmed.is_some_and(|c| c["status"] == "True"),
            reason: match text("reason") {
                r if r.is_empty() => "Pending".into(),
                r => r,
            },
            message: match text("message") {
                m if m.is_empty() => "not yet seen by the control service".into(),
                m => m,
            },
        });
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(out)
}

/// Whether `namespace` must be labelled to use waypoint `name`; refuses
/// (before anything is written) a missing namespace, or one that uses
/// another waypoint unless `overwrite`.
async fn needs_label(
    client: &Client,
    namespace: &str,
    name: &str,
    overwrite: bool,
) -> anyhow::Result<bool> {
    let api: Api<Namespace> = Api::all(client.clone());
    let Some(current) = api.get_opt(namespace).await? else {
        bail!("namespace {namespace} does not exist");
    };
    let label = current
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(USE_WAYPOINT_LABEL))
        .cloned();
    match label {
        Some(current) if current == name => Ok(false),
        Some(current) if !overwrite => bail!(
            "namespace {namespace} already uses waypoint {current}; add --overwrite to point it \
             at {name}"
        ),
        _ => Ok(true),
    }
}

/// Points `namespace` at waypoint `name` (`istio.io/use-waypoint`).
async fn label_namespace(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"labels": {USE_WAYPOINT_LABEL: name}}});
    api.patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

pub async fn run(
    cluster: &super::ClusterArgs,
    local_dir: &std::path::Path,
    command: WaypointCommand,
) -> anyhow::Result<()> {
    if let WaypointCommand::Generate {
        namespace,
        name,
        traffic_type,
    } = &command
    {
        print!("{}", gateway_yaml(namespace, name, *traffic_type));
        return Ok(());
    }
    let client = cluster.client().await.with_context(|| {
        format!(
            "no local mesh runs at {} (weft local up), so this acts on a cluster",
            local_dir.display()
        )
    })?;
    match command {
        WaypointCommand::Generate { .. } => unreachable!("printed above"),
        WaypointCommand::Apply {
            namespace,
            name,
            traffic_type,
            enroll_namespace: enroll,
            overwrite,
            wait,
            timeout,
        } => {
            let timeout = parse_timeout(&timeout)?;
            let resource = gateways(&client).await?;
            let label = if enroll {
                needs_label(&client, &namespace, &name, overwrite).await?
            } else {
                false
            };
            let gateway: Value =
                serde_yaml::from_str(&gateway_yaml(&namespace, &name, traffic_type))?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &namespace, &resource);
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&gateway),
            )
            .await
            .with_context(|| format!("writing Gateway {namespace}/{name}"))?;
            println!("waypoint {namespace}/{name} applied");
            if enroll {
                if label {
                    label_namespace(&client, &namespace, &name).await?;
                }
                println!("namespace {namespace} labelled with \"{USE_WAYPOINT_LABEL}: {name}\"");
            }
            if wait {
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    let observed = observe(&client, Some(&namespace)).await?;
                    let this = observed.iter().find(|o| o.name == name);
                    match this {
                        Some(o) if o.programmed => {
                            println!("waypoint {namespace}/{name} programmed");
                            break;
                        }
                        other if tokio::time::Instant::now() >= deadline => {
                            bail!(
                            "waypoint {namespace}/{name} was not programmed within {timeout:?}: {}",
                            other.map(|o| o.message.as_str()).unwrap_or("no such waypoint")
                        )
                        }
                        _ => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            }
            Ok(())
        }
        WaypointCommand::List {
            namespace,
            all_namespaces,
        } => {
            let observed =
                observe(&client, (!all_namespaces).then_some(namespace.as_str())).await?;
            print_list(observed, all_namespaces);
            Ok(())
        }
        WaypointCommand::Status { namespace, name } => {
            let observed = observe(&client, Some(&namespace)).await?;
            print_status(observed, &namespace, name.as_deref())
        }
        WaypointCommand::Config { .. } => bail!(
            "`weft waypoint config` reads the local mesh's waypoints only for now; on a \
             cluster, read a waypoint's /config_dump on port 15000 through kubectl port-forward"
        ),
        WaypointCommand::Delete {
            names,
            namespace,
            all,
        } => {
            let existing: Vec<String> = observe(&client, Some(&namespace))
                .await?
                .into_iter()
                .map(|o| o.name)
                .collect();
            let resource = gateways(&client).await?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &namespace, &resource);
            let doomed: Vec<&String> = existing
                .iter()
                .filter(|n| all || names.contains(n))
                .collect();
            for name in &doomed {
                api.delete(name, &DeleteParams::background()).await?;
                println!("waypoint {namespace}/{name} deleted");
            }
            if let Some(missing) = names.iter().find(|n| !existing.contains(n)) {
                bail!("no waypoint {namespace}/{missing}");
            }
            Ok(())
        }
    }
}
