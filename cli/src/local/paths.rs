//! Where a local mesh keeps its files.

use std::path::{Path, PathBuf};

/// The control service's address on the fabric (gRPC, TLS).
pub const CONTROL_ADDRESS: &str = "198.19.255.254:15012";

#[derive(Clone, Debug)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The record of what is running.
    pub fn state(&self) -> PathBuf {
        self.root.join("state.json")
    }

    /// Serializes concurrent `weft local` commands.
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// The YAML the control service serves (the user's, with pod IPs).
    pub fn config(&self) -> PathBuf {
        self.root.join("config")
    }

    /// The control service's state: CA and node tokens.
    pub fn control(&self) -> PathBuf {
        self.root.join("control")
    }

    pub fn root_cert(&self) -> PathBuf {
        self.control().join("ca").join("root-cert.pem")
    }

    pub fn node_tokens(&self) -> PathBuf {
        self.control().join("nodes")
    }

    /// The node agent's ZDS socket, to which the node's ztunnel connects.
    pub fn ztunnel_socket(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node).join("ztunnel.sock")
    }

    /// The node's enrolled pods, for its node agent.
    pub fn node_pods(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node).join("pods.json")
    }

    /// What the node's agent last did.
    pub fn node_agent_report(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node).join("agent.json")
    }

    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{}.log", name.replace('/', "_")))
    }

    pub fn hosts(&self, namespace: &str, pod: &str) -> PathBuf {
        self.root
            .join("pods")
            .join(format!("{namespace}_{pod}"))
            .join("hosts")
    }

    /// The owner name of the mesh's namespaces and cgroups: `local` for the
    /// default directory, `local<hash>` for others, so meshes in different
    /// directories never collide.
    pub fn owner(&self) -> String {
        if self.root == Path::new("/run/weft-local") {
            return "local".into();
        }
        let hash = self
            .root
            .to_string_lossy()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        format!("local{:06x}", hash & 0xff_ffff)
    }

    pub fn exists(&self) -> bool {
        Path::new(&self.state()).exists()
    }
}
