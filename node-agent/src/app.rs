//! `weft-node-agent`: configuration, the plugin socket, and start-up.

use std::{path::PathBuf, sync::Arc};

use clap::Parser;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    agent::NodeAgent,
    cni::spec::DEFAULT_AGENT_SOCKET,
    install::{plugin_entry, Credentials, Installer},
    plugin_api::{PluginAnswer, PluginRequest},
};

#[derive(Clone, Debug, Parser)]
#[command(
    name = "weft-node-agent",
    version,
    about = "Weft's node agent: hands the node's enrolled pods to ztunnel"
)]
pub struct Config {
    /// The node this agent serves.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The ZDS socket ztunnel connects to (Istio's path by default).
    #[arg(long, env = "WEFT_ZDS_SOCKET", default_value = weft_zds::DEFAULT_SOCKET)]
    pub zds_socket: PathBuf,
    /// The socket the CNI plugin calls (the same path on the host).
    #[arg(long, env = "WEFT_CNI_SOCKET", default_value = DEFAULT_AGENT_SOCKET)]
    pub plugin_socket: PathBuf,
    /// The node's CNI configuration directory; when given, `weft-cni` is
    /// installed and kept chained into its primary configuration.
    #[arg(long, env = "WEFT_CNI_CONF_DIR")]
    pub cni_conf_dir: Option<PathBuf>,
    /// The node's CNI bin directory, where `weft-cni` is copied.
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The plugin binary to install.
    #[arg(long, env = "WEFT_CNI_PLUGIN", default_value = "/opt/weft/weft-cni")]
    pub plugin_binary: PathBuf,
    /// The node's /proc, where running pods' network namespaces are found.
    #[arg(long, env = "WEFT_HOST_PROC", default_value = "/host/proc")]
    pub proc_root: PathBuf,
    /// `--cni-conf-dir` as the host names it (where the plugin, run by the
    /// runtime on the host, finds its credentials).
    #[arg(long, env = "WEFT_CNI_CONF_HOST_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_host_dir: PathBuf,
}

/// `weft-node-agent uninstall`: takes `weft-cni` out of the node's CNI
/// configuration, removes its binary and credentials, and the sockets the
/// agent listened on.
#[derive(Clone, Debug, Parser)]
#[command(name = "weft-node-agent uninstall")]
pub struct Uninstall {
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/host/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    #[arg(long, env = "WEFT_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// The agent's ZDS socket (removed only if it is a socket).
    #[arg(long, env = "WEFT_ZDS_SOCKET", default_value = weft_zds::DEFAULT_SOCKET)]
    pub zds_socket: PathBuf,
    /// The agent's plugin socket (removed only if it is a socket).
    #[arg(long, env = "WEFT_CNI_SOCKET", default_value = DEFAULT_AGENT_SOCKET)]
    pub plugin_socket: PathBuf,
}

