//! `weft ztunnel-config` and `weft status`: what the ztunnels and the
//! control service hold, read from their admin endpoints: those of the
//! `weft local` mesh when one runs (`WEFT_LOCAL_DIR`), else a cluster's,
//! through port-forwards.

use std::{collections::BTreeSet, net::SocketAddr};

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde_json::Value;
use weft_tests::processes::http_get;

use crate::{
    cluster::{ztunnels::ClusterZtunnels, ClusterArgs},
    local::{LocalMesh, Paths},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Kind {
    Workloads,
    Services,
    Policies,
    Certificates,
    Connections,
}

#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
    Yaml,
}

/// The ztunnels to inspect.
pub enum Ztunnels {
    Local(LocalMesh),
    Cluster(ClusterZtunnels),
}

impl Ztunnels {
    /// The local mesh's when one runs, else the cluster's.
    pub async fn open(paths: &Paths, cluster: &ClusterArgs) -> anyhow::Result<Self> {
        if paths.state().exists() {
            return Ok(Self::Local(LocalMesh::open(paths)?));
        }
        let client = cluster.client().await?;
        Ok(Self::Cluster(ClusterZtunnels::find(&client).await?))
    }

    fn nodes(&self) -> Vec<String> {
        match self {
            Self::Local(mesh) => mesh.nodes(),
            Self::Cluster(cluster) => cluster.nodes(),
        }
    }

    /// `/config_dump` of `node`'s ztunnel.
    async fn config_dump(&self, node: &str) -> anyhow::Result<Value> {
        let mesh = match self {
            Self::Local(mesh) => mesh,
            Self::Cluster(cluster) => return cluster.config_dump(node).await,
        };
        let netns = mesh.node_netns(node)?;
        let (status, body) = http_get(
            Some(&netns),
            SocketAddr::from(([127, 0, 0, 1], 15000)),
            "/config_dump",
        )
        .await
        .with_context(|| format!("reaching ztunnel on {node}"))?;
        if status != 200 {
            bail!("ztunnel on {node} answered {status}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row));
    }
    out.push('\n');
    out
}

fn unix_time(v: &Value) -> String {
    v.get("secs_since_epoch")
        .and_then(Value::as_i64)
        .and_then(time_text)
        .unwrap_or_else(|| "-".into())
}

fn time_text(secs: i64) -> Option<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(secs).ok()?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    ))
}

