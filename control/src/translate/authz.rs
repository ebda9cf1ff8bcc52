//! `AuthorizationPolicy` → `istio.security.Authorization` for node proxies.
//!
//! Structure: a policy matches when any rule matches; a rule is the AND of
//! clauses; a clause is the OR of matches. So `from` entries become one
//! clause (any source), `to` entries another (any operation), and each `when`
//! condition a clause of its own.
//!
//! What a node proxy cannot enforce is handled so that the result is never
//! more permissive than the policy as written (fail closed), and reported:
//! - an ALLOW rule that needs L7 attributes is dropped (it can never match
//!   at L4, so it allows nothing);
//! - a DENY rule's L7 attributes are dropped (it denies more, not less);
//! - policies with `targetRef(s)` belong to waypoints and are skipped here;
//! - CUSTOM (an external authorizer ztunnel does not call) becomes DENY.
//!
//! AUDIT policies are sent with `dry_run`: evaluated and recorded in the
//! access log when they match, never enforced.

use ipnet::IpNet;
use weft_proto::istio::security;

use super::MeshConfig;
use crate::{
    objects::{
        AuthorizationPolicy, AuthzAction, AuthzRule, Condition, Kind, Labels, Object, Operation,
        Source, StringPattern,
    },
    source::ConfigSnapshot,
};

pub struct Policies {
    pub policies: Vec<security::Authorization>,
    /// Selector-scoped policies: (namespace, name, selector), for listing on
    /// the workloads they select.
    pub selectors: Vec<(String, String, Labels)>,
}

pub fn translate(
    snapshot: &ConfigSnapshot,
    mesh: &MeshConfig,
    warnings: &mut Vec<String>,
) -> Policies {
    let mut out = Policies {
        policies: Vec::new(),
        selectors: Vec::new(),
    };
    for object in snapshot.of_kind(Kind::AuthorizationPolicy) {
        let Object::AuthorizationPolicy(policy) = object else {
            continue;
        };
        if let Some(p) = translate_policy(policy, mesh, warnings) {
            if let Some(selector) = &policy.selector {
                out.selectors.push((
                    policy.namespace.clone(),
                    policy.name.clone(),
                    selector.clone(),
                ));
            }
            out.policies.push(p);
        }
    }
    out
}

fn translate_policy(
    policy: &AuthorizationPolicy,
    mesh: &MeshConfig,
    warnings: &mut Vec<String>,
) -> Option<security::Authorization> {
    let id = format!("AuthorizationPolicy {}/{}", policy.namespace, policy.name);
    if !policy.target_refs.is_empty() {
        tracing::debug!(policy = %id, "targets {:?}; enforced by waypoints, not ztunnel", policy.target_refs);
        return None;
    }
    let (action, dry_run) = match policy.action {
        AuthzAction::Allow => (security::Action::Allow, false),
        AuthzAction::Deny => (security::Action::Deny, false),
        // Recorded when it matches, never enforced.
        AuthzAction::Audit => (security::Action::Allow, true),
        AuthzAction::Custom => {
            warnings.push(format!(
                "{id}: CUSTOM needs an external authorizer that ztunnel does not call; \
                 connections it matches are denied (fail closed)"
            ));
            (security::Action::Deny, false)
        }
    };
    let scope = if policy.selector.is_some() {
        security::Scope::WorkloadSelector
    } else if policy.namespace == mesh.root_namespace {
        security::Scope::Global
    } else {
        security::Scope::Namespace
    };
    let mut rules = Vec::new();
    for (index, rule) in policy.rules.iter().enumerate() {
        let l7 = rule.l7_attributes();
        if !l7.is_empty() {
            match action {
                security::Action::Allow => {
                    warnings.push(format!(
                        "{id}: rules[{index}] uses {} which ztunnel cannot see without a waypoint; \
                         the rule allows nothing (deploy a waypoint to enforce it)",
                        l7.join(", ")
                    ));
                    continue;
                }
                security::Action::Deny => warnings.push(format!(
                    "{id}: rules[{index}] uses {} which ztunnel cannot see without a waypoint; \
                     it is enforced on its L4 attributes alone, denying more",
                    l7.join(", ")
                )),
            }
        }
        rules.push(translate_rule(rule));
    }
    Some(security::Authorization {
        name: policy.name.clone(),
        namespace: policy.namespace.clone(),
        scope: scope as i32,
        action: action as i32,
        rules,
        dry_run,
    })
}

