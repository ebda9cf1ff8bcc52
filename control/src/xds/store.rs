//! Versioned resources, per type URL.
//!
//! A resource's version is a digest of its encoding, so it is the same for
//! the same content in any process: after a control-service restart, a
//! reconnecting proxy that reports its versions receives only what really
//! changed.

use std::{collections::BTreeMap, sync::Arc};

use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use weft_proto::{
    to_any, ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, BACKEND_POLICY_TYPE_URL, L7_POLICY_TYPE_URL,
    ROUTES_TYPE_URL,
};

use crate::translate::Resources;

/// One resource as served.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub version: String,
    pub resource: prost_types::Any,
}

/// Everything served, at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct XdsSnapshot {
    /// Bumped on every change; for logs and `system_version_info`.
    pub generation: u64,
    /// type URL → resource name → resource.
    pub types: BTreeMap<String, BTreeMap<String, Arc<Versioned>>>,
    /// The translated resources this snapshot was built from.
    pub resources: Arc<Resources>,
}

impl XdsSnapshot {
    pub fn of_type(&self, type_url: &str) -> Option<&BTreeMap<String, Arc<Versioned>>> {
        self.types.get(type_url)
    }
}

/// Holds the current snapshot and tells every connection when it changes.
#[derive(Debug)]
pub struct XdsStore {
    tx: watch::Sender<Arc<XdsSnapshot>>,
}

impl Default for XdsStore {
    fn default() -> Self {
        let mut empty = XdsSnapshot::default();
        for type_url in [
            ADDRESS_TYPE_URL,
            AUTHORIZATION_TYPE_URL,
            ROUTES_TYPE_URL,
            L7_POLICY_TYPE_URL,
            BACKEND_POLICY_TYPE_URL,
        ] {
            empty.types.insert(type_url.to_owned(), BTreeMap::new());
        }
        Self {
            tx: watch::channel(Arc::new(empty)).0,
        }
    }
}

fn versioned<M: Message>(type_url: &str, message: &M) -> Arc<Versioned> {
    let resource = to_any(type_url, message);
    let digest = Sha256::digest(&resource.value);
    Arc::new(Versioned {
        version: hex::encode(&digest[..8]),
        resource,
    })
}

impl XdsStore {
    /// Replaces the served resources. Connections are woken only if some
    /// resource's version actually changed.
    pub fn update(&self, resources: Resources) {
        let mut types = BTreeMap::new();
        types.insert(
            ADDRESS_TYPE_URL.to_owned(),
            resources
                .addresses
                .iter()
                .map(|(name, r)| (name.clone(), versioned(ADDRESS_TYPE_URL, r)))
                .collect(),
        );
        types.insert(
            AUTHORIZATION_TYPE_URL.to_owned(),
            resources
                .authorizations
                .iter()
                .map(|(name, r)| (name.clone(), versioned(AUTHORIZATION_TYPE_URL, r)))
                .collect(),
        );
        types.insert(
            ROUTES_TYPE_URL.to_owned(),
            resources
                .routes
                .iter()
                .map(|(name, r)| (name.clone(), versioned(ROUTES_TYPE_URL, r)))
                .collect(),
        );
        types.insert(
            L7_POLICY_TYPE_URL.to_owned(),
            resources
                .l7_policies
                .iter()
                .map(|(name, r)| (name.clone(), versioned(L7_POLICY_TYPE_URL, r)))
                .collect(),
        );
        types.insert(
            BACKEND_POLICY_TYPE_URL.to_owned(),
            resources
                .backend_policies
                .iter()
                .map(|(name, r)| (name.clone(), versioned(BACKEND_POLICY_TYPE_URL, r)))
                .collect(),
        );
        let resources = Arc::new(resources);
        self.tx.send_if_modified(|current| {
            if current.types == types {
                // Same resources; keep the newest translation (warnings).
                *current = Arc::new(XdsSnapshot {
                    generation: current.generation,
                    types: current.types.clone(),
                    resources,
                });
                return false;
            }
            *current = Arc::new(XdsSnapshot {
                generation: current.generation + 1,
                types,
                resources,
            });
            true
        });
    }

    pub fn current(&self) -> Arc<XdsSnapshot> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<XdsSnapshot>> {
        self.tx.subscribe()
    }
}
