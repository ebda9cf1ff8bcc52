//! `weft ztunnel-config` and `weft status`: what the ztunnels and the
//! control service hold, read from their admin endpoints.
//!
//! Today they inspect the `weft local` mesh (`WEFT_LOCAL_DIR`); the same
//! views will read a Kubernetes cluster's ztunnels through port-forwards.

use std::{collections::BTreeSet, net::SocketAddr};

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde_json::Value;
use weft_tests::processes::http_get;

use crate::local::{LocalMesh, Paths};

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

/// `/config_dump` of `node`'s ztunnel.
async fn config_dump(mesh: &LocalMesh, node: &str) -> anyhow::Result<Value> {
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
    // UTC, RFC 3339, without pulling a date crate into the CLI.
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    Some(format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z"))
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
    paths: &Paths,
    kind: Kind,
    node: Option<&str>,
    output: Output,
) -> anyhow::Result<()> {
    let mesh = LocalMesh::open(paths)?;
    let nodes: Vec<String> = match node {
        Some(n) => vec![n.to_owned()],
        // Workloads, services and policies are the same on every node;
        // certificates and connections are each node's own.
        None if matches!(kind, Kind::Certificates | Kind::Connections) => mesh.nodes(),
        None => mesh.nodes().into_iter().take(1).collect(),
    };
    let mut headers = Vec::new();
    let mut all_rows = Vec::new();
    let mut all_items = Vec::new();
    let mut seen = BTreeSet::new();
    for n in &nodes {
        let dump = config_dump(&mesh, n).await?;
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

/// `weft status`: the control service, each ztunnel, the enrolled
/// namespaces and the waypoints.
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
    let mut rows = Vec::new();
    let mut fallbacks = Vec::new();
    for node in mesh.nodes() {
        match config_dump(&mesh, &node).await {
            Ok(dump) => {
                if let Some(reason) = dump["capture"]["fallback_reason"].as_str() {
                    fallbacks.push(format!(
                        "ztunnel {node} captures with iptables because eBPF capture is unavailable: {reason}"
                    ));
                }
                rows.push(vec![
                    node.clone(),
                    if dump["xds"]["connected"] == true {
                        "connected"
                    } else {
                        "disconnected"
                    }
                    .into(),
                    match dump["capture"]["fallback_reason"].as_str() {
                        Some(_) => format!("{} (fallback)", text(&dump["capture"]["mode"])),
                        None => text(&dump["capture"]["mode"]),
                    },
                    dump["pods"]
                        .as_array()
                        .map(Vec::len)
                        .unwrap_or(0)
                        .to_string(),
                    dump["connections"]
                        .as_array()
                        .map(Vec::len)
                        .unwrap_or(0)
                        .to_string(),
                    dump["certificates"]
                        .as_array()
                        .map(Vec::len)
                        .unwrap_or(0)
                        .to_string(),
                ])
            }
            Err(err) => rows.push(vec![
                node.clone(),
                format!("unreachable: {err}"),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
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
    let enrolled = mesh.enrolled_namespaces()?;
    println!(
        "\nnamespaces in the mesh: {}",
        if enrolled.is_empty() {
            "none".into()
        } else {
            enrolled.join(", ")
        }
    );
    let waypoints = crate::waypoint::observe(paths, None).await?;
    if waypoints.is_empty() {
        println!("waypoints: none");
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
    if !rows.is_empty() {
        print!(
            "\n{}",
            table(&["WAYPOINT", "TRAFFIC TYPE", "PROGRAMMED", "MESSAGE"], rows)
        );
    }
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
    if !rows.is_empty() {
        print!("\n{}", table(&["SERVICE", "WAYPOINTBOUND", "REASON"], rows));
    }
    Ok(())
}
