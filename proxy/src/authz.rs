//! L4 authorization with Istio's semantics, evaluated per connection by
//! the destination's proxy.
//!
//! Which policies apply to a workload: every GLOBAL one (mesh-wide, from the
//! root namespace), every NAMESPACE one of its namespace, and the
//! WORKLOAD_SELECTOR ones it lists. The decision:
//! 1. any matching DENY policy denies;
//! 2. otherwise, if any ALLOW policy applies, one of them must match;
//! 3. otherwise the connection is allowed.
//!
//! Dry-run (AUDIT) policies never change the decision; the ones that match
//! are reported. Matching is exact, prefix, suffix or presence on strings
//! and CIDR containment on addresses; nothing a user writes becomes a
//! regular expression.

use std::{net::IpAddr, sync::Arc};

use weft_proto::spiffe::Identity;

use crate::state::{
    policy::{Clause, Match, Rule, StringMatch},
    Authorization, PolicyAction,
};

/// What a node proxy knows about a connection.
#[derive(Clone, Debug)]
pub struct Connection<'a> {
    pub src_ip: IpAddr,
    /// The peer's verified identity; `None` for plaintext.
    pub src_identity: Option<&'a Identity>,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

/// The outcome, with the policies that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow {
        /// `namespace/name` of every matching AUDIT policy.
        audited: Vec<String>,
    },
    Deny {
        reason: DenyReason,
        audited: Vec<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// This DENY policy (`namespace/name`) matched.
    DenyPolicy(String),
    /// ALLOW policies apply (these, `namespace/name`) and none matched.
    NoAllowMatch(Vec<String>),
    /// The destination workload (`namespace/name`) is not known yet, so
    /// neither are the policies that protect it: nothing is allowed.
    UnknownDestination(String),
}

impl DenyReason {
    /// The policy name to report (for metrics and logs).
    pub fn policy(&self) -> String {
        match self {
            DenyReason::DenyPolicy(name) => name.clone(),
            DenyReason::NoAllowMatch(names) => names.join(","),
            DenyReason::UnknownDestination(_) => "(unknown destination)".into(),
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DenyReason::DenyPolicy(name) => write!(f, "denied by policy {name}"),
            DenyReason::NoAllowMatch(names) => {
                write!(
                    f,
                    "no ALLOW policy matched (policies that apply: {})",
                    names.join(", ")
                )
            }
            DenyReason::UnknownDestination(pod) => write!(
                f,
                "the control service has not described destination pod {pod} yet (or not at \
                 an address its namespace holds), so its policies are unknown; denied until it \
                 does (is the pod in the config?)"
            ),
        }
    }
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Decides `connection` against the policies that apply to its destination.
pub fn evaluate(policies: &[Arc<Authorization>], connection: &Connection<'_>) -> Decision {
    let principal = connection.src_identity.map(Identity::principal);
    let attrs = Attrs {
        connection,
        principal: principal.as_deref(),
        namespace: connection.src_identity.map(|i| i.namespace.as_str()),
    };
    let audited: Vec<String> = policies
        .iter()
        .filter(|p| p.dry_run && policy_matches(p, &attrs))
        .map(|p| p.key())
        .collect();
    let enforced = || policies.iter().filter(|p| !p.dry_run);
    if let Some(deny) =
        enforced().find(|p| p.action == PolicyAction::Deny && policy_matches(p, &attrs))
    {
        return Decision::Deny {
            reason: DenyReason::DenyPolicy(deny.key()),
            audited,
        };
    }
    let allows: Vec<&Arc<Authorization>> = enforced()
        .filter(|p| p.action == PolicyAction::Allow)
        .collect();
    if allows.is_empty() || allows.iter().any(|p| policy_matches(p, &attrs)) {
        Decision::Allow { audited }
    } else {
        Decision::Deny {
            reason: DenyReason::NoAllowMatch(allows.iter().map(|p| p.key()).collect()),
            audited,
        }
    }
}

struct Attrs<'a> {
    connection: &'a Connection<'a>,
    principal: Option<&'a str>,
    namespace: Option<&'a str>,
}

fn policy_matches(policy: &Authorization, attrs: &Attrs<'_>) -> bool {
    policy.rules.iter().any(|rule| rule_matches(rule, attrs))
}

fn rule_matches(rule: &Rule, attrs: &Attrs<'_>) -> bool {
    rule.clauses
        .iter()
        .all(|clause| clause_matches(clause, attrs))
}

fn clause_matches(clause: &Clause, attrs: &Attrs<'_>) -> bool {
    clause.matches.is_empty() || clause.matches.iter().any(|m| match_matches(m, attrs))
}

/// A positive field: unset, or the value is present and matches one entry.
fn any_of(patterns: &[StringMatch], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
}

/// A negative field: unset, or the value (if any) matches no entry.
fn none_of(patterns: &[StringMatch], value: Option<&str>) -> bool {
    patterns.is_empty() || !value.is_some_and(|v| patterns.iter().any(|p| p.matches(v)))
}

fn match_matches(m: &Match, attrs: &Attrs<'_>) -> bool {
    let c = attrs.connection;
    any_of(&m.namespaces, attrs.namespace)
        && none_of(&m.not_namespaces, attrs.namespace)
        && any_of(&m.principals, attrs.principal)
        && none_of(&m.not_principals, attrs.principal)
        && (m.source_ips.is_empty() || m.source_ips.iter().any(|n| n.contains(&c.src_ip)))
        && !m.not_source_ips.iter().any(|n| n.contains(&c.src_ip))
        && (m.destination_ips.is_empty() || m.destination_ips.iter().any(|n| n.contains(&c.dst_ip)))
        && !m.not_destination_ips.iter().any(|n| n.contains(&c.dst_ip))
        && (m.destination_ports.is_empty() || m.destination_ports.contains(&c.dst_port))
        && !m.not_destination_ports.contains(&c.dst_port)
}
