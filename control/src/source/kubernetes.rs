//! The Kubernetes source: the objects the local source reads from files,
//! read from an API server instead.
//!
//! One watcher per kind lists, then watches; after any error (the API
//! server restarted, a watch expired with 410 Gone, the connection dropped)
//! the kind is looked up again and relisted, and the relist replaces what
//! was known of it. Bookmarks keep the resource versions fresh between
//! changes. Each object is turned back into the document a user would have
//! written and handed to the same parser as the local source, so one YAML
//! yields the same objects — and the same xDS — through either source.
//!
//! A kind whose API the server does not offer (the Gateway API or Istio
//! CRDs are not installed) reads as empty and is looked for again every
//! [`REDISCOVER`]. Nothing is published until every kind has been listed
//! once, so proxies never see half a mesh. A rejected object keeps its last
//! good version, as in the local source, and is reported with the API
//! server as its origin.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use kube::{
    api::{Api, DynamicObject},
    core::ObjectMeta,
    discovery::{self, ApiResource},
    runtime::{
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        watcher,
    },
    Client, Resource,
};
use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
};

use super::{
    yaml::{self, DocumentError},
    ConfigSnapshot,
};
use crate::objects::{Kind, Object, ObjectKey};

/// The origin ([`DocumentError::file`]) of objects from the API server.
pub const ORIGIN: &str = "kubernetes";

/// How often a kind the API server does not offer is looked for again.
pub const REDISCOVER: Duration = Duration::from_secs(10);

pub(crate) const GATEWAY_API: &str = "gateway.networking.k8s.io";
const ISTIO_SECURITY: &str = "security.istio.io";
const ISTIO_NETWORKING: &str = "networking.istio.io";

/// Every kind read, with its API group ("" for the core group).
const WATCHED: [(Kind, &str); 11] = [
    (Kind::Namespace, ""),
    (Kind::Pod, ""),
    (Kind::Service, ""),
    (Kind::AuthorizationPolicy, ISTIO_SECURITY),
    (Kind::PeerAuthentication, ISTIO_SECURITY),
    (Kind::Gateway, GATEWAY_API),
    (Kind::HttpRoute, GATEWAY_API),
    (Kind::GrpcRoute, GATEWAY_API),
    (Kind::ReferenceGrant, GATEWAY_API),
    (Kind::VirtualService, ISTIO_NETWORKING),
    (Kind::DestinationRule, ISTIO_NETWORKING),
];

#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error(
        "no Kubernetes configuration: {0}; set KUBECONFIG or pass --kubeconfig, or run in a pod \
         with a service account"
    )]
    Config(String),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Where the API server is and how to authenticate to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeConnection {
    /// A kubeconfig file. Without one: `KUBECONFIG`, `~/.kube/config`, then
    /// the pod's own service account, as kubectl and client-go look.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    pub context: Option<String>,
}

impl KubeConnection {
    pub async fn client(&self) -> Result<Client, KubeSourceError> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..Default::default()
        };
        let config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let file = kube::config::Kubeconfig::read_from(path)
                    .map_err(|err| KubeSourceError::Config(format!("{}: {err}", path.display())))?;
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(|err| KubeSourceError::Config(format!("{}: {err}", path.display())))?
            }
            (None, Some(_)) => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|err| KubeSourceError::Config(err.to_string()))?,
            (None, None) => kube::Config::infer()
                .await
                .map_err(|err| KubeSourceError::Config(err.to_string()))?,
        };
        Client::try_from(config).map_err(KubeSourceError::Client)
    }
}

/// What is known of one object.
#[derive(Clone, Debug)]
struct Entry {
    /// Its last version that could be used.
    good: Option<Object>,
    /// Why its current version cannot be used.
    error: Option<DocumentError>,
}

#[derive(Debug, Default)]
struct KindState {
    /// Listed at least once (or known to be absent from the server).
    synced: bool,
    entries: BTreeMap<ObjectKey, Entry>,
}