/// The rows of one kind, from one node's dump.
fn rows(kind: Kind, node: &str, dump: &Value) -> (Vec<&'static str>, Vec<Vec<String>>, Value) {
    let list = |key: &str| dump[key].as_array().cloned().unwrap_or_default();
    match kind {
        Kind::Workloads => {
            let items = list("workloads");
            let rows = items
                .iter()
                .map(|w| {
                    vec![
                        text(&w["namespace"]),
                        text(&w["name"]),
                        text(&w["ips"]),
                        text(&w["node"]),
                        w["waypoint"]
                            .as_object()
                            .map(|_| "waypoint")
                            .unwrap_or("None")
                            .into(),
                        text(&w["protocol"]).to_uppercase(),
                    ]
                })
                .collect();
            (
                vec![
                    "NAMESPACE",
                    "POD NAME",
                    "ADDRESS",
                    "NODE",
                    "WAYPOINT",
                    "PROTOCOL",
                ],
                rows,
                Value::Array(items),
            )
        }
        Kind::Services => {
            let items = list("services");
            let endpoints = |key: String| {
                list("workloads")
                    .iter()
                    .filter(|w| w["services"].get(&key).is_some())
                    .count()
            };
            let rows = items
                .iter()
                .map(|s| {
                    let key = format!("{}/{}", text(&s["namespace"]), text(&s["hostname"]));
                    vec![
                        text(&s["namespace"]),
                        text(&s["name"]),
                        text(&s["vips"]),
                        s["waypoint"]
                            .as_object()
                            .map(|_| "waypoint")
                            .unwrap_or("None")
                            .into(),
                        endpoints(key).to_string(),
                    ]
                })
                .collect();
            (
                vec![
                    "NAMESPACE",
                    "SERVICE NAME",
                    "SERVICE VIP",
                    "WAYPOINT",
                    "ENDPOINTS",
                ],
                rows,
                Value::Array(items),
            )
        }
        Kind::Policies => {
            let items = list("policies");
            let rows = items
                .iter()
                .map(|p| {
                    let action = if p["dry_run"] == true {
                        "Audit".to_owned()
                    } else {
                        text(&p["action"])
                    };
                    vec![
                        text(&p["namespace"]),
                        text(&p["name"]),
                        action,
                        text(&p["scope"]),
                    ]
                })
                .collect();
            (
                vec!["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"],
                rows,
                Value::Array(items),
            )
        }
        Kind::Certificates => {
            let items = list("certificates");
            let rows = items
                .iter()
                .map(|c| {
                    let status = if c["serial"].is_string() {
                        "Available"
                    } else {
                        "Pending"
                    };
                    vec![
                        text(&c["identity"]),
                        "Leaf".into(),
                        status.into(),
                        text(&c["serial"]),
                        unix_time(&c["not_after"]),
                        unix_time(&c["not_before"]),
                    ]
                })
                .collect();
            (
                vec![
                    "CERTIFICATE NAME",
                    "TYPE",
                    "STATUS",
                    "SERIAL NUMBER",
                    "NOT AFTER",
                    "NOT BEFORE",
                ],
                rows,
                Value::Array(items),
            )
        }
        Kind::Connections => {
            let items = list("connections");
            let rows = items
                .iter()
                .map(|c| {
                    vec![
                        node.to_owned(),
                        text(&c["direction"]),
                        text(&c["src"]),
                        text(&c["dst"]),
                        text(&c["src_identity"]),
                        text(&c["bytes_request"]),
                        text(&c["bytes_response"]),
                    ]
                })
                .collect();
            (
                vec![
                    "NODE",
                    "DIRECTION",
                    "SOURCE",
                    "DESTINATION",
                    "SOURCE IDENTITY",
                    "BYTES IN",
                    "BYTES OUT",
                ],
                rows,
                Value::Array(items),
            )
        }
    }
}

/// `weft ztunnel-config KIND [--node N] [-o FORMAT]`.
pub async fn ztunnel_config(
    ztunnels: &Ztunnels,
    kind: Kind,
    node: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    let nodes: Vec<String> = match node {
        Some(n) => vec![n.to_owned()],
        // Workloads, services and policies are the same on every node;
        // certificates and connections are each node's own.
        None if matches!(kind, Kind::Certificates | Kind::Connections) => ztunnels.nodes(),
        None => ztunnels.nodes().into_iter().take(1).collect(),
    };
    let mut headers = Vec::new();
    let mut all_rows = Vec::new();
    let mut all_items = Vec::new();
    let mut seen = BTreeSet::new();
    for n in &nodes {
        let dump = ztunnels.config_dump(n).await?;
        let (h, rows, items) = rows(kind, n, &dump);
        headers = h;
        for (row, item) in rows
            .into_iter()
            .zip(items.as_array().cloned().unwrap_or_default())
        {
            if seen.insert(item.to_string()) {
                all_rows.push(row);
                all_items.push(item);
            }
        }
    }
    match output {
        Output::Table => print!("{}", table(&headers, all_rows)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(all_items))?
        ),
        Output::Yaml => print!("{}", serde_yaml::to_string(&Value::Array(all_items))?),
    }
    Ok(())
}

