//! `weft waypoint config routes|policies|backends`: what one waypoint
//! holds, read from its `/config_dump` (as `weft ztunnel-config` reads a
//! ztunnel's).

use std::net::SocketAddr;

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde_json::Value;
use weft_tests::processes::http_get;

use crate::{
    inspect::{table, Output},
    local::{self, Paths},
};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ConfigKind {
    /// Routes of the services behind the waypoint, in match order.
    Routes,
    /// L7 authorization policies it enforces.
    Policies,
    /// The services it forwards to: policy and endpoints' health.
    Backends,
}

/// The `/config_dump` of waypoint `namespace/name` in the local mesh.
async fn config_dump(paths: &Paths, namespace: &str, name: &str) -> anyhow::Result<Value> {
    let mesh = local::LocalMesh::open(paths)?;
    let pod = local::waypoints::pod_name(namespace, name);
    let netns = mesh.pod_netns(&pod)?;
    let (status, body) = http_get(
        Some(&netns),
        SocketAddr::from(([127, 0, 0, 1], 15000)),
        "/config_dump",
    )
    .await
    .with_context(|| {
        format!("reaching waypoint {namespace}/{name} (is it deployed? weft waypoint list -n {namespace})")
    })?;
    if status != 200 {
        bail!("waypoint {namespace}/{name} answered {status}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(items) if items.is_empty() => "-".into(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// `{"Prefix": "/api"}` → `Prefix /api`.
fn tagged(v: &Value) -> String {
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(tag, value)| format!("{tag} {}", text(value)))
            .collect::<Vec<_>>()
            .join(" "),
        other => text(other),
    }
}

fn route_match(m: &Value) -> String {
    // A prefix is kept without its trailing `/`: `/` itself is empty.
    let path = match m["path"].get("Prefix").and_then(Value::as_str) {
        Some("") => "Prefix /".to_owned(),
        _ => tagged(&m["path"]),
    };
    let mut parts = vec![path];
    if let Some(method) = m["method"].as_str() {
        parts.push(format!("method={method}"));
    }
    for (key, prefix) in [("headers", "header"), ("query", "query")] {
        for pair in m[key].as_array().into_iter().flatten() {
            parts.push(format!("{prefix}:{}={}", text(&pair[0]), tagged(&pair[1])));
        }
    }
    parts.join(" ")
}

fn millis(ms: &Value) -> String {
    match ms.as_u64() {
        Some(0) | None => "-".into(),
        Some(ms) => format!("{}s", ms as f64 / 1000.0),
    }
}

fn rows(kind: ConfigKind, dump: &Value) -> (Vec<&'static str>, Vec<Vec<String>>, Value) {
    match kind {
        ConfigKind::Routes => {
            let mut rows = Vec::new();
            let mut items = Vec::new();
            for (service, routes) in dump["routes"].as_object().into_iter().flatten() {
                for route in routes["routes"].as_array().into_iter().flatten() {
                    let backends = route["backends"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|b| match b["error"].as_str() {
                            Some(_) => format!("invalid({})", text(&b["weight"])),
                            None => format!(
                                "{}:{}({})",
                                text(&b["service"]),
                                text(&b["port"]),
                                text(&b["weight"])
                            ),
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                    rows.push(vec![
                        service.clone(),
                        text(&route["name"]),
                        match route["ports"].as_array() {
                            Some(ports) if !ports.is_empty() => text(&route["ports"]),
                            _ => "*".into(),
                        },
                        route_match(&route["matcher"]),
                        if backends.is_empty() {
                            "-".into()
                        } else {
                            backends
                        },
                        millis(&route["request_timeout_ms"]),
                        route["retry"]["attempts"]
                            .as_u64()
                            .map(|n| n.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]);
                    items.push(route.clone());
                }
            }
            (
                vec![
                    "SERVICE", "ROUTE", "PORTS", "MATCH", "BACKENDS", "TIMEOUT", "RETRIES",
                ],
                rows,
                Value::Array(items),
            )
        }
        ConfigKind::Policies => {
            let items = dump["policies"].as_array().cloned().unwrap_or_default();
            let rows = items
                .iter()
                .map(|p| {
                    let (namespace, name) = p["key"]
                        .as_str()
                        .and_then(|k| k.split_once('/'))
                        .unwrap_or(("-", "-"));
                    let mut targets: Vec<String> = Vec::new();
                    for w in p["waypoints"].as_array().into_iter().flatten() {
                        targets.push(format!("Gateway/{}", text(w)));
                    }
                    for s in p["services"].as_array().into_iter().flatten() {
                        targets.push(format!("Service/{}", text(s)));
                    }
                    vec![
                        namespace.to_owned(),
                        name.to_owned(),
                        if p["dry_run"] == true {
                            "Audit".into()
                        } else {
                            text(&p["action"])
                        },
                        targets.join(","),
                        p["rules"].as_array().map(Vec::len).unwrap_or(0).to_string(),
                    ]
                })
                .collect();
            (
                vec!["NAMESPACE", "POLICY NAME", "ACTION", "TARGETS", "RULES"],
                rows,
                Value::Array(items),
            )
        }
        ConfigKind::Backends => {
            let items = dump["backends"].as_array().cloned().unwrap_or_default();
            let mut rows = Vec::new();
            for b in &items {
                let policy = &b["policy"];
                let lb = policy["algorithm"].as_str().unwrap_or("RoundRobin");
                let limit = match policy["max_requests"].as_u64() {
                    Some(0) | None => "-".into(),
                    Some(n) => n.to_string(),
                };
                let endpoints = b["endpoints"].as_array().cloned().unwrap_or_default();
                if endpoints.is_empty() {
                    rows.push(vec![
                        text(&b["service"]),
                        "-".into(),
                        "-".into(),
                        "NO ENDPOINTS".into(),
                        lb.into(),
                        limit.clone(),
                        text(&b["in_flight"]),
                    ]);
                }
                for e in endpoints {
                    let status = match (e["healthy"] == true, e["ejected_for_ms"].as_u64()) {
                        (_, Some(ms)) => format!("EJECTED ({:.1}s)", ms as f64 / 1000.0),
                        (true, None) => "HEALTHY".into(),
                        (false, None) => "UNHEALTHY".into(),
                    };
                    rows.push(vec![
                        text(&b["service"]),
                        text(&e["address"]),
                        text(&e["workload"]),
                        status,
                        lb.into(),
                        limit.clone(),
                        text(&b["in_flight"]),
                    ]);
                }
            }
            (
                vec![
                    "SERVICE",
                    "ENDPOINT",
                    "WORKLOAD",
                    "STATUS",
                    "LB",
                    "MAX REQUESTS",
                    "IN FLIGHT",
                ],
                rows,
                Value::Array(items),
            )
        }
    }
}

/// `weft waypoint config KIND -n NS [--name NAME] [-o FORMAT]`.
pub async fn run(
    paths: &Paths,
    kind: ConfigKind,
    namespace: &str,
    name: &str,
    output: Output,
) -> anyhow::Result<()> {
    let dump = config_dump(paths, namespace, name).await?;
    let (headers, rows, items) = rows(kind, &dump);
    match output {
        Output::Table => print!("{}", table(&headers, rows)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&items)?),
        Output::Yaml => print!("{}", serde_yaml::to_string(&items)?),
    }
    Ok(())
}
