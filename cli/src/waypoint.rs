//! `weft waypoint`: deploy, list, inspect and remove waypoints, with
//! istioctl's verbs and columns. A waypoint is a Gateway of class
//! `istio-waypoint` with one HBONE listener on 15008; the mesh runs a
//! waypoint pod and Service for it and reports whether it is programmed.
//! This module is the local mesh's side and what both sides share; on a
//! cluster (`crate::cluster::waypoints`) the same verbs write and read the
//! same Gateway through the API server.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Subcommand, ValueEnum};
use serde_yaml::Value;
use weft_control::objects::{Kind, Object, USE_WAYPOINT_LABEL, WAYPOINT_FOR_LABEL};

use crate::{
    inspect::table,
    local::{self, Paths},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TrafficType {
    Service,
    Workload,
    All,
    None,
}

impl TrafficType {
    fn label(self) -> &'static str {
        match self {
            TrafficType::Service => "service",
            TrafficType::Workload => "workload",
            TrafficType::All => "all",
            TrafficType::None => "none",
        }
    }
}

#[derive(Subcommand)]
pub enum WaypointCommand {
    /// Deploy a waypoint in a namespace (writes its Gateway).
    Apply {
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long, default_value = "waypoint")]
        name: String,
        /// Which traffic it takes (the `istio.io/waypoint-for` label).
        #[arg(long = "for", value_enum)]
        traffic_type: Option<TrafficType>,
        /// Label the namespace `istio.io/use-waypoint=<name>`.
        #[arg(long)]
        enroll_namespace: bool,
        /// With --enroll-namespace: replace another waypoint's label.
        #[arg(long)]
        overwrite: bool,
        /// Wait until the waypoint is programmed.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits (e.g. 90s, 2m).
        #[arg(long, default_value = "90s")]
        timeout: String,
    },
    /// Print the Gateway `apply` would write.
    Generate {
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long, default_value = "waypoint")]
        name: String,
        #[arg(long = "for", value_enum)]
        traffic_type: Option<TrafficType>,
    },
    /// The waypoints of a namespace (or all, with -A).
    List {
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Each waypoint's conditions.
    Status {
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// What a waypoint holds: its routes, policies or backends.
    Config {
        #[arg(value_enum)]
        kind: crate::waypoint_config::ConfigKind,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long, default_value = "waypoint")]
        name: String,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: crate::inspect::Output,
    },
    /// Remove waypoints (their Gateways; their pods and Services follow).
    Delete {
        /// The waypoints to delete (or --all).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        names: Vec<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        all: bool,
    },
}

pub(crate) fn gateway_yaml(namespace: &str, name: &str, traffic: Option<TrafficType>) -> String {
    let labels = match traffic {
        Some(t) => format!("\n  labels:\n    {WAYPOINT_FOR_LABEL}: {}", t.label()),
        None => String::new(),
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {namespace}{labels}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
"
    )
}

/// What the mesh says about one waypoint.
pub(crate) struct Observed {
    pub namespace: String,
    pub name: String,
    pub traffic: String,
    pub programmed: bool,
    pub reason: String,
    pub message: String,
}

pub(crate) async fn observe(
    paths: &Paths,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<Observed>> {
    let (snapshot, resources) = local::served(paths)?;
    let mesh = local::LocalMesh::open(paths)?;
    let mut out = Vec::new();
    for gateway in local::waypoints::gateways(&snapshot).into_values() {
        if namespace.is_some_and(|ns| ns != gateway.namespace) {
            continue;
        }
        let hostname = format!("{}.{}.svc.cluster.local", gateway.name, gateway.namespace);
        let has_vip = resources.addresses.values().any(|a| {
            matches!(&a.r#type, Some(weft_proto::istio::workload::address::Type::Service(s))
                if s.hostname == hostname && !s.addresses.is_empty())
        });
        let pod = local::waypoints::pod_name(&gateway.namespace, &gateway.name);
        let ready = mesh.pod_ready(&pod, 15021).await;
        let (programmed, reason, message) = match (has_vip, ready) {
            (true, Ok(())) => (
                true,
                "Programmed",
                format!("Resource programmed, assigned to service(s) {hostname}:15008"),
            ),
            (false, _) => (
                false,
                "NoResources",
                format!("Service {hostname} has no address yet"),
            ),
            (true, Err(why)) => (
                false,
                "Pending",
                format!("waypoint pod {pod} is not ready: {why}"),
            ),
        };
        out.push(Observed {
            traffic: gateway.waypoint_for().as_str().to_owned(),
            namespace: gateway.namespace.clone(),
            name: gateway.name.clone(),
            programmed,
            reason: reason.into(),
            message,
        });
    }
    Ok(out)
}

pub(crate) fn parse_timeout(text: &str) -> anyhow::Result<Duration> {
    weft_control::source::yaml::parse_duration_ms(text)
        .map(Duration::from_millis)
        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))
}

