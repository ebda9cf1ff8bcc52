//! One certificate per identity, renewed in the background.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use tokio::{sync::watch, task::JoinHandle};
use weft_proto::spiffe::Identity;

use super::{ca_client::CaClient, certificate::WorkloadCertificate};

/// The state of one identity's certificate.
#[derive(Clone, Debug, Default)]
struct CertState {
    current: Option<Arc<WorkloadCertificate>>,
    last_error: Option<String>,
    attempts: u64,
}

struct Entry {
    state: watch::Receiver<CertState>,
    task: JoinHandle<()>,
}

/// What `/config_dump` shows about a certificate.
#[derive(Clone, Debug, Serialize)]
pub struct CertificateInfo {
    pub identity: String,
    pub serial: Option<String>,
    pub not_before: Option<SystemTime>,
    pub not_after: Option<SystemTime>,
    pub last_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("no certificate for {identity}: {reason}")]
pub struct FetchError {
    pub identity: Identity,
    pub reason: String,
}

/// Keeps certificates for the identities a proxy serves.
#[derive(Clone)]
pub struct CertificateManager {
    ca: Arc<CaClient>,
    entries: Arc<Mutex<HashMap<Identity, Entry>>>,
    /// Retry delays after a failed request: from `min`, doubling to `max`.
    pub backoff: (Duration, Duration),
}

impl CertificateManager {
    pub fn new(ca: CaClient) -> Self {
        Self {
            ca: Arc::new(ca),
            entries: Arc::default(),
            backoff: (Duration::from_millis(500), Duration::from_secs(60)),
        }
    }

    /// A valid certificate for `identity`: the cached one, or the result of
    /// the first request (concurrent callers share one request). From the
    /// first call on, the identity is renewed in the background until
    /// [`CertificateManager::forget`].
    pub async fn fetch(&self, identity: &Identity) -> Result<Arc<WorkloadCertificate>, FetchError> {
        let mut state = self.track(identity);
        let result = state
            .wait_for(|s| {
                s.current
                    .as_ref()
                    .is_some_and(|c| c.is_valid_at(SystemTime::now()))
                    || s.attempts > 0
            })
            .await
            .map(|s| s.clone());
        let fail = |reason: String| FetchError {
            identity: identity.clone(),
            reason,
        };
        let state = result.map_err(|_| fail("the certificate was forgotten".into()))?;
        match state.current {
            Some(cert) if cert.is_valid_at(SystemTime::now()) => Ok(cert),
            _ => Err(fail(state.last_error.unwrap_or_else(|| "expired".into()))),
        }
    }

    /// Starts keeping a certificate for `identity` (no-op if already kept).
    fn track(&self, identity: &Identity) -> watch::Receiver<CertState> {
        let mut entries = self.entries.lock().expect("certificates lock");
        if let Some(entry) = entries.get(identity) {
            return entry.state.clone();
        }
        let (tx, rx) = watch::channel(CertState::default());
        let task = tokio::spawn(renew(self.ca.clone(), identity.clone(), tx, self.backoff));
        entries.insert(
            identity.clone(),
            Entry {
                state: rx.clone(),
                task,
            },
        );
        rx
    }

    /// Stops keeping `identity` (its workloads are gone).
    pub fn forget(&self, identity: &Identity) {
        if let Some(entry) = self
            .entries
            .lock()
            .expect("certificates lock")
            .remove(identity)
        {
            entry.task.abort();
        }
    }

    /// The current certificate, without waiting or requesting.
    pub fn current(&self, identity: &Identity) -> Option<Arc<WorkloadCertificate>> {
        let entries = self.entries.lock().expect("certificates lock");
        let state = entries.get(identity)?.state.borrow().clone();
        state.current
    }

    /// Every kept identity and its certificate's state.
    pub fn info(&self) -> Vec<CertificateInfo> {
        let entries = self.entries.lock().expect("certificates lock");
        let mut out: Vec<CertificateInfo> = entries
            .iter()
            .map(|(identity, entry)| {
                let state = entry.state.borrow();
                CertificateInfo {
                    identity: identity.to_string(),
                    serial: state.current.as_ref().map(|c| c.serial.clone()),
                    not_before: state.current.as_ref().map(|c| c.not_before),
                    not_after: state.current.as_ref().map(|c| c.not_after),
                    last_error: state.last_error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Requests, then renews at half-life; on failure keeps the valid
/// certificate and retries with backoff.
async fn renew(
    ca: Arc<CaClient>,
    identity: Identity,
    state: watch::Sender<CertState>,
    backoff: (Duration, Duration),
) {
    let mut delay = backoff.0;
    loop {
        let wait = match ca.sign(&identity).await {
            Ok(cert) => {
                let cert = Arc::new(cert);
                tracing::info!(%identity, serial = %cert.serial, not_after = ?cert.not_after, "workload certificate obtained");
                let refresh = cert.refresh_at();
                state.send_modify(|s| {
                    s.current = Some(cert);
                    s.last_error = None;
                    s.attempts += 1;
                });
                delay = backoff.0;
                refresh
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .max(Duration::from_millis(100))
            }
            Err(err) => {
                let still_valid = state
                    .borrow()
                    .current
                    .as_ref()
                    .is_some_and(|c| c.is_valid_at(SystemTime::now()));
                tracing::warn!(%identity, %err, still_valid, retry_in = ?delay, "certificate request failed");
                state.send_modify(|s| {
                    s.last_error = Some(err.to_string());
                    s.attempts += 1;
                });
                let wait = delay.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                delay = (delay * 2).min(backoff.1);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}
