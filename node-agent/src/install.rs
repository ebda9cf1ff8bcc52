//! Putting `weft-cni` on the node: its binary in the CNI bin directory and
//! its entry at the end of the primary network configuration's plugin
//! chain, kept there when the cluster's own CNI rewrites the file, and
//! taken out again on uninstall — never on an ordinary stop, so that during
//! the agent's own upgrade new pods wait (ADD fails and is retried) rather
//! than start uncaptured.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{json, Value};

/// The plugin's `type`, and so its binary's name.
pub const PLUGIN_TYPE: &str = "weft-cni";
/// The plugin's API server credentials, beside the configuration (runtimes
/// read only `.conf`, `.conflist` and `.json` there).
pub const KUBECONFIG_NAME: &str = "weft-cni.kubeconfig";

/// Where the plugin's API server credentials come from: the agent's own,
/// so that the plugin can tell a pod outside the mesh while the agent is
/// down.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// The agent's kubeconfig file (`KUBECONFIG`), copied.
    File(PathBuf),
    /// The agent's service account, as its pod sees it.
    InCluster,
}

const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl Credentials {
    /// The kubeconfig the plugin reads.
    fn render(&self) -> Result<Vec<u8>, InstallError> {
        match self {
            Credentials::File(path) => std::fs::read(path).map_err(io("reading", path)),
            Credentials::InCluster => {
                let read = |name: &str| {
                    let path = Path::new(SERVICE_ACCOUNT).join(name);
                    std::fs::read(&path).map_err(io("reading", &path))
                };
                let (token, ca) = (read("token")?, read("ca.crt")?);
                let host = std::env::var("KUBERNETES_SERVICE_HOST").unwrap_or_default();
                let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or("443".into());
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                use base64::Engine;
                let config = json!({
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "cluster", "cluster": {
                        "server": format!("https://{host}:{port}"),
                        "certificate-authority-data":
                            base64::engine::general_purpose::STANDARD.encode(ca),
                    }}],
                    "users": [{"name": PLUGIN_TYPE, "user": {
                        "token": String::from_utf8_lossy(&token).trim(),
                    }}],
                    "contexts": [{"name": PLUGIN_TYPE, "context": {
                        "cluster": "cluster", "user": PLUGIN_TYPE,
                    }}],
                    "current-context": PLUGIN_TYPE,
                });
                Ok(serde_json::to_vec_pretty(&config).expect("JSON serializes"))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a CNI network configuration ({reason}); fix or remove it")]
    Invalid { path: PathBuf, reason: String },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

/// Where things go on the node.
#[derive(Clone, Debug)]
pub struct Installer {
    /// The node's CNI bin directory (`/opt/cni/bin` on the host).
    pub bin_dir: PathBuf,
    /// The node's CNI configuration directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The plugin binary to copy (in the agent's image).
    pub plugin_binary: PathBuf,
    /// The plugin's entry in the chain (its `type` is [`PLUGIN_TYPE`]).
    pub entry: Value,
    /// `conf_dir` as the host (and so the plugin) names it.
    pub host_conf_dir: PathBuf,
    /// The plugin's API server credentials, kept current beside the
    /// configuration (tokens rotate).
    pub credentials: Option<Credentials>,
}

/// The entry for a plugin that calls the agent at `socket`.
pub fn plugin_entry(socket: &Path) -> Value {
    json!({"type": PLUGIN_TYPE, "agentSocket": socket})
}

/// Writes `bytes` to `path` through a file beside it and a rename, so a
/// reader (the runtime) never sees half of it.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A dot name: runtimes skip hidden files, and it does not end in .conf.
    let staged = path.with_file_name(format!(".{name}.weft-tmp"));
    std::fs::write(&staged, bytes).map_err(io("writing", &staged))?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", &staged))?;
    std::fs::rename(&staged, path).map_err(io("renaming into place", path))
}

/// The configuration a runtime uses: the first `.conflist`, `.conf` or
/// `.json` file by name, as containerd and CRI-O pick it.
pub fn primary_config(dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(io("reading", dir)(err)),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            let known = p
                .extension()
                .is_some_and(|e| e == "conflist" || e == "conf" || e == "json");
            !hidden && known && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

/// `config` with the plugin chained last (a single-plugin `.conf` becomes a
/// list); `None` when it is already there exactly so.
pub fn chained(config: &Value, entry: &Value) -> Result<Option<Value>, String> {
    let object = config.as_object().ok_or("not a JSON object")?;
    let mut list = if object.contains_key("plugins") {
        config.clone()
    } else if object.contains_key("type") {
        json!({
            "cniVersion": object.get("cniVersion").cloned().unwrap_or(json!("1.0.0")),
            "name": object.get("name").cloned().unwrap_or(json!("k8s-pod-network")),
            "plugins": [config.clone()],
        })
    } else {
        return Err("neither a plugin list (plugins) nor a plugin (type)".into());
    };
    let plugins = list["plugins"]
        .as_array_mut()
        .ok_or("plugins is not an array")?;
    let ours = |p: &Value| p["type"] == PLUGIN_TYPE;
    if plugins.last() == Some(entry) && plugins.iter().filter(|p| ours(p)).count() == 1 {
        return Ok(None);
    }
    plugins.retain(|p| !ours(p));
    plugins.push(entry.clone());
    Ok(Some(list))
}

/// `config` without the plugin; `None` when it was not there.
pub fn unchained(config: &Value) -> Option<Value> {
    let mut list = config.clone();
    let plugins = list["plugins"].as_array_mut()?;
    let before = plugins.len();
    plugins.retain(|p| p["type"] != PLUGIN_TYPE);
    (plugins.len() != before).then_some(list)
}

fn read_config(path: &Path) -> Result<Value, InstallError> {
    let text = std::fs::read(path).map_err(io("reading", path))?;
    serde_json::from_slice(&text).map_err(|err| InstallError::Invalid {
        path: path.to_owned(),
        reason: err.to_string(),
    })
}

impl Installer {
    /// Copies the plugin binary into the bin directory (replacing an older
    /// one in one rename).
    pub fn install_binary(&self) -> Result<PathBuf, InstallError> {
        let target = self.bin_dir.join(PLUGIN_TYPE);
        let bytes =
            std::fs::read(&self.plugin_binary).map_err(io("reading", &self.plugin_binary))?;
        std::fs::create_dir_all(&self.bin_dir).map_err(io("creating", &self.bin_dir))?;
        write_atomically(&target, &bytes, 0o755)?;
        Ok(target)
    }

    /// Makes sure the primary configuration chains the plugin; returns the
    /// file it rewrote, if any (none while the cluster's CNI has not
    /// written its configuration yet).
    pub fn ensure_chained(&self) -> Result<Option<PathBuf>, InstallError> {
        let Some(path) = primary_config(&self.conf_dir)? else {
            return Ok(None);
        };
        let mut entry = self.entry.clone();
        if let Some(credentials) = &self.credentials {
            // Written before the entry that names it.
            let bytes = credentials.render()?;
            let file = self.conf_dir.join(KUBECONFIG_NAME);
            if std::fs::read(&file).ok().as_deref() != Some(bytes.as_slice()) {
                write_atomically(&file, &bytes, 0o600)?;
            }
            entry["kubeconfig"] = self
                .host_conf_dir
                .join(KUBECONFIG_NAME)
                .display()
                .to_string()
                .into();
        }
        let config = read_config(&path)?;
        let Some(list) = chained(&config, &entry).map_err(|reason| InstallError::Invalid {
            path: path.clone(),
            reason,
        })?
        else {
            return Ok(None);
        };
        let bytes = serde_json::to_vec_pretty(&list).expect("JSON serializes");
        if path.extension().is_some_and(|e| e == "conflist") {
            write_atomically(&path, &bytes, 0o644)?;
            Ok(Some(path))
        } else {
            // A single plugin's file is read as one plugin: the list goes in
            // a .conflist beside it, which sorts first in its place.
            let list_path = path.with_extension("conflist");
            write_atomically(&list_path, &bytes, 0o644)?;
            std::fs::remove_file(&path).map_err(io("removing", &path))?;
            Ok(Some(list_path))
        }
    }

    /// Takes the plugin out of every configuration and removes its binary.
    pub fn uninstall(&self) -> Result<Vec<PathBuf>, InstallError> {
        let mut changed = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.conf_dir) {
            for path in entries.filter_map(Result::ok).map(|e| e.path()) {
                if path.extension().is_none_or(|e| e != "conflist") {
                    continue;
                }
                let Ok(config) = read_config(&path) else {
                    continue;
                };
                if let Some(list) = unchained(&config) {
                    let bytes = serde_json::to_vec_pretty(&list).expect("JSON serializes");
                    write_atomically(&path, &bytes, 0o644)?;
                    changed.push(path);
                }
            }
        }
        for file in [
            self.bin_dir.join(PLUGIN_TYPE),
            self.conf_dir.join(KUBECONFIG_NAME),
        ] {
            match std::fs::remove_file(&file) {
                Ok(()) => changed.push(file),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(io("removing", &file)(err)),
            }
        }
        Ok(changed)
    }

    /// Keeps the plugin chained for as long as the task runs, checking
    /// every `interval` (the cluster's CNI may rewrite its file at any
    /// time, dropping the entry).
    pub async fn keep_chained(self, interval: Duration) {
        let mut last_error = None;
        loop {
            match self.ensure_chained() {
                Ok(Some(path)) => {
                    tracing::info!(config = %path.display(), "weft-cni chained into the node's CNI configuration");
                    last_error = None;
                }
                Ok(None) => last_error = None,
                Err(err) => {
                    let text = err.to_string();
                    if last_error.as_ref() != Some(&text) {
                        tracing::warn!(err = %text, "cannot chain weft-cni; retrying");
                        last_error = Some(text);
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Value {
        plugin_entry(Path::new("/var/run/weft/cni.sock"))
    }

    #[test]
    fn chains_once_at_the_end() {
        let bridge = json!({"type": "bridge", "bridge": "cni0"});
        let list = json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": [bridge]});
        let with = chained(&list, &entry()).unwrap().expect("added");
        assert_eq!(with["plugins"], json!([bridge, entry()]));
        assert_eq!(chained(&with, &entry()).unwrap(), None, "already there");
        // Moved to the end when something was appended after it; one copy.
        let mut after = with.clone();
        after["plugins"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "portmap"}));
        let fixed = chained(&after, &entry()).unwrap().expect("moved");
        assert_eq!(
            fixed["plugins"],
            json!([bridge, {"type": "portmap"}, entry()])
        );
        // A single plugin becomes a list.
        let single = json!({"cniVersion": "0.4.0", "name": "net", "type": "bridge"});
        let list = chained(&single, &entry()).unwrap().expect("a list");
        assert_eq!(list["cniVersion"], "0.4.0");
        assert_eq!(list["plugins"], json!([single, entry()]));
        // Taken out again.
        assert_eq!(
            unchained(&fixed).unwrap()["plugins"],
            json!([bridge, {"type": "portmap"}])
        );
        assert_eq!(unchained(&json!({"plugins": [bridge]})), None);
        for bad in [json!([1]), json!({"name": "x"}), json!({"plugins": 3})] {
            assert!(chained(&bad, &entry()).is_err(), "{bad}");
        }
    }

    #[test]
    fn keeps_the_primary_file_chained_and_uninstalls() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
        std::fs::create_dir_all(&conf).unwrap();
        let plugin = dir.path().join("weft-cni-build");
        std::fs::write(&plugin, b"#!/bin/true\n").unwrap();
        let agent_kubeconfig = dir.path().join("agent.kubeconfig");
        std::fs::write(&agent_kubeconfig, b"apiVersion: v1\nkind: Config\n").unwrap();
        let installer = Installer {
            bin_dir: bin.clone(),
            conf_dir: conf.clone(),
            plugin_binary: plugin,
            entry: entry(),
            host_conf_dir: PathBuf::from("/etc/cni/net.d"),
            credentials: Some(Credentials::File(agent_kubeconfig)),
        };
        // The entry names the credentials where the host sees them.
        let mut entry = entry();
        entry["kubeconfig"] = "/etc/cni/net.d/weft-cni.kubeconfig".into();
        installer.install_binary().unwrap();
        assert!(bin.join(PLUGIN_TYPE).is_file());
        // Nothing to chain into yet.
        assert_eq!(installer.ensure_chained().unwrap(), None);
        // The primary CNI writes its .conf; a later file is not the primary.
        std::fs::write(
            conf.join("10-bridge.conf"),
            r#"{"cniVersion":"1.0.0","name":"k8s","type":"bridge"}"#,
        )
        .unwrap();
        std::fs::write(conf.join("99-other.conflist"), r#"{"plugins":[]}"#).unwrap();
        let written = installer.ensure_chained().unwrap().expect("chained");
        assert_eq!(written, conf.join("10-bridge.conflist"));
        assert!(!conf.join("10-bridge.conf").exists());
        let read =
            |p: &Path| -> Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
        assert_eq!(read(&written)["plugins"][1], entry);
        let credentials = conf.join(KUBECONFIG_NAME);
        assert_eq!(
            std::fs::read(&credentials).unwrap(),
            b"apiVersion: v1\nkind: Config\n"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&credentials)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(installer.ensure_chained().unwrap(), None);
        // The primary CNI rewrites its file without us: put back.
        std::fs::write(
            &written,
            r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert_eq!(installer.ensure_chained().unwrap(), Some(written.clone()));
        assert_eq!(read(&written)["plugins"][1], entry);
        // Garbage is named, not overwritten.
        std::fs::write(conf.join("05-broken.conflist"), "{").unwrap();
        let err = installer.ensure_chained().unwrap_err().to_string();
        assert!(err.contains("05-broken.conflist"), "{err}");
        std::fs::remove_file(conf.join("05-broken.conflist")).unwrap();
        // Uninstall leaves no entry and no binary.
        let changed = installer.uninstall().unwrap();
        assert!(changed.contains(&written), "{changed:?}");
        assert_eq!(read(&written)["plugins"], json!([{"type": "bridge"}]));
        assert!(!bin.join(PLUGIN_TYPE).exists());
        assert!(!credentials.exists());
        assert!(std::fs::read_dir(&conf).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("weft-tmp")));
    }
}
