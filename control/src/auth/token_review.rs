//! Kubernetes authentication for proxies: the proxy presents a projected
//! service-account token (audience `istio-ca` unless configured
//! otherwise); the API server reviews it (`TokenReview`); the token must be
//! bound to a pod of its service account that is scheduled and not
//! finished. A ztunnel service account speaks for that pod's node; a
//! waypoint's pod (labelled with the name of a waypoint Gateway in its
//! namespace) for itself only; anyone else is refused.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{api::PostParams, Api, Client};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::Status;

use super::Caller;
use crate::{
    objects::{Kind, Object, ObjectKey, GATEWAY_NAME_LABEL},
    source::ConfigSnapshot,
};

/// The claim naming the pod a token is bound to.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// How long a successful review is trusted before the API server is asked
/// again (a deleted pod invalidates its tokens on the next review).
const CACHE_FOR: Duration = Duration::from_secs(30);
/// Reviews kept; past this the cache is emptied (bounded by construction).
const CACHE_MAX: usize = 4096;

/// Who may speak for a node, and how to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenReviewConfig {
    /// The audience tokens must be issued for.
    pub audience: String,
    /// `namespace/name` of the service accounts ztunnel runs as.
    pub ztunnel_accounts: Vec<String>,
}

impl Default for TokenReviewConfig {
    fn default() -> Self {
        Self {
            audience: "istio-ca".into(),
            // Weft's own DaemonSet, and Istio's ztunnel during a migration.
            ztunnel_accounts: vec!["weft-system/ztunnel".into(), "istio-system/ztunnel".into()],
        }
    }
}

/// What a review established: the pod the token is bound to.
#[derive(Clone, Debug)]
struct Reviewed {
    namespace: String,
    service_account: String,
    pod: String,
}

pub struct TokenReviewer {
    client: Client,
    config: TokenReviewConfig,
    snapshots: watch::Receiver<Arc<ConfigSnapshot>>,
    cache: Mutex<HashMap<[u8; 32], (Instant, Reviewed)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    pub fn new(
        client: Client,
        config: TokenReviewConfig,
        snapshots: watch::Receiver<Arc<ConfigSnapshot>>,
    ) -> Self {
        Self {
            client,
            config,
            snapshots,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Who presented `token`.
    pub async fn caller(&self, token: &str) -> Result<Caller, Status> {
        let reviewed = self.review(token).await?;
        let snapshot = self.snapshots.borrow().clone();
        let key = ObjectKey {
            kind: Kind::Pod,
            namespace: reviewed.namespace.clone(),
            name: reviewed.pod.clone(),
        };
        let pod = match snapshot.objects.get(&key) {
            Some(Object::Pod(pod)) => pod,
            _ => {
                return Err(Status::unauthenticated(format!(
                    "the token is bound to pod {}/{}, which is not scheduled (or not known yet); \
                     retry once it runs",
                    reviewed.namespace, reviewed.pod
                )))
            }
        };
        if pod.terminated {
            return Err(Status::unauthenticated(format!(
                "the token is bound to pod {}/{}, which has finished",
                reviewed.namespace, reviewed.pod
            )));
        }
        if pod.service_account != reviewed.service_account {
            return Err(Status::unauthenticated(format!(
                "pod {}/{} runs as {}, not as the token's service account {}",
                reviewed.namespace, reviewed.pod, pod.service_account, reviewed.service_account
            )));
        }
        let account = format!("{}/{}", reviewed.namespace, reviewed.service_account);
        if self.config.ztunnel_accounts.contains(&account) {
            return Ok(Caller::Node(pod.node_name.clone()));
        }
        let is_waypoint = pod.labels.get(GATEWAY_NAME_LABEL).is_some_and(|gateway| {
            matches!(
                snapshot.objects.get(&ObjectKey {
                    kind: Kind::Gateway,
                    namespace: pod.namespace.clone(),
                    name: gateway.clone(),
                }),
                Some(Object::Gateway(g)) if g.is_waypoint()
            )
        });
        if is_waypoint {
            return Ok(Caller::Waypoint {
                node: pod.node_name.clone(),
                namespace: reviewed.namespace,
                service_account: reviewed.service_account,
            });
        }
        Err(Status::permission_denied(format!(
            "service account {account} is not a ztunnel service account (accepted: {}), and pod \
             {}/{} is not a waypoint's",
            self.config.ztunnel_accounts.join(", "),
            reviewed.namespace,
            reviewed.pod
        )))
    }

    async fn review(&self, token: &str) -> Result<Reviewed, Status> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some((at, reviewed)) = self.cache_lock().get(&digest) {
            if at.elapsed() < CACHE_FOR {
                return Ok(reviewed.clone());
            }
        }
        let reviewed = self.ask(token).await?;
        let mut cache = self.cache_lock();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(digest, (Instant::now(), reviewed.clone()));
        Ok(reviewed)
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], (Instant, Reviewed)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ask(&self, token: &str) -> Result<Reviewed, Status> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.config.audience.clone()]),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|err| {
                tracing::warn!(%err, "TokenReview failed");
                Status::unavailable(format!(
                    "cannot review the token with the Kubernetes API server: {err}"
                ))
            })?;
        let status = answer.status.unwrap_or_default();
        if let Some(error) = status.error.filter(|e| !e.is_empty()) {
            return Err(Status::unauthenticated(format!(
                "the Kubernetes API server refused the token: {error}"
            )));
        }
        if status.authenticated != Some(true) {
            return Err(Status::unauthenticated(
                "the Kubernetes API server did not authenticate the token",
            ));
        }
        // A server that ignores the requested audiences says so by not
        // echoing them: such a token is refused.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.contains(&self.config.audience) {
            return Err(Status::unauthenticated(format!(
                "the token is not for audience {:?} (it is for {audiences:?})",
                self.config.audience
            )));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let Some((namespace, service_account)) = username
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
        else {
            return Err(Status::permission_denied(format!(
                "{username} is not a service account; ztunnel authenticates with its \
                 service-account token"
            )));
        };
        let account = format!("{namespace}/{service_account}");
        let pod = user
            .extra
            .as_ref()
            .and_then(|extra| extra.get(POD_NAME_EXTRA))
            .and_then(|names| names.first())
            .cloned()
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "the token of {account} is not bound to a pod; mount a projected \
                     service-account token (audience {})",
                    self.config.audience
                ))
            })?;
        Ok(Reviewed {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            pod,
        })
    }
}