/// Removes `path` if it is a socket; says whether it was there. Anything
/// else at that path is left alone, with an error naming it.
fn remove_socket(path: &std::path::Path) -> anyhow::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(anyhow::anyhow!("reading {}: {err}", path.display())),
        Ok(meta) if meta.file_type().is_socket() => {
            std::fs::remove_file(path)
                .map_err(|err| anyhow::anyhow!("removing {}: {err}", path.display()))?;
            Ok(true)
        }
        Ok(_) => Err(anyhow::anyhow!(
            "{} is not a socket; left in place (is --zds-socket or --plugin-socket wrong?)",
            path.display()
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("listening on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to the API server: {0} (in a pod, the service account is used; elsewhere KUBECONFIG)")]
    Kube(#[from] kube::Error),
    #[error("installing weft-cni: {0}")]
    Install(#[from] crate::install::InstallError),
}

impl Config {
    /// How `weft-cni` is installed, when it is.
    pub fn installer(&self) -> Option<Installer> {
        // The plugin reads the API server as the agent does: the agent's
        // kubeconfig, else its service account.
        let credentials = match std::env::var_os("KUBECONFIG") {
            Some(file) => Some(Credentials::File(file.into())),
            None => std::env::var_os("KUBERNETES_SERVICE_HOST").map(|_| Credentials::InCluster),
        };
        Some(Installer {
            bin_dir: self.cni_bin_dir.clone(),
            conf_dir: self.cni_conf_dir.clone()?,
            plugin_binary: self.plugin_binary.clone(),
            entry: plugin_entry(&self.plugin_socket),
            host_conf_dir: self.cni_conf_host_dir.clone(),
            credentials,
        })
    }
}

/// A started agent: it holds the node's running enrolled pods, listens
/// for ztunnel and for the plugin, and follows the API server.
pub struct Started {
    pub agent: Arc<NodeAgent>,
    pub plugin: UnixListener,
    pub running: tokio::task::JoinHandle<()>,
}

/// Starts the agent: the running pods first (so the first ztunnel's
/// snapshot names them), then the ZDS socket, then the plugin's.
pub async fn start(config: &Config) -> Result<Started, StartError> {
    let client = kube::Client::try_default().await?;
    let listen = |path: &PathBuf, source| StartError::Listen {
        path: path.clone(),
        source,
    };
    let agent = NodeAgent::new(
        weft_zds::agent::Agent::new(&config.zds_socket),
        client.clone(),
    );
    let running = crate::running::start(
        agent.clone(),
        client,
        &config.node_name,
        config.proc_root.clone(),
        std::time::Duration::from_secs(30),
    )
    .await;
    agent.listen().map_err(|e| listen(&config.zds_socket, e))?;
    let _ = std::fs::remove_file(&config.plugin_socket);
    if let Some(dir) = config.plugin_socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| listen(&config.plugin_socket, e))?;
    }
    let plugin =
        UnixListener::bind(&config.plugin_socket).map_err(|e| listen(&config.plugin_socket, e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        &config.plugin_socket,
        std::fs::Permissions::from_mode(0o600),
    )
    .map_err(|e| listen(&config.plugin_socket, e))?;
    Ok(Started {
        agent,
        plugin,
        running,
    })
}

/// Answers plugin connections, one request each.
pub async fn serve_plugin(agent: Arc<NodeAgent>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(err) = answer(&agent, stream).await {
                        tracing::warn!(%err, "a CNI plugin call failed");
                    }
                });
            }
            Err(err) => {
                tracing::warn!(%err, "plugin socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(agent: &NodeAgent, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let answer = match serde_json::from_str::<PluginRequest>(&line) {
        Ok(request) => agent.handle(request).await,
        Err(err) => PluginAnswer::Failed {
            message: format!("not a plugin request: {err}"),
            retry: false,
        },
    };
    let mut out = serde_json::to_vec(&answer).expect("answers serialize");
    out.push(b'\n');
    write.write_all(&out).await
}

/// The binary's entry point.
pub fn main() -> anyhow::Result<()> {
    main_from(std::env::args_os())
}

/// Runs the agent (or `uninstall`) with `args` (the first is the program
/// name).
pub fn main_from(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    if args.get(1).is_some_and(|a| a == "uninstall") {
        let uninstall = Uninstall::parse_from(
            std::iter::once(std::ffi::OsString::from("weft-node-agent uninstall"))
                .chain(args[2..].iter().cloned()),
        );
        let installer = Installer {
            bin_dir: uninstall.cni_bin_dir,
            conf_dir: uninstall.cni_conf_dir,
            plugin_binary: PathBuf::new(),
            entry: serde_json::Value::Null,
            host_conf_dir: PathBuf::new(),
            credentials: None,
        };
        for path in installer.uninstall()? {
            println!("removed weft-cni from {}", path.display());
        }
        for socket in [&uninstall.zds_socket, &uninstall.plugin_socket] {
            if remove_socket(socket)? {
                println!("removed {}", socket.display());
            }
        }
        return Ok(());
    }
    let config = Config::parse_from(args);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let Started {
                agent,
                plugin,
                running,
            } = start(&config).await?;
            // The plugin is chained only once its socket answers, so that no
            // ADD finds nobody home because of the agent's own start.
            let installing = match config.installer() {
                Some(installer) => {
                    let binary = installer.install_binary()?;
                    tracing::info!(binary = %binary.display(), "weft-cni installed");
                    Some(tokio::spawn(
                        installer.keep_chained(std::time::Duration::from_secs(1)),
                    ))
                }
                None => None,
            };
            // The line tests and scripts wait for, on stdout.
            println!(
                "zds={} plugin={}",
                config.zds_socket.display(),
                config.plugin_socket.display()
            );
            tracing::info!(node = %config.node_name, zds = %config.zds_socket.display(), plugin = %config.plugin_socket.display(), "node agent started");
            let serving = tokio::spawn(serve_plugin(agent, plugin));
            // On SIGTERM (an upgrade, a restart) the plugin stays chained:
            // new pods wait for the next agent instead of starting
            // uncaptured. `weft-node-agent uninstall` takes it out.
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            serving.abort();
            running.abort();
            if let Some(task) = installing {
                task.abort();
            }
            Ok(())
        })
}