/// Sets `istio.io/use-waypoint` on namespace `namespace` in the served
/// config; `false` when no Namespace object exists there.
fn label_namespace(
    paths: &Paths,
    namespace: &str,
    name: &str,
    overwrite: bool,
) -> anyhow::Result<bool> {
    let mut refusal = None;
    let changed = local::edit_served(paths, |doc, changed| {
        let (kind, _, doc_name) = local::identify(doc);
        if kind != "Namespace" || doc_name != namespace {
            return true;
        }
        let labels = doc
            .get_mut("metadata")
            .and_then(|m| m.as_mapping_mut())
            .map(|m| {
                m.entry("labels".into())
                    .or_insert_with(|| Value::Mapping(Default::default()))
            })
            .and_then(|l| l.as_mapping_mut());
        let Some(labels) = labels else {
            return true;
        };
        match labels.get(USE_WAYPOINT_LABEL).and_then(Value::as_str) {
            Some(current) if current == name => {}
            Some(current) if !overwrite => {
                refusal = Some(format!(
                    "namespace {namespace} already uses waypoint {current}; add --overwrite to \
                     point it at {name}"
                ));
            }
            _ => {
                labels.insert(USE_WAYPOINT_LABEL.into(), name.into());
                *changed = true;
            }
        }
        true
    })?;
    if let Some(refusal) = refusal {
        bail!(refusal);
    }
    let (snapshot, _) = local::served(paths)?;
    let exists = snapshot
        .of_kind(Kind::Namespace)
        .any(|o| matches!(o, Object::Namespace(n) if n.name == namespace));
    Ok(changed > 0 || exists)
}

