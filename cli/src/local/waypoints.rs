//! Waypoints in a local mesh. For every Gateway of class `istio-waypoint`
//! in the served config, the local runtime does what Weft's waypoint
//! controller and Kubernetes do on a cluster: it runs a waypoint pod in the
//! Gateway's namespace (its own network namespace, service account and
//! identity `spiffe://cluster.local/ns/NS/sa/NAME`, not enrolled: it speaks
//! HBONE itself) and serves a Service of the Gateway's name selecting it,
//! by writing both into the served config (`zz-waypoint-NS.NAME.yaml`).
//! A Gateway removed takes its pod and Service with it.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::Context;
use weft_control::{
    objects::{Gateway, Kind, Object, GATEWAY_NAME_LABEL},
    source::ConfigSnapshot,
};
use weft_tests::{
    processes::http_get,
    topology::{Pod, Topology},
};

use super::{
    paths::{Paths, CONTROL_ADDRESS},
    runtime,
};

const GENERATED_PREFIX: &str = "zz-waypoint-";

/// The waypoint Gateways of a snapshot, by `namespace/name`.
pub fn gateways(snapshot: &ConfigSnapshot) -> BTreeMap<String, Gateway> {
    snapshot
        .of_kind(Kind::Gateway)
        .filter_map(|o| match o {
            Object::Gateway(g) if g.is_waypoint() => {
                Some((format!("{}/{}", g.namespace, g.name), g.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The pod that runs waypoint `namespace/name`.
pub fn pod_name(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}-0")
}

fn generated_file(namespace: &str, name: &str) -> String {
    // Namespaces hold no dots, so the split is unambiguous.
    format!("{GENERATED_PREFIX}{namespace}.{name}.yaml")
}

fn generated_yaml(gateway: &Gateway, pod: &Pod) -> String {
    let (ns, name) = (&gateway.namespace, &gateway.name);
    format!(
        "# Made by weft local for waypoint {ns}/{name}; removed with it.
apiVersion: v1
kind: Pod
metadata:
  name: {name}-0
  namespace: {ns}
  labels: {{{GATEWAY_NAME_LABEL}: {name}, istio.io/dataplane-mode: none}}
spec: {{nodeName: {node}, serviceAccountName: {name}}}
status: {{podIP: {ip}, phase: Running}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
  labels: {{{GATEWAY_NAME_LABEL}: {name}}}
spec:
  selector: {{{GATEWAY_NAME_LABEL}: {name}}}
  ports: [{{name: mesh, port: 15008}}, {{name: status-port, port: 15021}}]
",
        node = pod.node(),
        ip = pod.ip()
    )
}

/// The waypoints whose generated objects exist now, by `namespace/name`.
fn generated(paths: &Paths) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(paths.config()) else {
        return Ok(out);
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file
            .strip_prefix(GENERATED_PREFIX)
            .and_then(|f| f.strip_suffix(".yaml"))
        else {
            continue;
        };
        if let Some((ns, name)) = rest.split_once('.') {
            out.insert(format!("{ns}/{name}"), file);
        }
    }
    Ok(out)
}

/// Makes the topology and the served config hold exactly the waypoints
/// `snapshot` asks for; returns the Gateways whose pods are new (to start).
pub fn reconcile(
    paths: &Paths,
    topology: &mut Topology,
    snapshot: &ConfigSnapshot,
) -> anyhow::Result<Vec<Gateway>> {
    let wanted = gateways(snapshot);
    let existing = generated(paths)?;
    for (key, file) in &existing {
        if wanted.contains_key(key) {
            continue;
        }
        let (ns, name) = key.split_once('/').expect("namespace/name");
        let pod = pod_name(ns, name);
        if topology.pods().iter().any(|p| p.qualified_name() == pod) {
            topology.remove_pod(&pod)?;
        }
        std::fs::remove_file(paths.config().join(file))?;
        println!("waypoint/{key} removed (pod {pod} and Service {key})");
    }
    let mut started = Vec::new();
    for (key, gateway) in wanted {
        if existing.contains_key(&key) {
            continue;
        }
        let pod = pod_name(&gateway.namespace, &gateway.name);
        if !topology.pods().iter().any(|p| p.qualified_name() == pod) {
            let node = topology
                .nodes()
                .first()
                .context("the local mesh has no node")?
                .name()
                .to_owned();
            topology.add_pod(&pod, &node)?;
        }
        let yaml = generated_yaml(&gateway, topology.pod(&pod));
        let target = paths
            .config()
            .join(generated_file(&gateway.namespace, &gateway.name));
        let tmp = target.with_extension("yaml.tmp");
        std::fs::write(&tmp, yaml)?;
        std::fs::rename(&tmp, &target)?;
        started.push(gateway);
    }
    Ok(started)
}

/// Starts the waypoint process of `gateway` in its pod.
pub fn start(paths: &Paths, topology: &Topology, gateway: &Gateway) -> anyhow::Result<()> {
    let pod = topology.pod(&pod_name(&gateway.namespace, &gateway.name));
    let binary = std::env::current_exe().context("locating the weft binary")?;
    let mut cmd = runtime::pod_command(paths, pod, &binary.to_string_lossy())?;
    cmd.arg("waypoint-proxy")
        .args(["--name", &gateway.name, "--namespace", &gateway.namespace])
        .args(["--pod-name", pod.name(), "--node-name", pod.node()])
        .args(["--control-address", CONTROL_ADDRESS])
        .arg("--root-cert")
        .arg(paths.root_cert())
        .arg("--token-file")
        .arg(paths.node_tokens().join(format!("{}.token", pod.node())));
    runtime::daemonize(
        &mut cmd,
        &paths.log(&format!("waypoint-{}", pod.qualified_name())),
    )?;
    cmd.spawn()
        .with_context(|| format!("starting waypoint {}/{}", gateway.namespace, gateway.name))?;
    Ok(())
}

/// The waypoint's `GET /healthz/ready` (in its pod): 200 once it has its
/// config and certificate.
pub async fn readiness(pod: &Pod) -> Result<(u16, String), String> {
    http_get(
        Some(pod.netns().name()),
        SocketAddr::from(([127, 0, 0, 1], 15021)),
        "/healthz/ready",
    )
    .await
    .map_err(|e| e.to_string())
}

/// Waits (up to `within`) for each of `gateways` to be ready; a waypoint
/// that is not is reported, not fatal.
pub async fn wait_ready(
    paths: &Paths,
    topology: &Topology,
    gateways: &[Gateway],
    within: Duration,
) {
    for gateway in gateways {
        let pod = topology.pod(&pod_name(&gateway.namespace, &gateway.name));
        let ready =
            weft_tests::processes::eventually("the waypoint to be ready", within, || async {
                matches!(readiness(pod).await, Ok((200, _))).then_some(())
            })
            .await;
        match ready {
            Ok(()) => println!(
                "waypoint/{}/{} ready (pod {})",
                gateway.namespace,
                gateway.name,
                pod.qualified_name()
            ),
            Err(_) => eprintln!(
                "weft local: waypoint {}/{} is not ready yet; see {}",
                gateway.namespace,
                gateway.name,
                paths
                    .log(&format!("waypoint-{}", pod.qualified_name()))
                    .display()
            ),
        }
    }
}
