//! `weft install` and `weft uninstall`: the built-in base applied
//! server-side (field manager `weft-install`), then a wait for the control
//! service and every node's node agent and ztunnel to be ready.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kube::{
    api::{Api, DeleteParams, DynamicObject, Patch, PatchParams},
    core::GroupVersionKind,
    discovery::{self, ApiCapabilities, ApiResource, Scope},
    Client,
};
use serde_json::Value;

use super::{
    manifests::{render, to_yaml, Settings},
    ClusterArgs,
};

pub const FIELD_MANAGER: &str = "weft-install";

/// What an apply did to an object.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        })
    }
}

fn describe(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// The API for one object, found by discovery.
async fn api_for(client: &Client, object: &Value) -> anyhow::Result<(Api<DynamicObject>, String)> {
    let api_version = object["apiVersion"].as_str().context("no apiVersion")?;
    let kind = object["kind"].as_str().context("no kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (resource, caps): (ApiResource, ApiCapabilities) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the API server does not serve {api_version} {kind}"))?;
    let name = object["metadata"]["name"]
        .as_str()
        .context("no metadata.name")?
        .to_owned();
    let api = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(
            client.clone(),
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default"),
            &resource,
        ),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    Ok((api, name))
}

/// An object as far as an apply can change it: without its status (which
/// controllers keep writing, a rollout's meanwhile) and the bookkeeping
/// every write touches.
fn content(object: &DynamicObject) -> Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["managedFields", "resourceVersion", "generation"] {
            meta.remove(key);
        }
    }
    value
}

async fn apply_one(client: &Client, object: &Value) -> anyhow::Result<Outcome> {
    let (api, name) = api_for(client, object).await?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let Some(before) = api.get_opt(&name).await? else {
        api.patch(&name, &params, &Patch::Apply(object)).await?;
        return Ok(Outcome::Created);
    };
    // What the apply would make of it, without making it: others (the
    // token controller, say) may change the object meanwhile, so comparing
    // versions would not tell.
    let would = api
        .patch(&name, &params.clone().dry_run(), &Patch::Apply(object))
        .await?;
    if content(&would) == content(&before) {
        return Ok(Outcome::Unchanged);
    }
    api.patch(&name, &params, &Patch::Apply(object)).await?;
    Ok(Outcome::Configured)
}

pub async fn install(
    cluster: &ClusterArgs,
    set: &[String],
    dry_run: bool,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let objects = render(&Settings::parse(set)?)?;
    if dry_run {
        print!("{}", to_yaml(&objects)?);
        return Ok(());
    }
    let client = cluster.client().await?;
    let mut rejected = Vec::new();
    for object in &objects {
        match apply_one(&client, object).await {
            Ok(outcome) => println!("{} {outcome}", describe(object)),
            Err(err) => {
                eprintln!("{} rejected: {err:#}", describe(object));
                rejected.push(describe(object));
            }
        }
    }
    if !rejected.is_empty() {
        bail!(
            "{} of {} objects were rejected ({}); the others were applied",
            rejected.len(),
            objects.len(),
            rejected.join(", ")
        );
    }
    if wait {
        wait_ready(&client, timeout).await?;
    }
    Ok(())
}

/// Readiness of the control service and the ztunnels, in a line.
async fn readiness(client: &Client) -> anyhow::Result<(bool, String)> {
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "weft-system");
    let daemonsets: Api<k8s_openapi::api::apps::v1::DaemonSet> =
        Api::namespaced(client.clone(), "weft-system");
    let control = deployments.get("weft-control").await?;
    let wanted = control.spec.and_then(|s| s.replicas).unwrap_or(1);
    let status = control.status.unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    // (ready, desired) nodes of a DaemonSet, counting only updated pods.
    let nodes = |name: &'static str| {
        let daemonsets = daemonsets.clone();
        async move {
            let status = daemonsets.get(name).await?.status.unwrap_or_default();
            let desired = status.desired_number_scheduled;
            let updated = status.updated_number_scheduled.unwrap_or(0);
            anyhow::Ok((status.number_ready.min(updated), desired))
        }
    };
    let (ztunnels, nodes_wanted) = nodes("ztunnel").await?;
    let (agents, agents_wanted) = nodes("weft-node-agent").await?;
    let done =
        ready >= wanted && updated >= wanted && ztunnels >= nodes_wanted && agents >= agents_wanted;
    Ok((
        done,
        format!(
            "control service {ready}/{wanted} ready, node agent {agents}/{agents_wanted} and \
             ztunnel {ztunnels}/{nodes_wanted} nodes ready"
        ),
    ))
}

async fn wait_ready(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let (done, line) = readiness(client).await?;
        if line != last {
            println!("waiting: {line}");
            last = line;
        }
        if done {
            println!("Weft is ready ({:.0?})", start.elapsed());
            return Ok(());
        }
        if start.elapsed() > timeout {
            bail!(
                "not ready after {timeout:?}: {last}; see kubectl get pods -n weft-system and \
                 kubectl describe for what holds them"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub async fn uninstall(
    cluster: &ClusterArgs,
    purge: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let objects = render(&Settings::default())?;
    let client = cluster.client().await?;
    // The nodes first, while the namespace is there to run the cleanup in.
    super::node_cleanup::run(&client, timeout).await?;
    for object in objects.iter().rev() {
        if object["kind"] == "CustomResourceDefinition" && !purge {
            println!(
                "{} kept (--purge deletes it and every object of its kind)",
                describe(object)
            );
            continue;
        }
        let (api, name) = api_for(&client, object).await?;
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => println!("{} deleted", describe(object)),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                println!("{} not found", describe(object))
            }
            Err(err) => return Err(err).with_context(|| format!("deleting {}", describe(object))),
        }
    }
    Ok(())
}
