//! What the CNI specification (1.0 and 1.1) says a plugin receives and
//! answers: the command and its environment, the network configuration on
//! stdin, the result or an error on stdout.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

/// The versions this plugin accepts in a configuration, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version this plugin answers VERSION with.
pub const CURRENT_VERSION: &str = "1.1.0";

/// The spec's well-known error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADDs now.
    NotAvailable = 50,
    /// Weft's own (100 and up): ztunnel refused the pod.
    Refused = 100,
}

/// An error as the spec writes it on stdout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", details.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = Some(details.into());
        self
    }

    /// The JSON the runtime reads.
    pub fn to_json(&self, cni_version: &str) -> Value {
        #[derive(Serialize)]
        struct Wire<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            details: Option<&'a str>,
        }
        serde_json::to_value(Wire {
            cni_version,
            code: self.code as u32,
            msg: &self.msg,
            details: self.details.as_deref(),
        })
        .expect("an error serializes")
    }
}

/// The verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(text: &str) -> Result<Self, CniError> {
        Ok(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    Code::InvalidEnvironment,
                    format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK, VERSION, STATUS or GC"),
                ))
            }
        })
    }
}

/// The runtime's environment for one call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Environment {
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    /// `CNI_ARGS`, split (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`, …).
    pub args: BTreeMap<String, String>,
}

impl Environment {
    /// Reads the environment through `get` (`std::env::var` in the plugin).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Self {
        let args = get("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let non_empty = |name: &str| get(name).filter(|v| !v.is_empty());
        Self {
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS"),
            ifname: non_empty("CNI_IFNAME"),
            args,
        }
    }

    /// A variable `command` cannot do without.
    pub fn require<'a>(
        value: &'a Option<String>,
        name: &str,
        command: Command,
    ) -> Result<&'a str, CniError> {
        value.as_deref().ok_or_else(|| {
            CniError::new(
                Code::InvalidEnvironment,
                format!("{name} is required for {command:?}"),
            )
        })
    }
}

/// This plugin's part of the network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    /// The node agent's plugin socket.
    pub agent_socket: String,
    /// How long ADD waits for the agent (and so for ztunnel).
    pub timeout_seconds: u64,
    /// Credentials (written by the agent) for reading a pod and its
    /// namespace from the API server while the agent is unreachable, so
    /// that pods outside the mesh still start.
    pub kubeconfig: Option<String>,
    /// The previous plugin's result, passed through unchanged.
    pub prev_result: Option<Value>,
    /// GC: the attachments the runtime still has (container ids).
    pub valid_attachments: Vec<String>,
}

/// Where the node agent listens for the plugin by default.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/weft/cni.sock";

impl NetConf {
    /// Parses stdin. VERSION reads only `cniVersion`; every other command
    /// needs a version this plugin speaks.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|err| {
            CniError::new(Code::Decode, "the network configuration is not JSON")
                .with_details(err.to_string())
        })?;
        let object = value.as_object().ok_or_else(|| {
            CniError::new(
                Code::Decode,
                "the network configuration is not a JSON object",
            )
        })?;
        let cni_version = object
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let text = |key: &str, default: &str| -> Result<String, CniError> {
            match object.get(key) {
                None => Ok(default.to_owned()),
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(other) => Err(CniError::new(
                    Code::InvalidConfig,
                    format!("{key} must be a non-empty string, not {other}"),
                )),
            }
        };
        let timeout_seconds = match object.get("timeoutSeconds") {
            None => 30,
            Some(v) => v.as_u64().filter(|s| *s > 0).ok_or_else(|| {
                CniError::new(
                    Code::InvalidConfig,
                    format!("timeoutSeconds must be a positive integer, not {v}"),
                )
            })?,
        };
        let valid_attachments = match object.get("cni.dev/valid-attachments") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| {
                    item.get("containerID")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            CniError::new(
                                Code::InvalidConfig,
                                format!("cni.dev/valid-attachments: {item} has no containerID"),
                            )
                        })
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(CniError::new(
                    Code::InvalidConfig,
                    format!("cni.dev/valid-attachments must be an array, not {other}"),
                ))
            }
        };
        Ok(Self {
            cni_version,
            agent_socket: text("agentSocket", DEFAULT_AGENT_SOCKET)?,
            kubeconfig: object
                .get("kubeconfig")
                .map(|_| text("kubeconfig", ""))
                .transpose()?,
            timeout_seconds,
            prev_result: object.get("prevResult").cloned(),
            valid_attachments,
        })
    }

    /// Refuses a version this plugin does not speak.
    pub fn check_version(&self) -> Result<(), CniError> {
        if SUPPORTED_VERSIONS.contains(&self.cni_version.as_str()) {
            Ok(())
        } else {
            Err(CniError::new(
                Code::IncompatibleVersion,
                format!(
                    "cniVersion {:?} is not supported (weft-cni speaks {})",
                    self.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ))
        }
    }
}

