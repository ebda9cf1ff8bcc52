//! `weft enroll NS…` / `weft unenroll NS…`: the namespace label
//! `istio.io/dataplane-mode=ambient`, as a user would set it with kubectl.

use anyhow::bail;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use weft_control::objects::{DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL};

use super::ClusterArgs;

pub async fn set(cluster: &ClusterArgs, namespaces: &[String], enroll: bool) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(cluster.client().await?);
    let mut missing = Vec::new();
    for name in namespaces {
        let value = if enroll {
            serde_json::Value::from(DATAPLANE_MODE_AMBIENT)
        } else {
            serde_json::Value::Null
        };
        let patch = serde_json::json!({"metadata": {"labels": {DATAPLANE_MODE_LABEL: value}}});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) if enroll => println!(
                "namespace {name} enrolled ({DATAPLANE_MODE_LABEL}={DATAPLANE_MODE_AMBIENT})"
            ),
            Ok(_) => println!("namespace {name} unenrolled"),
            Err(kube::Error::Api(status)) if status.code == 404 => {
                eprintln!("namespace {name} does not exist");
                missing.push(name.clone());
            }
            Err(err) => return Err(err.into()),
        }
    }
    if !missing.is_empty() {
        bail!("no such namespace: {}", missing.join(", "));
    }
    Ok(())
}
