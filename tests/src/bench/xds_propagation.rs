//! How long a change in the config directory takes to reach every
//! connected proxy: from writing a file to the last of N real xDS clients
//! (TLS gRPC on loopback) holding the new workload. Baseline: the same with
//! one client. Target: ≤ 100 ms for 100 clients.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use weft_control::{auth::issue_node_token, config::ControlConfig, server::Control};
use weft_proxy::{
    control::ControlPlane,
    state::ProxyState,
    xds::{client::proxy_node, AddressHandler, AuthorizationHandler, XdsClient},
};

use super::{ms, Summary};

const ROUNDS: usize = 20;
const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench, labels: {istio.io/dataplane-mode: ambient}}\n";

async fn measure(clients: usize) -> anyhow::Result<Summary> {
    let dir = tempfile::tempdir()?;
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir)?;
    std::fs::write(config_dir.join("base.yaml"), BASE)?;
    let mut config = ControlConfig::new(&config_dir, dir.path().join("state"));
    config.listen = "127.0.0.1:0".parse()?;
    let token = issue_node_token(&config.node_credentials_dir, "n1")?;
    let control = Control::start(config.clone())
        .await
        .context("starting the control service")?;
    let plane = ControlPlane {
        address: control.addr().to_string(),
        server_name: "weft-control".into(),
        root_pem: control.root_pem().to_owned(),
        token: token.into(),
    };
    let mut states = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..clients {
        let state = Arc::new(ProxyState::default());
        let client = XdsClient::new(
            plane.clone(),
            proxy_node("ztunnel", "n1", &format!("bench-{i}")),
            vec![
                Arc::new(AddressHandler::new(state.clone())),
                Arc::new(AuthorizationHandler::new(state.clone())),
            ],
        );
        let mut status = client.status();
        tasks.push(tokio::spawn(client.run()));
        tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.synced))
            .await
            .context("a client did not sync within 30 s")??;
        states.push(state);
    }
    let mut samples = Vec::new();
    for round in 0..ROUNDS {
        let ip = IpAddr::from([198, 18, 1, 10 + round as u8]);
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{round}, namespace: bench}}\nspec: {{nodeName: n1}}\nstatus: {{podIP: {ip}}}\n"
        );
        let mut watchers: Vec<_> = states.iter().map(|s| s.subscribe()).collect();
        let start = Instant::now();
        std::fs::write(config_dir.join(format!("p{round}.yaml")), pod)?;
        for (state, changes) in states.iter().zip(watchers.iter_mut()) {
            while state.workload_by_ip(ip).is_none() {
                tokio::time::timeout(Duration::from_secs(10), changes.changed())
                    .await
                    .context("propagation took over 10 s")??;
            }
        }
        samples.push(start.elapsed());
        // Let the directory watcher settle before the next change.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for task in tasks {
        task.abort();
    }
    drop(control);
    Ok(Summary::of(&mut samples))
}

pub async fn run() -> anyhow::Result<()> {
    let one = measure(1).await?;
    let hundred = measure(100).await?;
    println!("xds-propagation: config file change → every client holds it ({ROUNDS} rounds; includes the 20 ms debounce)");
    println!(
        "  1 client     p50 {:>9}  p90 {:>9}  max {:>9}",
        ms(one.p50),
        ms(one.p90),
        ms(one.max)
    );
    println!(
        "  100 clients  p50 {:>9}  p90 {:>9}  max {:>9}",
        ms(hundred.p50),
        ms(hundred.p90),
        ms(hundred.max)
    );
    println!(
        "  ratio 100/1: p50 {:.2}×, p90 {:.2}×   target p90 ≤ 100 ms: {}",
        hundred.p50.as_secs_f64() / one.p50.as_secs_f64(),
        hundred.p90.as_secs_f64() / one.p90.as_secs_f64(),
        if hundred.p90 <= Duration::from_millis(100) {
            "met"
        } else {
            "MISSED"
        }
    );
    Ok(())
}
