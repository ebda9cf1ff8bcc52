//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go does
//! it: the leader renews the Lease every `retry`; another replica takes it
//! over once it has seen the same record unchanged for the lease's
//! duration (measured on its own clock, so clock skew between replicas does
//! not matter). Writes go through the API server's optimistic concurrency
//! (the Lease's resourceVersion), so two replicas never both win a round.
//! Every replica serves xDS; only the leader writes status and owned
//! objects.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    api::{ObjectMeta, PostParams},
    Api, Client,
};
use tokio::{sync::watch, task::JoinHandle};

/// Which Lease, who we are, and how long a leader's term lasts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (its pod name, or host name and pid).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often the Lease is renewed, or tried for.
    pub retry: Duration,
}

impl LeaseConfig {
    /// client-go's defaults: a 15 s lease, renewed or tried every 2 s.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: "weft-control".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            retry: Duration::from_secs(2),
        }
    }
}

/// The record last seen, and when it was first seen unchanged.
struct Observed {
    record: (String, Option<MicroTime>),
    since: Instant,
}

/// Runs the election for as long as the task lives; the receiver says
/// whether this replica leads right now.
pub fn start(client: Client, config: LeaseConfig) -> (watch::Receiver<bool>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let mut observed: Option<Observed> = None;
        let mut last_renewed: Option<Instant> = None;
        loop {
            let leading = match round(&api, &config, &mut observed).await {
                Ok(leading) => {
                    if leading {
                        last_renewed = Some(Instant::now());
                    }
                    leading
                }
                Err(err) => {
                    // Keep leading only while the last renewal is surely
                    // still valid for everyone else.
                    let still =
                        last_renewed.is_some_and(|at| at.elapsed() < config.duration * 2 / 3);
                    tracing::warn!(%err, lease = %config.name, still_leading = still, "cannot renew or read the leader Lease");
                    still
                }
            };
            if *tx.borrow() != leading {
                if leading {
                    tracing::info!(identity = %config.identity, lease = %config.name, "became the leader");
                } else {
                    tracing::info!(identity = %config.identity, lease = %config.name, "no longer the leader");
                }
                tx.send_replace(leading);
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(config.retry).await;
        }
    });
    (rx, task)
}

fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// One try: create, renew or take over the Lease. `Ok(true)`: we hold it.
async fn round(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<bool, kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let duration_secs = i32::try_from(config.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(err) if is_conflict(&err) => Ok(false),
            Err(err) => Err(err),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let record = (holder.clone(), spec.renew_time.clone());
    if observed.as_ref().is_none_or(|o| o.record != record) {
        *observed = Some(Observed {
            record,
            since: Instant::now(),
        });
    }
    let term =
        Duration::from_secs(u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0));
    let expired = holder.is_empty() || observed.as_ref().is_some_and(|o| o.since.elapsed() > term);
    let ours = holder == config.identity;
    if !ours && !expired {
        return Ok(false);
    }
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: if ours {
            spec.acquire_time
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + i32::from(!ours)),
        ..spec
    });
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => {
            if !ours {
                tracing::info!(previous = %holder, "took over the leader Lease");
            }
            Ok(true)
        }
        Err(err) if is_conflict(&err) => Ok(false),
        Err(err) => Err(err),
    }
}