fn translate_rule(rule: &AuthzRule) -> security::Rule {
    let mut clauses = Vec::new();
    let sources: Vec<security::Match> = rule.from.iter().map(source_match).collect();
    if !sources.is_empty() {
        clauses.push(security::Clause { matches: sources });
    }
    let operations: Vec<security::Match> = rule.to.iter().map(operation_match).collect();
    if !operations.is_empty() {
        clauses.push(security::Clause {
            matches: operations,
        });
    }
    for condition in &rule.when {
        if let Some(m) = condition_match(condition) {
            clauses.push(security::Clause { matches: vec![m] });
        }
    }
    security::Rule { clauses }
}

fn source_match(s: &Source) -> security::Match {
    security::Match {
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        principals: principals(&s.principals),
        not_principals: principals(&s.not_principals),
        source_ips: cidrs(&s.ip_blocks),
        not_source_ips: cidrs(&s.not_ip_blocks),
        ..Default::default()
    }
}

fn operation_match(o: &Operation) -> security::Match {
    security::Match {
        destination_ports: o.ports.iter().copied().map(u32::from).collect(),
        not_destination_ports: o.not_ports.iter().copied().map(u32::from).collect(),
        ..Default::default()
    }
}

fn condition_match(c: &Condition) -> Option<security::Match> {
    let m = match c {
        Condition::SourceIp { values, not_values } => security::Match {
            source_ips: cidrs(values),
            not_source_ips: cidrs(not_values),
            ..Default::default()
        },
        Condition::SourceNamespace { values, not_values } => security::Match {
            namespaces: strings(values),
            not_namespaces: strings(not_values),
            ..Default::default()
        },
        Condition::SourcePrincipal { values, not_values } => security::Match {
            principals: principals(values),
            not_principals: principals(not_values),
            ..Default::default()
        },
        Condition::DestinationIp { values, not_values } => security::Match {
            destination_ips: cidrs(values),
            not_destination_ips: cidrs(not_values),
            ..Default::default()
        },
        Condition::DestinationPort { values, not_values } => security::Match {
            destination_ports: values.iter().copied().map(u32::from).collect(),
            not_destination_ports: not_values.iter().copied().map(u32::from).collect(),
            ..Default::default()
        },
        Condition::L7 { .. } => return None,
    };
    Some(m)
}

/// Principals are matched without the `spiffe://` scheme, as Istio writes
/// them (`cluster.local/ns/NS/sa/SA`); a policy that spells the scheme out
/// means the same identity.
fn principals(patterns: &[StringPattern]) -> Vec<security::StringMatch> {
    let strip = |s: &str| s.strip_prefix("spiffe://").unwrap_or(s).to_owned();
    let normalized: Vec<StringPattern> = patterns
        .iter()
        .map(|p| match p {
            StringPattern::Exact(s) => StringPattern::Exact(strip(s)),
            StringPattern::Prefix(s) => StringPattern::Prefix(strip(s)),
            other => other.clone(),
        })
        .collect();
    strings(&normalized)
}

fn strings(patterns: &[StringPattern]) -> Vec<security::StringMatch> {
    use security::string_match::MatchType;
    patterns
        .iter()
        .map(|p| security::StringMatch {
            match_type: Some(match p {
                StringPattern::Exact(s) => MatchType::Exact(s.clone()),
                StringPattern::Prefix(s) => MatchType::Prefix(s.clone()),
                StringPattern::Suffix(s) => MatchType::Suffix(s.clone()),
                StringPattern::Presence => MatchType::Presence(()),
            }),
        })
        .collect()
}

fn cidrs(nets: &[IpNet]) -> Vec<security::Address> {
    nets.iter()
        .map(|net| security::Address {
            address: super::ip_bytes(net.network()),
            length: u32::from(net.prefix_len()),
        })
        .collect()
}
