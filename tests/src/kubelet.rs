//! The kubelet's part in `kubectl port-forward`, played by the harness.
//!
//! No kubelet runs here, but the API server's `pods/portforward` only
//! relays: it looks up the pod's node, dials that Node's kubelet endpoint
//! over TLS (unverified when the server has no kubelet CA, as here) and
//! hands it the client's WebSocket upgrade. [`Kubelet`] registers a Node
//! whose endpoint is a loopback port of its own and answers there as a
//! kubelet does: WebSocket subprotocol `v4.channel.k8s.io`, a data and an
//! error channel per forwarded port, each opened with the port number
//! (two bytes, little-endian), then every message prefixed by its channel.
//! Where a pod's port "is" comes from the test ([`Kubelet::forward`]).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::{
    handshake::server::{ErrorResponse, Request, Response},
    http::HeaderValue,
    Message,
};

use crate::kube::ApiServer;

const PROTOCOL: &str = "v4.channel.k8s.io";

type Forwards = Arc<Mutex<HashMap<(String, String, u16), SocketAddr>>>;

/// A node's kubelet, as far as port-forwarding goes.
pub struct Kubelet {
    node: String,
    forwards: Forwards,
    task: JoinHandle<()>,
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Kubelet {
    /// Registers Node `node` on `api` with this kubelet's endpoint.
    pub async fn start(api: &ApiServer, node: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
            )?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let forwards = Forwards::default();
        let task = tokio::spawn({
            let forwards = forwards.clone();
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, forwards) = (acceptor.clone(), forwards.clone());
                    tokio::spawn(async move {
                        if let Err(err) = serve(acceptor, tcp, forwards).await {
                            eprintln!("kubelet: {err:#}");
                        }
                    });
                }
            }
        });
        api.kubectl_ok(
            &["apply", "--server-side", "-f", "-"],
            Some(&format!(
                "apiVersion: v1\nkind: Node\nmetadata: {{name: {node}, labels: \
                 {{kubernetes.io/os: linux, kubernetes.io/hostname: {node}}}}}\n"
            )),
        )
        .await?;
        let status = serde_json::json!({"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        }});
        api.patch_status("node", None, node, &status).await?;
        Ok(Self {
            node: node.to_owned(),
            forwards,
            task,
        })
    }

    /// Plays the scheduler and this node's kubelet for pod
    /// `namespace/name`: binds it to this node, runs each of its init
    /// containers for real as the entry point `entries` gives its image
    /// (the first whose name the image contains) with the container's args
    /// and env, each mounted host path rewritten to where
    /// `host_paths` puts it on this machine, and, once all succeeded, marks
    /// the pod running and ready (its main containers are not run).
    pub async fn run_init_containers(
        &self,
        api: &ApiServer,
        namespace: &str,
        name: &str,
        entries: &[(&str, &[&str])],
        host_paths: &[(&str, &std::path::Path)],
    ) -> anyhow::Result<()> {
        let pod: serde_json::Value = serde_json::from_str(
            &api.kubectl_ok(&["get", "pod", "-n", namespace, name, "-o", "json"], None)
                .await?,
        )?;
        if pod["spec"]["nodeName"].is_null() {
            let binding = serde_json::json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": namespace},
                "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
            });
            let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/binding");
            api.kubectl_ok(
                &["create", "--raw", &path, "-f", "-"],
                Some(&binding.to_string()),
            )
            .await?;
        }
        let spec = &pod["spec"];
        // Host path volume → where it is here.
        let volume_dir = |volume: &str| -> Option<std::path::PathBuf> {
            let host = spec["volumes"]
                .as_array()?
                .iter()
                .find(|v| v["name"] == volume)?["hostPath"]["path"]
                .as_str()?
                .to_owned();
            host_paths
                .iter()
                .find(|(path, _)| *path == host)
                .map(|(_, here)| here.to_path_buf())
        };
        for container in spec["initContainers"].as_array().into_iter().flatten() {
            let mounts: Vec<(String, std::path::PathBuf)> = container["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| {
                    Some((
                        m["mountPath"].as_str()?.to_owned(),
                        volume_dir(m["name"].as_str()?)?,
                    ))
                })
                .collect();
            let rewrite = |text: &str| -> String {
                for (mount, here) in &mounts {
                    if let Some(rest) = text.strip_prefix(mount.as_str()) {
                        return format!("{}{rest}", here.display());
                    }
                }
                text.to_owned()
            };
            let image = container["image"].as_str().unwrap_or_default();
            let entry = entries
                .iter()
                .find(|(name, _)| image.contains(name))
                .map(|(_, entry)| *entry)
                .ok_or_else(|| anyhow::anyhow!("no entry point for image {image}"))?;
            let mut cmd = tokio::process::Command::new(entry[0]);
            cmd.args(&entry[1..]).env_clear().kill_on_drop(true);
            for arg in container["args"].as_array().into_iter().flatten() {
                cmd.arg(rewrite(arg.as_str().unwrap_or_default()));
            }
            for env in container["env"].as_array().into_iter().flatten() {
                if let (Some(key), Some(value)) = (env["name"].as_str(), env["value"].as_str()) {
                    cmd.env(key, rewrite(value));
                }
            }
            let out = cmd.output().await?;
            anyhow::ensure!(
                out.status.success(),
                "init container {} of {namespace}/{name} failed: {}{}",
                container["name"],
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let status = serde_json::json!({"status": {
            "phase": "Running",
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
            ],
        }});
        api.patch_status("pod", Some(namespace), name, &status)
            .await?;
        Ok(())
    }

    /// Port `port` of pod `namespace/pod` is `to`.
    pub fn forward(&self, namespace: &str, pod: &str, port: u16, to: SocketAddr) {
        self.forwards
            .lock()
            .expect("not poisoned")
            .insert((namespace.into(), pod.into(), port), to);
    }
}

