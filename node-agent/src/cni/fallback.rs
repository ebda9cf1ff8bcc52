//! The plugin's own decision, for when the node agent is unreachable: the
//! pod and its namespace read from the API server with the credentials the
//! agent wrote, judged by the same rules ([`crate::enrollment::decide`]).

use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    config::{KubeConfigOptions, Kubeconfig},
    Api, Client, Config,
};

/// Whether `namespace/name` is in the mesh.
pub fn in_mesh(kubeconfig: &Path, namespace: &str, name: &str) -> Result<bool, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let file = Kubeconfig::read_from(kubeconfig)
            .map_err(|e| format!("reading {}: {e}", kubeconfig.display()))?;
        let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
        let client = Client::try_from(config).map_err(|e| e.to_string())?;
        let lookup = async {
            let pod = Api::<Pod>::namespaced(client.clone(), namespace)
                .get(name)
                .await
                .map_err(|e| format!("reading pod {namespace}/{name}: {e}"))?;
            let ns = Api::<Namespace>::all(client)
                .get_opt(namespace)
                .await
                .map_err(|e| format!("reading namespace {namespace}: {e}"))?;
            crate::enrollment::decide(&pod, ns.as_ref())
                .map(|enrolled| enrolled.is_some())
                .map_err(|e| e.to_string())
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), lookup)
            .await
            .map_err(|_| "the API server did not answer in 10 s".to_owned())?
    })
}
