//! One mesh root for every replica: on Kubernetes the root certificate and
//! key live in the Secret `weft-ca` in the control service's namespace (as
//! istiod keeps its self-signed root in `istio-ca-secret`). At start each
//! replica takes the Secret's root into its CA directory; when there is no
//! Secret yet, it stores its own root as the Secret, and if another replica
//! stored one first, takes that one instead.

use std::{collections::BTreeMap, path::Path};

use k8s_openapi::{api::core::v1::Secret, ByteString};
use kube::{
    api::{ObjectMeta, PostParams},
    Api, Client,
};

use crate::ca::{
    authority::{write_private, ROOT_CERT, ROOT_KEY},
    Authority, CaError,
};

/// The Secret holding the mesh root.
pub const SECRET: &str = "weft-ca";

#[derive(Debug, thiserror::Error)]
pub enum CaSecretError {
    #[error(
        "reading or storing the mesh root in Secret {namespace}/{SECRET}: {source}; does the \
         control service's service account have get and create on secrets there?"
    )]
    Api {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{SECRET} has no {key}: delete it to have a new root made, or restore it")]
    Incomplete {
        namespace: String,
        key: &'static str,
    },
    #[error("writing the mesh root into {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Makes `dir` hold the cluster's mesh root (see the module comment).
pub async fn sync(
    client: &Client,
    namespace: &str,
    dir: &Path,
    trust_domain: &str,
) -> Result<(), CaSecretError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let api_error = |source| CaSecretError::Api {
        namespace: namespace.to_owned(),
        source,
    };
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(SECRET).await.map_err(api_error)? {
            let data = secret.data.unwrap_or_default();
            let get = |key: &'static str| {
                data.get(key)
                    .map(|v| v.0.clone())
                    .ok_or(CaSecretError::Incomplete {
                        namespace: namespace.to_owned(),
                        key,
                    })
            };
            let (cert, key) = (get(ROOT_CERT)?, get(ROOT_KEY)?);
            let io = |path: &Path| {
                let path = path.display().to_string();
                move |source| CaSecretError::Io { path, source }
            };
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            let key_path = dir.join(ROOT_KEY);
            let _ = std::fs::remove_file(&key_path);
            write_private(&key_path, &key).map_err(io(&key_path))?;
            let cert_path = dir.join(ROOT_CERT);
            std::fs::write(&cert_path, &cert).map_err(io(&cert_path))?;
            tracing::info!(secret = %format!("{namespace}/{SECRET}"), "using the cluster's mesh root");
            return Ok(());
        }
        // No Secret: offer ours (made now, if this replica has none).
        Authority::load_or_create(dir, trust_domain)?;
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| CaSecretError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(SECRET.into()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([
                (ROOT_CERT.to_owned(), ByteString(read(ROOT_CERT)?)),
                (ROOT_KEY.to_owned(), ByteString(read(ROOT_KEY)?)),
            ])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(secret = %format!("{namespace}/{SECRET}"), "stored this replica's mesh root for the cluster");
                return Ok(());
            }
            // Another replica was first: take its root on the next turn.
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(err) => return Err(api_error(err)),
        }
    }
    Err(api_error(kube::Error::Service(
        "the Secret kept appearing and disappearing".into(),
    )))
}

/// Publishes the root certificate (not the key) as the ConfigMap
/// `istio-ca-root-cert` in `namespace`, where ztunnel mounts it.
pub async fn publish_root(
    client: &Client,
    namespace: &str,
    root_pem: &str,
) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = super::waypoints::ROOT_CERT_CONFIGMAP;
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {ROOT_CERT: root_pem},
    });
    api.patch(
        name,
        &PatchParams::apply(super::status::FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}