pub async fn run(paths: &Paths, command: WaypointCommand) -> anyhow::Result<()> {
    match command {
        WaypointCommand::Generate {
            namespace,
            name,
            traffic_type,
        } => {
            print!("{}", gateway_yaml(&namespace, &name, traffic_type));
            Ok(())
        }
        WaypointCommand::Apply {
            namespace,
            name,
            traffic_type,
            enroll_namespace,
            overwrite,
            wait,
            timeout,
        } => {
            let timeout = parse_timeout(&timeout)?;
            let lock = local::Lock::take(paths)?;
            let mut yaml = gateway_yaml(&namespace, &name, traffic_type);
            if enroll_namespace && !label_namespace(paths, &namespace, &name, overwrite)? {
                // No Namespace object yet: the waypoint's file declares it.
                yaml.push_str(&format!(
                    "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  \
                     labels:\n    istio.io/dataplane-mode: ambient\n    {USE_WAYPOINT_LABEL}: {name}\n"
                ));
            }
            let file = local::from_text(&format!("waypoint-{namespace}.{name}.yaml"), &yaml);
            local::apply_files(paths, &[file]).await?;
            drop(lock);
            println!("waypoint {namespace}/{name} applied");
            if enroll_namespace {
                println!("namespace {namespace} labelled with \"{USE_WAYPOINT_LABEL}: {name}\"");
            }
            if wait {
                let deadline = tokio::time::Instant::now() + timeout;
                loop {
                    let observed = observe(paths, Some(&namespace)).await?;
                    let this = observed.iter().find(|o| o.name == name);
                    match this {
                        Some(o) if o.programmed => {
                            println!("waypoint {namespace}/{name} programmed");
                            break;
                        }
                        other if tokio::time::Instant::now() >= deadline => bail!(
                            "waypoint {namespace}/{name} was not programmed within {:?}: {}",
                            timeout,
                            other
                                .map(|o| o.message.as_str())
                                .unwrap_or("no such waypoint")
                        ),
                        _ => tokio::time::sleep(Duration::from_millis(250)).await,
                    }
                }
            }
            Ok(())
        }
        WaypointCommand::List {
            namespace,
            all_namespaces,
        } => {
            let observed = observe(paths, (!all_namespaces).then_some(namespace.as_str())).await?;
            print_list(observed, all_namespaces);
            Ok(())
        }
        WaypointCommand::Config {
            kind,
            namespace,
            name,
            output,
        } => crate::waypoint_config::run(paths, kind, &namespace, &name, output).await,
        WaypointCommand::Status { namespace, name } => {
            let observed = observe(paths, Some(&namespace)).await?;
            print_status(observed, &namespace, name.as_deref())
        }
        WaypointCommand::Delete {
            names,
            namespace,
            all,
        } => {
            let lock = local::Lock::take(paths)?;
            let mut deleted = Vec::new();
            local::edit_served(paths, |doc, _| {
                let (kind, ns, name) = local::identify(doc);
                let is_waypoint = kind == "Gateway"
                    && doc
                        .get("spec")
                        .and_then(|s| s.get("gatewayClassName"))
                        .and_then(Value::as_str)
                        == Some("istio-waypoint");
                let doomed = is_waypoint && ns == namespace && (all || names.contains(&name));
                if doomed {
                    deleted.push(name);
                }
                !doomed
            })?;
            if let Some(missing) = names.iter().find(|n| !deleted.contains(n)) {
                bail!("no waypoint {namespace}/{missing}");
            }
            local::resync(paths)
                .await
                .context("removing the waypoints' pods")?;
            drop(lock);
            for name in deleted {
                println!("waypoint {namespace}/{name} deleted");
            }
            Ok(())
        }
    }
}

/// `list`'s table (istioctl's columns).
pub(crate) fn print_list(observed: Vec<Observed>, all_namespaces: bool) {
    if observed.is_empty() {
        println!("No waypoints found.");
        return;
    }
    let mut headers = vec!["NAME", "REVISION", "TRAFFIC TYPE", "PROGRAMMED"];
    if all_namespaces {
        headers.insert(0, "NAMESPACE");
    }
    let rows = observed
        .into_iter()
        .map(|o| {
            let mut row = vec![
                o.name,
                "default".into(),
                o.traffic,
                if o.programmed { "True" } else { "False" }.into(),
            ];
            if all_namespaces {
                row.insert(0, o.namespace);
            }
            row
        })
        .collect();
    print!("{}", table(&headers, rows));
}

/// `status`'s table.
pub(crate) fn print_status(
    observed: Vec<Observed>,
    namespace: &str,
    name: Option<&str>,
) -> anyhow::Result<()> {
    let observed: Vec<Observed> = observed
        .into_iter()
        .filter(|o| name.as_ref().is_none_or(|n| *n == o.name))
        .collect();
    if observed.is_empty() {
        bail!(
            "no waypoint in namespace {namespace}{}",
            name.map(|n| format!(" named {n}")).unwrap_or_default()
        );
    }
    let rows = observed
        .into_iter()
        .map(|o| {
            vec![
                o.name,
                if o.programmed { "True" } else { "False" }.into(),
                "Programmed".into(),
                o.reason,
                o.message,
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["NAME", "STATUS", "TYPE", "REASON", "MESSAGE"], rows)
    );
    Ok(())
}

/// `weft waypoint-proxy …`: the waypoint itself, built into this binary so
/// one binary is all a local mesh needs.
pub fn proxy_main(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    ::waypoint::app::main_from(std::iter::once(std::ffi::OsString::from("waypoint")).chain(args))
}