#[derive(Debug, Default)]
struct Shared {
    kinds: Mutex<BTreeMap<Kind, KindState>>,
    changed: Notify,
}

impl Shared {
    fn update(&self, kind: Kind, change: impl FnOnce(&mut KindState)) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        change(kinds.entry(kind).or_default());
        drop(kinds);
        self.changed.notify_one();
    }

    /// The snapshot, once every kind has been listed.
    fn snapshot(&self) -> Option<ConfigSnapshot> {
        let kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if kinds.len() < WATCHED.len() || !kinds.values().all(|k| k.synced) {
            return None;
        }
        let mut snapshot = ConfigSnapshot::default();
        for state in kinds.values() {
            for (key, entry) in &state.entries {
                if let Some(object) = &entry.good {
                    snapshot.objects.insert(key.clone(), object.clone());
                }
                if let Some(error) = &entry.error {
                    snapshot.errors.push(error.clone());
                }
            }
        }
        Some(snapshot)
    }

    fn listed(&self) -> usize {
        let kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        kinds.values().filter(|k| k.synced).count()
    }
}

/// A running Kubernetes source: its snapshots, and the watchers behind them
/// (stopped when this is dropped).
pub struct KubeSource {
    pub snapshots: watch::Receiver<Arc<ConfigSnapshot>>,
    /// The client the watchers use (for others who talk to the same server).
    pub client: Client,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl KubeSource {
    /// Starts a watcher for every kind and returns once each has been
    /// listed, with the first complete snapshot in `snapshots`. Later
    /// changes are published after `debounce` of quiet; a snapshot equal to
    /// the previous one is not republished.
    pub async fn start(client: Client, debounce: Duration) -> Self {
        let shared = Arc::new(Shared::default());
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "weft-control".into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        );
        let mut tasks: Vec<JoinHandle<()>> = WATCHED
            .iter()
            .map(|&(kind, group)| {
                let watcher = KindWatcher {
                    client: client.clone(),
                    recorder: recorder.clone(),
                    kind,
                    shared: shared.clone(),
                };
                tokio::spawn(watcher.run(group))
            })
            .collect();
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        tasks.push(tokio::spawn(publish(shared.clone(), first_tx, debounce)));
        let mut progress = tokio::time::interval(Duration::from_secs(5));
        progress.tick().await;
        tokio::pin!(first_rx);
        let snapshots = loop {
            tokio::select! {
                first = &mut first_rx => match first {
                    Ok(snapshots) => break snapshots,
                    Err(_) => unreachable!("the publisher runs until the source is dropped"),
                },
                _ = progress.tick() => tracing::info!(
                    listed = shared.listed(),
                    kinds = WATCHED.len(),
                    "waiting for the Kubernetes API server to list every kind"
                ),
            }
        };
        Self {
            snapshots,
            client,
            tasks,
        }
    }
}

/// Publishes a snapshot whenever a kind changes (after `debounce`); the
/// first complete one creates the channel handed back through `first`.
async fn publish(
    shared: Arc<Shared>,
    first: tokio::sync::oneshot::Sender<watch::Receiver<Arc<ConfigSnapshot>>>,
    debounce: Duration,
) {
    let mut first = Some(first);
    let mut sender: Option<watch::Sender<Arc<ConfigSnapshot>>> = None;
    loop {
        shared.changed.notified().await;
        tokio::time::sleep(debounce).await;
        let Some(snapshot) = shared.snapshot() else {
            continue;
        };
        match &sender {
            None => {
                tracing::info!(
                    objects = snapshot.objects.len(),
                    errors = snapshot.errors.len(),
                    "read the mesh from the Kubernetes API server"
                );
                let (tx, rx) = watch::channel(Arc::new(snapshot));
                if let Some(first) = first.take() {
                    let _ = first.send(rx);
                }
                sender = Some(tx);
            }
            Some(tx) => {
                if **tx.borrow() != snapshot {
                    tracing::info!(
                        objects = snapshot.objects.len(),
                        errors = snapshot.errors.len(),
                        "Kubernetes objects changed"
                    );
                    tx.send_replace(Arc::new(snapshot));
                }
            }
        }
    }
}

