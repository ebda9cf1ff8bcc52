//! A real control service on loopback, with a config directory and node
//! tokens, for the proxy-side client tests.
#![allow(dead_code)]

use std::{path::PathBuf, sync::Arc, time::Duration};

use weft_control::{auth::issue_node_token, config::ControlConfig, server::Control};
use weft_proxy::{
    control::ControlPlane,
    state::ProxyState,
    xds::{client::proxy_node, AddressHandler, AuthorizationHandler, XdsClient, XdsStatus},
};

pub const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {nodeName: n1, serviceAccountName: client}
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec: {nodeName: n2, serviceAccountName: server}
status: {podIP: 198.18.2.2}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  clusterIP: 198.19.0.10
  selector: {app: server}
  ports: [{port: 80, targetPort: 8080}]
"#;

pub struct TestControl {
    pub dir: tempfile::TempDir,
    pub control: Option<Control>,
    pub config: ControlConfig,
    pub tokens: Vec<(String, String)>,
}

impl TestControl {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut ControlConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("config");
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::write(config_dir.join("mesh.yaml"), MESH).unwrap();
        let mut config = ControlConfig::new(&config_dir, dir.path().join("state"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        adjust(&mut config);
        let tokens = ["n1", "n2"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    issue_node_token(&config.node_credentials_dir, n).unwrap(),
                )
            })
            .collect();
        let control = Control::start(config.clone()).await.unwrap();
        // Restarts must come back on the same port.
        config.listen = control.addr();
        Self {
            dir,
            control: Some(control),
            config,
            tokens,
        }
    }

    pub fn control(&self) -> &Control {
        self.control.as_ref().expect("control running")
    }

    pub fn config_dir(&self) -> PathBuf {
        match &self.config.source {
            weft_control::source::SourceConfig::Directory(dir) => dir.clone(),
            other => panic!("the harness serves a directory, not {other}"),
        }
    }

    pub fn token(&self, node: &str) -> String {
        self.tokens
            .iter()
            .find(|(n, _)| n == node)
            .unwrap()
            .1
            .clone()
    }

    pub fn plane(&self, node: &str) -> ControlPlane {
        ControlPlane {
            address: self.config.listen.to_string(),
            server_name: "weft-control".into(),
            root_pem: std::fs::read_to_string(self.config.ca_dir.join("root-cert.pem")).unwrap(),
            token: self.token(node).into(),
        }
    }

    pub fn stop(&mut self) {
        self.control.take();
    }

    pub async fn restart(&mut self) {
        self.control = Some(Control::start(self.config.clone()).await.unwrap());
    }
}

/// An xDS client for `node` feeding a fresh state; returns the state and
/// its status.
pub fn xds_client(
    plane: ControlPlane,
    node: &str,
) -> (
    Arc<ProxyState>,
    tokio::sync::watch::Receiver<XdsStatus>,
    tokio::task::JoinHandle<()>,
) {
    let state = Arc::new(ProxyState::default());
    let mut client = XdsClient::new(
        plane,
        proxy_node("ztunnel", node, &format!("ztunnel~{node}")),
        vec![
            Arc::new(AddressHandler::new(state.clone())),
            Arc::new(AuthorizationHandler::new(state.clone())),
        ],
    );
    client.backoff = (Duration::from_millis(50), Duration::from_millis(500));
    let status = client.status();
    let task = tokio::spawn(client.run());
    (state, status, task)
}

/// Waits (up to 10 s) for `condition` on the state.
pub async fn eventually(state: &ProxyState, what: &str, condition: impl Fn(&ProxyState) -> bool) {
    let mut changes = state.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition(state) {
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            panic!("timed out waiting for: {what} (state: {state:?})");
        }
    }
}