/// VERSION's answer.
pub fn version_answer() -> Value {
    serde_json::json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_configurations_and_refuses_bad_ones() {
        let ok = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s","type":"weft-cni","agentSocket":"/run/a.sock",
                 "prevResult":{"cniVersion":"1.0.0","ips":[]}}"#,
        )
        .unwrap();
        assert_eq!(ok.agent_socket, "/run/a.sock");
        assert_eq!(ok.timeout_seconds, 30);
        assert!(ok.prev_result.is_some());
        ok.check_version().unwrap();
        let gc = NetConf::parse(
            br#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(gc.valid_attachments, ["c1"]);
        assert_eq!(gc.agent_socket, DEFAULT_AGENT_SOCKET);

        let cases: &[(&[u8], Code, &str)] = &[
            (b"not json", Code::Decode, "not JSON"),
            (b"[1]", Code::Decode, "not a JSON object"),
            (
                br#"{"cniVersion":"1.0.0","agentSocket":7}"#,
                Code::InvalidConfig,
                "agentSocket",
            ),
            (
                br#"{"cniVersion":"1.0.0","timeoutSeconds":0}"#,
                Code::InvalidConfig,
                "timeoutSeconds",
            ),
            (
                br#"{"cniVersion":"1.1.0","cni.dev/valid-attachments":[{"ifname":"eth0"}]}"#,
                Code::InvalidConfig,
                "no containerID",
            ),
        ];
        for (input, code, text) in cases {
            let err = NetConf::parse(input).expect_err(text);
            assert_eq!(err.code, *code, "{err}");
            assert!(err.to_string().contains(text), "{err}");
        }
        let old = NetConf::parse(br#"{"cniVersion":"0.2.0"}"#).unwrap();
        assert_eq!(
            old.check_version().unwrap_err().code,
            Code::IncompatibleVersion
        );
    }

    #[test]
    fn reads_the_environment() {
        let env = Environment::read(|name| {
            Some(
                match name {
                    "CNI_CONTAINERID" => "c1",
                    "CNI_NETNS" => "/var/run/netns/x",
                    "CNI_IFNAME" => "eth0",
                    "CNI_ARGS" => "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=app",
                    _ => return None,
                }
                .to_owned(),
            )
        });
        assert_eq!(env.container_id.as_deref(), Some("c1"));
        assert_eq!(env.args["K8S_POD_NAMESPACE"], "demo");
        assert_eq!(env.args["K8S_POD_NAME"], "app");
        assert!(Command::parse("ADD").is_ok());
        assert_eq!(
            Command::parse("add").unwrap_err().code,
            Code::InvalidEnvironment
        );
        let err = CniError::new(Code::TryAgainLater, "agent down").with_details("socket x");
        assert_eq!(
            err.to_json("1.0.0"),
            serde_json::json!({"cniVersion":"1.0.0","code":11,"msg":"agent down","details":"socket x"})
        );
    }
}
