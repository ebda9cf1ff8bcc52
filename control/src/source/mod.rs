//! Where the control service's view of the mesh comes from.
//!
//! A source produces a [`ConfigSnapshot`]: every object it currently holds,
//! plus the documents it had to reject and why. [`local`] reads a directory of
//! Kubernetes-style YAML and watches it; a Kubernetes source will produce the
//! same snapshots from the API server.

pub mod local;
pub mod yaml;

use std::collections::BTreeMap;

use crate::objects::{Object, ObjectKey};
pub use yaml::DocumentError;

/// Everything a source holds at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigSnapshot {
    pub objects: BTreeMap<ObjectKey, Object>,
    /// Rejected documents (their last good version, if any, is in `objects`).
    pub errors: Vec<DocumentError>,
}

impl ConfigSnapshot {
    /// The objects of one kind, in key order.
    pub fn of_kind(&self, kind: crate::objects::Kind) -> impl Iterator<Item = &Object> {
        self.objects
            .iter()
            .filter(move |(key, _)| key.kind == kind)
            .map(|(_, object)| object)
    }
}