/// Finds the resource serving `kind` in `group`, preferring the group's
/// preferred version. `Ok(None)`: the server does not offer it.
pub(crate) async fn find_resource(
    client: &Client,
    group: &str,
    kind: Kind,
) -> Result<Option<ApiResource>, kube::Error> {
    let api_group = match discovery::group(client, group).await {
        Ok(api_group) => api_group,
        Err(kube::Error::Discovery(_)) => return Ok(None),
        Err(err) => return Err(err),
    };
    let name = kind.to_string();
    let preferred = api_group.preferred_version_or_latest().to_owned();
    let versions = std::iter::once(preferred.clone()).chain(
        api_group
            .versions()
            .filter(|v| *v != preferred)
            .map(str::to_owned),
    );
    for version in versions {
        if let Some((resource, _)) = api_group
            .versioned_resources(&version)
            .into_iter()
            .find(|(resource, _)| resource.kind == name)
        {
            return Ok(Some(resource));
        }
    }
    Ok(None)
}

fn missing_advice(group: &str) -> &'static str {
    match group {
        GATEWAY_API => {
            "install the Gateway API CRDs (standard channel, v1.1 or later, which has GRPCRoute)"
        }
        ISTIO_SECURITY | ISTIO_NETWORKING => {
            "install Weft's CRDs (kubectl apply --server-side -k deploy/)"
        }
        _ => "check the API server's version",
    }
}

/// A list in progress: each object's conversion, with the object (for the
/// Event a rejection gets).
type Listing = BTreeMap<ObjectKey, (Result<Object, DocumentError>, DynamicObject)>;

/// Keeps one kind's state current, for as long as the source runs.
struct KindWatcher {
    client: Client,
    recorder: Recorder,
    kind: Kind,
    shared: Arc<Shared>,
}

impl KindWatcher {
    async fn run(self, group: &'static str) {
        let kind = self.kind;
        let mut backoff = Duration::from_millis(200);
        let mut reported_missing = false;
        // Reported once per outage, not on every retry.
        let mut unreachable = false;
        loop {
            match find_resource(&self.client, group, kind).await {
                Ok(Some(resource)) => {
                    reported_missing = false;
                    if unreachable {
                        tracing::info!(%kind, "the Kubernetes API server is back; listing again");
                        unreachable = false;
                    }
                    if self.watch(&resource).await {
                        backoff = Duration::from_millis(200);
                    }
                }
                Ok(None) => {
                    if !reported_missing {
                        tracing::warn!(
                            %kind,
                            group,
                            advice = missing_advice(group),
                            "the API server does not offer this kind; reading none until it does"
                        );
                        reported_missing = true;
                    }
                    self.shared.update(kind, |state| {
                        state.synced = true;
                        state.entries.clear();
                    });
                    tokio::time::sleep(REDISCOVER).await;
                    continue;
                }
                Err(err) if !unreachable => {
                    tracing::warn!(%kind, %err, "cannot reach the Kubernetes API server; serving what was last read");
                    unreachable = true;
                }
                Err(err) => tracing::debug!(%kind, %err, "API server still unreachable"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Lists and watches the kind until the watch fails. Returns whether
    /// the list completed (so the next failure starts its backoff afresh).
    async fn watch(&self, resource: &ApiResource) -> bool {
        let kind = self.kind;
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), resource);
        let mut events = watcher(api, watcher::Config::default()).boxed();
        let mut listing: Option<Listing> = None;
        let mut listed = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(object)) => {
                    if let (Some(listing), Some((key, result))) =
                        (listing.as_mut(), convert(kind, resource, object.clone()))
                    {
                        listing.insert(key, (result, object));
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    let fresh = listing.take().unwrap_or_default();
                    let mut rejected = Vec::new();
                    self.shared.update(kind, |state| {
                        let old = std::mem::take(&mut state.entries);
                        for (key, (result, object)) in fresh {
                            let previous = old.get(&key);
                            let entry = apply(previous, result);
                            if is_newly_rejected(previous, &entry) {
                                rejected.push((object, entry.error.clone()));
                            }
                            state.entries.insert(key, entry);
                        }
                        state.synced = true;
                    });
                    for (object, error) in rejected {
                        self.report(resource, &object, error);
                    }
                    listed = true;
                    tracing::debug!(%kind, version = %resource.api_version, "listed");
                }
                Ok(watcher::Event::Apply(object)) => {
                    let key = key_of(kind, &object.metadata);
                    match convert(kind, resource, object.clone()) {
                        Some((key, result)) => {
                            let mut rejected = None;
                            self.shared.update(kind, |state| {
                                let previous = state.entries.get(&key);
                                let entry = apply(previous, result);
                                if is_newly_rejected(previous, &entry) {
                                    rejected = Some(entry.error.clone());
                                }
                                state.entries.insert(key, entry);
                            });
                            if let Some(error) = rejected {
                                self.report(resource, &object, error);
                            }
                        }
                        // No longer a workload (e.g. unscheduled again): gone.
                        None => self.shared.update(kind, |state| {
                            state.entries.remove(&key);
                        }),
                    }
                }
                Ok(watcher::Event::Delete(object)) => {
                    let key = key_of(kind, &object.metadata);
                    self.shared.update(kind, |state| {
                        state.entries.remove(&key);
                    });
                }
                Err(err) => {
                    tracing::warn!(%kind, %err, "watch failed; listing again");
                    return listed;
                }
            }
        }
        listed
    }