/// `weft status` of the local mesh: the control service, each ztunnel,
/// the enrolled namespaces and the waypoints.
pub async fn status(paths: &Paths) -> anyhow::Result<()> {
    let mesh = LocalMesh::open(paths)?;
    let control = if mesh.control_reachable() {
        "reachable"
    } else {
        "UNREACHABLE"
    };
    println!(
        "control service  {}  {control}",
        crate::local::CONTROL_ADDRESS
    );
    let enrolled = mesh.enrolled_namespaces()?;
    print_ztunnels(&Ztunnels::Local(mesh)).await;
    print_enrolled(&enrolled);
    let waypoints = crate::waypoint::observe(paths, None).await?;
    print_waypoints(&waypoints);
    // Each service behind a waypoint, and whether that waypoint is there
    // to take its traffic (Istio's istio.io/WaypointBound condition).
    let (_, resources) = crate::local::served(paths)?;
    let mut rows = Vec::new();
    for address in resources.addresses.values() {
        let Some(weft_proto::istio::workload::address::Type::Service(s)) = &address.r#type else {
            continue;
        };
        let Some(gateway) = &s.waypoint else { continue };
        use weft_proto::istio::workload::gateway_address::Destination;
        let bound = match &gateway.destination {
            Some(Destination::Address(a)) => waypoints.iter().find(|w| {
                resources.addresses.values().any(|other| {
                    matches!(&other.r#type, Some(weft_proto::istio::workload::address::Type::Service(ws))
                        if ws.name == w.name && ws.namespace == w.namespace
                            && ws.addresses.iter().any(|wa| wa.address == a.address))
                })
            }),
            Some(Destination::Hostname(h)) => waypoints.iter().find(|w| {
                h.hostname == format!("{}.{}.svc.cluster.local", w.name, w.namespace)
            }),
            None => None,
        };
        let (status, reason) = match bound {
            Some(w) if w.programmed => (
                "True",
                format!("bound to waypoint {}/{}", w.namespace, w.name),
            ),
            Some(w) => (
                "False",
                format!(
                    "waypoint {}/{} is not programmed: {}",
                    w.namespace, w.name, w.message
                ),
            ),
            None => (
                "False",
                "its waypoint does not exist; its traffic is refused".into(),
            ),
        };
        rows.push(vec![
            format!("{}/{}", s.namespace, s.name),
            status.into(),
            reason,
        ]);
    }
    print_bound_services(rows);
    Ok(())
}

/// One row per ztunnel (an unreachable one says why), then a warning for
/// each that fell back to iptables capture.
async fn print_ztunnels(ztunnels: &Ztunnels) {
    let mut rows = Vec::new();
    let mut fallbacks = Vec::new();
    for node in ztunnels.nodes() {
        let dump = match ztunnels.config_dump(&node).await {
            Ok(dump) => dump,
            Err(err) => {
                let mut row = vec![node.clone(), format!("unreachable: {err:#}")];
                row.extend(std::iter::repeat_n("-".to_owned(), 4));
                rows.push(row);
                continue;
            }
        };
        let fallback = dump["capture"]["fallback_reason"].as_str();
        if let Some(reason) = fallback {
            fallbacks.push(format!(
                "ztunnel {node} captures with iptables because eBPF capture is unavailable: {reason}"
            ));
        }
        let count = |key: &str| dump[key].as_array().map_or(0, Vec::len).to_string();
        rows.push(vec![
            node.clone(),
            if dump["xds"]["connected"] == true {
                "connected"
            } else {
                "disconnected"
            }
            .into(),
            match fallback {
                Some(_) => format!("{} (fallback)", text(&dump["capture"]["mode"])),
                None => text(&dump["capture"]["mode"]),
            },
            count("pods"),
            count("connections"),
            count("certificates"),
        ]);
    }
    print!(
        "\n{}",
        table(
            &[
                "ZTUNNEL",
                "XDS",
                "CAPTURE",
                "PODS",
                "CONNECTIONS",
                "CERTIFICATES"
            ],
            rows
        )
    );
    for fallback in &fallbacks {
        println!("warning: {fallback}");
    }
}

