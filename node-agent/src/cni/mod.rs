//! `weft-cni`, the chained CNI plugin. It runs after the cluster's own
//! plugin: on ADD it asks the node agent to capture the pod and returns
//! (the previous plugin's result, unchanged) only once ztunnel has it, so
//! no application of an enrolled pod ever starts uncaptured. Which pods
//! are in the mesh is the agent's call. DEL and GC never fail because Weft
//! is gone; STATUS reports whether the agent can serve ADDs.

mod fallback;
pub mod spec;

use std::{io::Read, path::Path, time::Duration};

use serde_json::Value;
use spec::{CniError, Code, Command, Environment, NetConf};

use crate::plugin_api::{ask, ApiError, PluginAnswer, PluginRequest};

/// How the plugin reaches the agent (the real socket, or a test's).
pub type Ask<'a> = &'a dyn Fn(&Path, &PluginRequest, Duration) -> Result<PluginAnswer, ApiError>;

/// How long DEL, CHECK, STATUS and GC wait for the agent.
const SHORT: Duration = Duration::from_secs(5);

/// The plugin binary's entry point.
pub fn main() -> std::process::ExitCode {
    let env = Environment::read(|name| std::env::var(name).ok());
    let command = std::env::var("CNI_COMMAND").ok();
    let mut stdin = Vec::new();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => run(command.as_deref(), &env, &stdin, &ask),
        Err(err) => Err((
            String::new(),
            CniError::new(
                Code::Io,
                "reading the network configuration from stdin failed",
            )
            .with_details(err.to_string()),
        )),
    };
    match outcome {
        Ok(Some(out)) => {
            println!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err((version, err)) => {
            println!("{}", err.to_json(&version));
            eprintln!("weft-cni: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One call: what to print on success, or the error (with the version to
/// write it in).
pub fn run(
    command: Option<&str>,
    env: &Environment,
    stdin: &[u8],
    ask: Ask<'_>,
) -> Result<Option<Value>, (String, CniError)> {
    let command = command
        .ok_or_else(|| CniError::new(Code::InvalidEnvironment, "CNI_COMMAND is not set"))
        .and_then(Command::parse)
        .map_err(|e| (String::new(), e))?;
    if command == Command::Version {
        return Ok(Some(spec::version_answer()));
    }
    let conf = NetConf::parse(stdin).map_err(|e| (String::new(), e))?;
    let version = conf.cni_version.clone();
    conf.check_version().map_err(|e| (version.clone(), e))?;
    call(command, env, &conf, ask).map_err(|e| (version, e))
}

fn call(
    command: Command,
    env: &Environment,
    conf: &NetConf,
    ask: Ask<'_>,
) -> Result<Option<Value>, CniError> {
    let socket = Path::new(&conf.agent_socket);
    let pod = || {
        Some((
            env.args.get("K8S_POD_NAMESPACE")?.clone(),
            env.args.get("K8S_POD_NAME")?.clone(),
        ))
    };
    match command {
        Command::Version => Ok(Some(spec::version_answer())),
        Command::Add => {
            let container_id = Environment::require(&env.container_id, "CNI_CONTAINERID", command)?;
            let netns = Environment::require(&env.netns, "CNI_NETNS", command)?;
            Environment::require(&env.ifname, "CNI_IFNAME", command)?;
            let mut result = conf.prev_result.clone().ok_or_else(|| {
                CniError::new(
                    Code::InvalidConfig,
                    "weft-cni is a chained plugin: it runs after the cluster's own plugin, \
                     whose result (prevResult) it passes on; this configuration has none",
                )
            })?;
            if let Some((namespace, name)) = pod() {
                let request = PluginRequest::Add {
                    container_id: container_id.to_owned(),
                    netns: netns.to_owned(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                };
                match ask(socket, &request, Duration::from_secs(conf.timeout_seconds)) {
                    Ok(PluginAnswer::Captured | PluginAnswer::Outside | PluginAnswer::Ok) => {}
                    Ok(PluginAnswer::Failed { message, retry }) => {
                        return Err(failed(message, retry));
                    }
                    // Without the agent, a pod outside the mesh still
                    // starts; an enrolled one waits for it.
                    Err(err) => {
                        let Some(kubeconfig) = conf.kubeconfig.as_deref() else {
                            return Err(unreachable(err));
                        };
                        match fallback::in_mesh(Path::new(kubeconfig), &namespace, &name) {
                            Ok(false) => eprintln!(
                                "weft-cni: {err}; pod {namespace}/{name} is outside the mesh \
                                 (read from the API server), so it starts"
                            ),
                            Ok(true) => return Err(unreachable(err)),
                            Err(reason) => {
                                return Err(unreachable(err).with_details(format!(
                                    "and whether pod {namespace}/{name} is in the mesh could \
                                     not be read: {reason}"
                                )))
                            }
                        }
                    }
                }
            }
            // Not a Kubernetes pod (no K8S_POD_* arguments): nothing to do.
            if let Some(object) = result.as_object_mut() {
                object
                    .entry("cniVersion")
                    .or_insert_with(|| Value::String(conf.cni_version.clone()));
            }
            Ok(Some(result))
        }
        Command::Del => {
            if let Some(container_id) = &env.container_id {
                let request = PluginRequest::Del {
                    container_id: container_id.clone(),
                };
                // A pod's teardown never fails because Weft is gone.
                best_effort("DEL", ask(socket, &request, SHORT));
            }
            Ok(None)
        }
        Command::Check => {
            let container_id = Environment::require(&env.container_id, "CNI_CONTAINERID", command)?;
            Environment::require(&env.netns, "CNI_NETNS", command)?;
            Environment::require(&env.ifname, "CNI_IFNAME", command)?;
            conf.prev_result
                .as_ref()
                .ok_or_else(|| CniError::new(Code::InvalidConfig, "CHECK needs prevResult"))?;
            let Some((namespace, name)) = pod() else {
                return Ok(None);
            };
            let request = PluginRequest::Check {
                container_id: container_id.to_owned(),
                namespace,
                name,
            };
            match ask(socket, &request, SHORT) {
                Ok(PluginAnswer::Failed { message, retry }) => Err(failed(message, retry)),
                Ok(_) => Ok(None),
                Err(err) => Err(unreachable(err)),
            }
        }
        Command::Status => match ask(socket, &PluginRequest::Status, SHORT) {
            Ok(PluginAnswer::Failed { message, .. }) => {
                Err(CniError::new(Code::NotAvailable, message))
            }
            Ok(_) => Ok(None),
            Err(err) => Err(CniError::new(Code::NotAvailable, err.to_string())),
        },
        Command::Gc => {
            let request = PluginRequest::Gc {
                valid: conf.valid_attachments.clone(),
            };
            best_effort("GC", ask(socket, &request, SHORT));
            Ok(None)
        }
    }
}

/// A verb that succeeds whatever the agent says: its complaint goes to
/// stderr only.
fn best_effort(verb: &str, answer: Result<PluginAnswer, ApiError>) {
    match answer {
        Ok(PluginAnswer::Failed { message, .. }) => {
            eprintln!("weft-cni: {verb}: {message} (ignored)")
        }
        Err(err) => eprintln!("weft-cni: {verb}: {err} (ignored)"),
        Ok(_) => {}
    }
}

fn failed(message: String, retry: bool) -> CniError {
    CniError::new(
        if retry {
            Code::TryAgainLater
        } else {
            Code::Refused
        },
        message,
    )
}

fn unreachable(err: ApiError) -> CniError {
    CniError::new(Code::TryAgainLater, err.to_string()).with_details(
        "is the Weft node agent running on this node? The runtime retries the pod's sandbox",
    )
}
