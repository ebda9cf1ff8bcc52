//! Applying received resources to [`ProxyState`], one type URL each.
//!
//! A handler decodes and converts every resource of a response on its own:
//! the good ones are applied, each bad one is reported (name and reason) for
//! the NACK and leaves the previous copy of that resource in place.

use std::{collections::BTreeMap, sync::Arc};

use prost::Message;
use weft_proto::{
    istio::{security, workload},
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL,
};

use crate::state::{AddressResource, Authorization, ProxyState};

/// A resource as received: name, version, payload.
pub struct Received {
    pub name: String,
    pub version: String,
    pub resource: Option<prost_types::Any>,
}

/// Applies one type of resource.
pub trait ResourceHandler: Send + Sync {
    fn type_url(&self) -> &'static str;
    /// Applies updates and removals; returns (name, reason) for each update
    /// that was rejected.
    fn apply(&self, updates: Vec<Received>, removals: &[String]) -> Vec<(String, String)>;
    /// The versions held, reported when a stream (re)starts.
    fn versions(&self) -> BTreeMap<String, String>;
}

/// Versions by name, every handler's bookkeeping (the waypoint's own
/// handlers use it too).
#[derive(Default)]
pub struct Versions(std::sync::Mutex<BTreeMap<String, String>>);

impl Versions {
    pub fn set(&self, name: &str, version: &str) {
        self.0
            .lock()
            .expect("versions lock")
            .insert(name.to_owned(), version.to_owned());
    }
    pub fn remove(&self, name: &str) {
        self.0.lock().expect("versions lock").remove(name);
    }
    pub fn all(&self) -> BTreeMap<String, String> {
        self.0.lock().expect("versions lock").clone()
    }
}

/// Decodes a received resource of `type_url`.
pub fn decode<M: Message + Default>(type_url: &str, r: &Received) -> Result<M, String> {
    let any = r.resource.as_ref().ok_or("the resource has no payload")?;
    if any.type_url != type_url {
        return Err(format!("payload type {} is not {type_url}", any.type_url));
    }
    M::decode(any.value.as_slice()).map_err(|e| format!("undecodable: {e}"))
}

/// `istio.workload.Address`.
pub struct AddressHandler {
    state: Arc<ProxyState>,
    versions: Versions,
}

impl AddressHandler {
    pub fn new(state: Arc<ProxyState>) -> Self {
        Self {
            state,
            versions: Versions::default(),
        }
    }
}

impl ResourceHandler for AddressHandler {
    fn type_url(&self) -> &'static str {
        ADDRESS_TYPE_URL
    }

    fn apply(&self, updates: Vec<Received>, removals: &[String]) -> Vec<(String, String)> {
        let mut rejected = Vec::new();
        for r in updates {
            let converted = decode::<workload::Address>(ADDRESS_TYPE_URL, &r)
                .and_then(|a| AddressResource::try_from(a).map_err(|e| e.to_string()));
            match converted {
                Ok(address) => {
                    self.state.upsert_address(&r.name, address);
                    self.versions.set(&r.name, &r.version);
                }
                Err(reason) => rejected.push((r.name, reason)),
            }
        }
        for name in removals {
            self.state.remove_address(name);
            self.versions.remove(name);
        }
        rejected
    }

    fn versions(&self) -> BTreeMap<String, String> {
        self.versions.all()
    }
}

/// `istio.security.Authorization`.
pub struct AuthorizationHandler {
    state: Arc<ProxyState>,
    versions: Versions,
}

impl AuthorizationHandler {
    pub fn new(state: Arc<ProxyState>) -> Self {
        Self {
            state,
            versions: Versions::default(),
        }
    }
}

impl ResourceHandler for AuthorizationHandler {
    fn type_url(&self) -> &'static str {
        AUTHORIZATION_TYPE_URL
    }

    fn apply(&self, updates: Vec<Received>, removals: &[String]) -> Vec<(String, String)> {
        let mut rejected = Vec::new();
        for r in updates {
            let converted = decode::<security::Authorization>(AUTHORIZATION_TYPE_URL, &r)
                .and_then(|a| Authorization::try_from(a).map_err(|e| e.to_string()));
            match converted {
                Ok(policy) => {
                    self.state.upsert_policy(&r.name, policy);
                    self.versions.set(&r.name, &r.version);
                }
                Err(reason) => rejected.push((r.name, reason)),
            }
        }
        for name in removals {
            self.state.remove_policy(name);
            self.versions.remove(name);
        }
        rejected
    }

    fn versions(&self) -> BTreeMap<String, String> {
        self.versions.all()
    }
}