/// One request: `/portForward/{namespace}/{pod}?port=…` upgraded to a
/// WebSocket, each requested port connected to where the test put it.
async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    forwards: Forwards,
) -> anyhow::Result<()> {
    let tls = acceptor.accept(tcp).await?;
    let mut target = None;
    // tungstenite's callback type, whose error is its own.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        let offered = request
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if offered.split(',').any(|p| p.trim() == PROTOCOL) {
            response
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(PROTOCOL));
        }
        target = Some(request.uri().clone());
        Ok(response)
    };
    let mut socket = tokio_tungstenite::accept_hdr_async(tls, callback).await?;
    let uri = target.context("no request")?;
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let ["portForward", namespace, pod] = parts[..] else {
        anyhow::bail!("not a port-forward: {uri}");
    };
    // The API server names ports `port=`; clients of a kubelet `ports=`.
    let port: u16 = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "port" || *k == "ports")
        .and_then(|(_, v)| v.split([',', '%']).next()?.parse().ok())
        .with_context(|| format!("no port in {uri}"))?;
    let to = forwards
        .lock()
        .expect("not poisoned")
        .get(&(namespace.to_owned(), pod.to_owned(), port))
        .copied()
        .with_context(|| format!("nothing at {namespace}/{pod}:{port}"))?;
    // Channels 0 (data) and 1 (error) open with the port number.
    for channel in [0u8, 1] {
        let [lo, hi] = port.to_le_bytes();
        socket
            .send(Message::Binary(vec![channel, lo, hi].into()))
            .await?;
    }
    let mut tcp = TcpStream::connect(to).await?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Binary(data))) if data.first() == Some(&0) => {
                    tcp.write_all(&data[1..]).await?;
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(err.into()),
            },
            read = tcp.read(&mut buf) => {
                let n = read?;
                if n == 0 {
                    break;
                }
                let mut message = Vec::with_capacity(n + 1);
                message.push(0);
                message.extend_from_slice(&buf[..n]);
                socket.send(Message::Binary(message.into())).await?;
            }
        }
    }
    let _ = socket.close(None).await;
    Ok(())
}
