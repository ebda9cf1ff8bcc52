//! `PeerAuthentication` → DENY `Authorization`s, as istiod does for ambient.
//!
//! A node proxy receives no PeerAuthentication; instead each workload lists
//! the policy that makes its effective mode true:
//! - effective STRICT without port exceptions: the shared
//!   `istio_converted_static_strict` policy (root namespace), which denies
//!   connections without a peer identity;
//! - port-level settings: a policy of its own,
//!   `converted_peer_authentication_<name>`, denying plaintext on exactly the
//!   ports that end up STRICT.
//!
//! The effective mode is the workload-level setting if any, else the
//! namespace's, else the mesh's (root namespace), else PERMISSIVE.

use std::collections::{BTreeMap, BTreeSet};

use weft_proto::istio::security;

use super::MeshConfig;
use crate::{
    objects::{selects, Kind, MtlsMode, Object, PeerAuthentication, Pod},
    source::ConfigSnapshot,
};

/// Name of the shared STRICT policy.
pub const STATIC_STRICT: &str = "istio_converted_static_strict";

pub struct PeerPolicies {
    pub policies: Vec<security::Authorization>,
    /// (namespace, pod name) → policy names ("namespace/name") it must list.
    pub per_workload: BTreeMap<(String, String), Vec<String>>,
}

pub fn translate(snapshot: &ConfigSnapshot, mesh: &MeshConfig) -> PeerPolicies {
    let all: Vec<&PeerAuthentication> = snapshot
        .of_kind(Kind::PeerAuthentication)
        .filter_map(|o| match o {
            Object::PeerAuthentication(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut out = PeerPolicies {
        policies: Vec::new(),
        per_workload: BTreeMap::new(),
    };
    if all.is_empty() {
        return out;
    }
    // Istio: with several candidates at one level, the oldest wins; files
    // have no age, so the first by name wins.
    let mesh_level = all
        .iter()
        .find(|p| p.namespace == mesh.root_namespace && p.selector.is_none());
    let mut static_used = false;
    let mut converted: BTreeSet<String> = BTreeSet::new();
    for object in snapshot.of_kind(Kind::Pod) {
        let Object::Pod(pod) = object else { continue };
        let namespace_level = all.iter().find(|p| {
            p.namespace == pod.namespace
                && p.selector.is_none()
                && p.namespace != mesh.root_namespace
        });
        let workload_level = all.iter().find(|p| {
            p.namespace == pod.namespace
                && p.selector
                    .as_ref()
                    .is_some_and(|sel| selects(sel, &pod.labels))
        });
        let mut base = MtlsMode::Permissive;
        for level in [mesh_level, namespace_level, workload_level]
            .into_iter()
            .flatten()
        {
            if !matches!(level.mode, MtlsMode::Unset) {
                base = level.mode;
            }
        }
        let strict = |mode: MtlsMode| mode == MtlsMode::Strict;
        let key = (pod.namespace.clone(), pod.name.clone());
        match workload_level.filter(|w| !w.port_level.is_empty()) {
            None => {
                if strict(base) {
                    static_used = true;
                    out.per_workload
                        .entry(key)
                        .or_default()
                        .push(format!("{}/{STATIC_STRICT}", mesh.root_namespace));
                }
            }
            Some(pa) => {
                if let Some(policy) = port_level_policy(pa, base, pod) {
                    let name = format!("{}/{}", policy.namespace, policy.name);
                    if converted.insert(name.clone()) {
                        out.policies.push(policy);
                    }
                    out.per_workload.entry(key).or_default().push(name);
                }
            }
        }
    }
    if static_used {
        out.policies.push(security::Authorization {
            name: STATIC_STRICT.into(),
            namespace: mesh.root_namespace.clone(),
            scope: security::Scope::WorkloadSelector as i32,
            action: security::Action::Deny as i32,
            rules: vec![security::Rule {
                clauses: vec![no_identity()],
            }],
            dry_run: false,
        });
    }
    out
}

/// A clause matching connections without a peer identity (plaintext).
fn no_identity() -> security::Clause {
    security::Clause {
        matches: vec![security::Match {
            not_principals: vec![security::StringMatch {
                match_type: Some(security::string_match::MatchType::Presence(())),
            }],
            ..Default::default()
        }],
    }
}

fn port_level_policy(
    pa: &PeerAuthentication,
    base: MtlsMode,
    _pod: &Pod,
) -> Option<security::Authorization> {
    let strict_base = base == MtlsMode::Strict;
    let exceptions: Vec<u32> = pa
        .port_level
        .iter()
        .filter(|(_, mode)| {
            let strict = **mode == MtlsMode::Strict;
            !matches!(mode, MtlsMode::Unset) && strict != strict_base
        })
        .map(|(port, _)| u32::from(*port))
        .collect();
    let port_clause = if strict_base {
        // STRICT except these (PERMISSIVE/DISABLE) ports.
        if exceptions.is_empty() {
            None
        } else {
            Some(security::Match {
                not_destination_ports: exceptions,
                ..Default::default()
            })
        }
    } else if exceptions.is_empty() {
        // Permissive everywhere: nothing to deny.
        return None;
    } else {
        // PERMISSIVE except these STRICT ports.
        Some(security::Match {
            destination_ports: exceptions,
            ..Default::default()
        })
    };
    let mut clauses = vec![no_identity()];
    if let Some(m) = port_clause {
        clauses.push(security::Clause { matches: vec![m] });
    }
    Some(security::Authorization {
        name: format!("converted_peer_authentication_{}", pa.name),
        namespace: pa.namespace.clone(),
        scope: security::Scope::WorkloadSelector as i32,
        action: security::Action::Deny as i32,
        rules: vec![security::Rule { clauses }],
        dry_run: false,
    })
}