fn print_waypoints(waypoints: &[crate::waypoint::Observed]) {
    if waypoints.is_empty() {
        println!("waypoints: none");
        return;
    }
    let rows: Vec<Vec<String>> = waypoints
        .iter()
        .map(|w| {
            vec![
                format!("{}/{}", w.namespace, w.name),
                w.traffic.clone(),
                if w.programmed { "True" } else { "False" }.into(),
                w.message.clone(),
            ]
        })
        .collect();
    print!(
        "\n{}",
        table(&["WAYPOINT", "TRAFFIC TYPE", "PROGRAMMED", "MESSAGE"], rows)
    );
}

/// Rows of (service, WaypointBound status, reason).
fn print_bound_services(rows: Vec<Vec<String>>) {
    if !rows.is_empty() {
        print!("\n{}", table(&["SERVICE", "WAYPOINTBOUND", "REASON"], rows));
    }
}

fn print_enrolled(enrolled: &[String]) {
    println!(
        "\nnamespaces in the mesh: {}",
        if enrolled.is_empty() {
            "none".into()
        } else {
            enrolled.join(", ")
        }
    );
}

/// `weft status` of a cluster: the control service's replicas and leader,
/// each ztunnel (through port-forwards), the enrolled namespaces, the
/// waypoints and the services bound to them, as the cluster records them.
pub async fn cluster_status(cluster: &ClusterArgs) -> anyhow::Result<()> {
    use k8s_openapi::api::{
        apps::v1::Deployment,
        coordination::v1::Lease,
        core::v1::{Namespace, Service},
    };
    use kube::api::{Api, ListParams};
    use weft_control::objects::DATAPLANE_MODE_LABEL;

    let client = cluster.client().await?;
    let namespace = crate::cluster::ztunnels::NAMESPACE;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let control = match deployments.get_opt("weft-control").await? {
        None => "no Deployment (weft install makes one)".to_owned(),
        Some(d) => {
            let status = d.status.unwrap_or_default();
            let wanted = d.spec.and_then(|s| s.replicas).unwrap_or(1);
            format!("{}/{wanted} ready", status.ready_replicas.unwrap_or(0))
        }
    };
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let leader = leases
        .get_opt("weft-control")
        .await?
        .and_then(|l| l.spec?.holder_identity)
        .unwrap_or_else(|| "none".into());
    println!("control service  {namespace}/weft-control  {control}  leader: {leader}");
    match ClusterZtunnels::find(&client).await {
        Ok(ztunnels) => print_ztunnels(&Ztunnels::Cluster(ztunnels)).await,
        Err(err) => println!("\nztunnels: {err:#}"),
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let enrolled: Vec<String> = namespaces
        .list(&ListParams::default().labels(&format!("{DATAPLANE_MODE_LABEL}=ambient")))
        .await?
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    print_enrolled(&enrolled);
    match crate::cluster::waypoints::observe(&client, None).await {
        Ok(waypoints) => print_waypoints(&waypoints),
        Err(err) => println!("waypoints: {err:#}"),
    }
    let services: Api<Service> = Api::all(client);
    let mut rows = Vec::new();
    for service in services.list(&ListParams::default()).await? {
        let conditions = service
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        let Some(bound) = conditions
            .iter()
            .find(|c| c.type_ == "istio.io/WaypointBound")
        else {
            continue;
        };
        rows.push(vec![
            format!(
                "{}/{}",
                service.metadata.namespace.unwrap_or_default(),
                service.metadata.name.unwrap_or_default()
            ),
            bound.status.clone(),
            bound.message.clone(),
        ]);
    }
    print_bound_services(rows);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_times_are_rfc3339_utc() {
        for (secs, expected) in [
            (0, "1970-01-01T00:00:00Z"),
            (951_868_799, "2000-02-29T23:59:59Z"),
            (1_796_319_901, "2026-12-03T17:45:01Z"),
        ] {
            let v = serde_json::json!({ "secs_since_epoch": secs });
            assert_eq!(unix_time(&v), expected);
        }
        assert_eq!(unix_time(&serde_json::json!({})), "-");
    }
}