    /// Puts a Warning Event on a rejected object, where `kubectl describe`
    /// shows it (in the background: the source never waits on it).
    fn report(&self, resource: &ApiResource, object: &DynamicObject, error: Option<DocumentError>) {
        let Some(error) = error else { return };
        let reference = object.object_ref(resource);
        let recorder = self.recorder.clone();
        // The Events API caps a note at 1 kB.
        let mut note = error.reason;
        if note.len() > 1000 {
            let mut end = 1000;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        tokio::spawn(async move {
            let event = KubeEvent {
                type_: EventType::Warning,
                reason: "Rejected".into(),
                note: Some(note),
                action: "Translate".into(),
                secondary: None,
            };
            if let Err(err) = recorder.publish(&event, &reference).await {
                tracing::debug!(%err, object = ?reference.name, "could not record an Event on a rejected object");
            }
        });
    }
}

/// Whether `entry` carries a rejection that `previous` did not (so it is
/// reported once, not on every relist).
fn is_newly_rejected(previous: Option<&Entry>, entry: &Entry) -> bool {
    entry.error.is_some() && previous.and_then(|p| p.error.as_ref()) != entry.error.as_ref()
}

/// The new entry for an object, given what was known of it.
fn apply(old: Option<&Entry>, result: Result<Object, DocumentError>) -> Entry {
    match result {
        Ok(object) => Entry {
            good: Some(object),
            error: None,
        },
        Err(error) => {
            tracing::warn!(object = ?error.key.as_ref().map(ToString::to_string), reason = %error.reason, "rejected Kubernetes object; keeping its last good version");
            Entry {
                good: old.and_then(|entry| entry.good.clone()),
                error: Some(error),
            }
        }
    }
}

fn key_of(kind: Kind, meta: &ObjectMeta) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: match kind {
            Kind::Namespace => String::new(),
            _ => meta.namespace.clone().unwrap_or_default(),
        },
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// The object as the local source would have read it from a file; `None`
/// for a pod that is not scheduled yet (not a workload, and not an error).
fn convert(
    kind: Kind,
    resource: &ApiResource,
    mut object: DynamicObject,
) -> Option<(ObjectKey, Result<Object, DocumentError>)> {
    let key = key_of(kind, &object.metadata);
    if kind == Kind::Pod
        && object.data["spec"]["nodeName"]
            .as_str()
            .is_none_or(str::is_empty)
    {
        return None;
    }
    // Bookkeeping the parser never reads.
    object.metadata.managed_fields = None;
    let error = |reason: String| DocumentError {
        file: ORIGIN.to_owned(),
        document: 0,
        key: Some(key.clone()),
        reason,
    };
    let result = serde_json::to_value(&object)
        .and_then(|mut json| {
            // List items may come without their type.
            json["apiVersion"] = resource.api_version.clone().into();
            json["kind"] = resource.kind.clone().into();
            serde_json::from_value::<serde_yaml::Value>(json)
        })
        .map_err(|err| error(format!("cannot be read: {err}")))
        .and_then(|document| yaml::parse_document(document).map_err(|(_, reason)| error(reason)));
    Some((key, result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(kind: &str, api_version: &str) -> ApiResource {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: format!("{}s", kind.to_lowercase()),
        }
    }

    fn object(json: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json).unwrap()
    }

    /// Kind, resource, the object as served, and the outcome: `None` for
    /// skipped, else accepted or rejected with this reason.
    type Case = (
        Kind,
        ApiResource,
        serde_json::Value,
        Option<Result<(), &'static str>>,
    );

    #[test]
    fn conversion_matches_the_file_parser() {
        let cases: Vec<Case> = vec![
            (
                Kind::Pod,
                resource("Pod", "v1"),
                serde_json::json!({
                    "metadata": {"name": "a", "namespace": "demo", "uid": "1",
                                 "managedFields": [{"manager": "kubectl"}]},
                    "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "x"}]},
                    "status": {"podIP": "198.18.1.2", "phase": "Running"},
                }),
                Some(Ok(())),
            ),
            (
                Kind::Pod,
                resource("Pod", "v1"),
                serde_json::json!({
                    "metadata": {"name": "pending", "namespace": "demo"},
                    "spec": {"containers": [{"name": "app"}]},
                }),
                None,
            ),
            (
                Kind::Pod,
                resource("Pod", "v1"),
                serde_json::json!({
                    "metadata": {"name": "b", "namespace": "demo"},
                    "spec": {"nodeName": "n1"},
                    "status": {"podIP": "not-an-ip"},
                }),
                Some(Err("status.podIP \"not-an-ip\" is not an IP address")),
            ),
            (
                Kind::AuthorizationPolicy,
                resource("AuthorizationPolicy", "security.istio.io/v1"),
                serde_json::json!({
                    "metadata": {"name": "p", "namespace": "demo"},
                    "spec": {"action": "DENY", "rules": [{}]},
                }),
                Some(Ok(())),
            ),
        ];
        for (kind, resource, json, expected) in cases {
            let name = json["metadata"]["name"].clone();
            let converted = convert(kind, &resource, object(json));
            match (converted, expected) {
                (None, None) => {}
                (Some((key, Ok(object))), Some(Ok(()))) => {
                    assert_eq!(key, object.key(), "{name}");
                }
                (Some((key, Err(error))), Some(Err(reason))) => {
                    assert_eq!(error.reason, reason, "{name}");
                    assert_eq!(error.key, Some(key), "{name}");
                    assert_eq!(
                        error.to_string(),
                        format!("kubernetes (Pod demo/b): {reason}"),
                        "{name}"
                    );
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_rejected_version_keeps_the_last_good_one() {
        let (key, good) = convert(
            Kind::Namespace,
            &resource("Namespace", "v1"),
            object(serde_json::json!({"metadata": {"name": "demo"}})),
        )
        .unwrap();
        let first = apply(None, good);
        let bad = DocumentError {
            file: ORIGIN.into(),
            document: 0,
            key: Some(key),
            reason: "broken".into(),
        };
        let second = apply(Some(&first), Err(bad.clone()));
        assert_eq!(second.good, first.good);
        assert_eq!(second.error, Some(bad.clone()));
        let never_good = apply(None, Err(bad));
        assert!(never_good.good.is_none());
    }
}
