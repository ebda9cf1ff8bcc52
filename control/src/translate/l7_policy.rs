//! AuthorizationPolicies with `targetRefs` → `weft.l7.v1.Policy`, which
//! waypoints enforce (node proxies never see them).
//!
//! As in Istio: a policy targeting a waypoint Gateway applies to every
//! request through it, one targeting a Service to the requests addressed to
//! it (at the Service's waypoint). A target that is not a waypoint, a
//! Service without a waypoint, or another kind is enforced nowhere, and is
//! reported. CUSTOM becomes DENY (no external authorizer is called) and
//! AUDIT a dry run.

use weft_proto::weft::l7::v1 as l7;

use super::{services::Services, waypoints::Waypoints};
use crate::{
    objects::{
        AuthorizationPolicy, AuthzAction, AuthzRule, Condition, Kind, Object, Operation,
        PolicyTarget, Source, StringPattern,
    },
    source::ConfigSnapshot,
};

fn string_match(p: &StringPattern) -> l7::StringMatch {
    use l7::string_match::Kind as K;
    l7::StringMatch {
        kind: Some(match p {
            StringPattern::Exact(s) => K::Exact(s.clone()),
            StringPattern::Prefix(s) => K::Prefix(s.clone()),
            StringPattern::Suffix(s) => K::Suffix(s.clone()),
            StringPattern::Presence => K::Presence(true),
        }),
    }
}

fn strings(patterns: &[StringPattern]) -> Vec<l7::StringMatch> {
    patterns.iter().map(string_match).collect()
}

/// Principals without the `spiffe://` scheme, as Istio writes them.
fn principals(patterns: &[StringPattern]) -> Vec<l7::StringMatch> {
    let strip = |s: &str| s.strip_prefix("spiffe://").unwrap_or(s).to_owned();
    patterns
        .iter()
        .map(|p| match p {
            StringPattern::Exact(s) => StringPattern::Exact(strip(s)),
            StringPattern::Prefix(s) => StringPattern::Prefix(strip(s)),
            other => other.clone(),
        })
        .map(|p| string_match(&p))
        .collect()
}

fn cidrs(nets: &[ipnet::IpNet]) -> Vec<String> {
    nets.iter().map(ToString::to_string).collect()
}

fn source(s: &Source) -> l7::Source {
    l7::Source {
        principals: principals(&s.principals),
        not_principals: principals(&s.not_principals),
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        ip_blocks: cidrs(&s.ip_blocks),
        not_ip_blocks: cidrs(&s.not_ip_blocks),
        remote_ip_blocks: cidrs(&s.remote_ip_blocks),
        not_remote_ip_blocks: cidrs(&s.not_remote_ip_blocks),
        request_principals: s.request_principals,
    }
}

fn operation(o: &Operation) -> l7::Operation {
    l7::Operation {
        hosts: strings(&o.hosts),
        not_hosts: strings(&o.not_hosts),
        methods: strings(&o.methods),
        not_methods: strings(&o.not_methods),
        paths: strings(&o.paths),
        not_paths: strings(&o.not_paths),
        ports: o.ports.iter().map(|p| u32::from(*p)).collect(),
        not_ports: o.not_ports.iter().map(|p| u32::from(*p)).collect(),
    }
}

fn condition(c: &Condition) -> l7::Condition {
    let text = |v: &[ipnet::IpNet]| -> Vec<l7::StringMatch> {
        v.iter()
            .map(|n| string_match(&StringPattern::Exact(n.to_string())))
            .collect()
    };
    let ports = |v: &[u16]| -> Vec<l7::StringMatch> {
        v.iter()
            .map(|p| string_match(&StringPattern::Exact(p.to_string())))
            .collect()
    };
    let (key, values, not_values) = match c {
        Condition::SourceIp { values, not_values } => {
            ("source.ip".into(), text(values), text(not_values))
        }
        Condition::DestinationIp { values, not_values } => {
            ("destination.ip".into(), text(values), text(not_values))
        }
        Condition::SourceNamespace { values, not_values } => (
            "source.namespace".into(),
            strings(values),
            strings(not_values),
        ),
        Condition::SourcePrincipal { values, not_values } => (
            "source.principal".into(),
            principals(values),
            principals(not_values),
        ),
        Condition::DestinationPort { values, not_values } => {
            ("destination.port".into(), ports(values), ports(not_values))
        }
        Condition::L7 {
            key,
            values,
            not_values,
        } => (key.clone(), strings(values), strings(not_values)),
    };
    l7::Condition {
        key,
        values,
        not_values,
    }
}

fn rule(r: &AuthzRule) -> l7::Rule {
    l7::Rule {
        from: r.from.iter().map(source).collect(),
        to: r.to.iter().map(operation).collect(),
        when: r.when.iter().map(condition).collect(),
    }
}

pub fn translate(
    snapshot: &ConfigSnapshot,
    services: &Services,
    waypoints: &Waypoints<'_>,
    warnings: &mut Vec<String>,
) -> Vec<l7::Policy> {
    let mut out = Vec::new();
    for object in snapshot.of_kind(Kind::AuthorizationPolicy) {
        let Object::AuthorizationPolicy(policy) = object else {
            continue;
        };
        if policy.targets.is_empty() {
            continue;
        }
        if let Some(compiled) = translate_policy(policy, services, waypoints, warnings) {
            out.push(compiled);
        }
    }
    out
}

fn translate_policy(
    policy: &AuthorizationPolicy,
    services: &Services,
    waypoints: &Waypoints<'_>,
    warnings: &mut Vec<String>,
) -> Option<l7::Policy> {
    let id = format!("AuthorizationPolicy {}/{}", policy.namespace, policy.name);
    let mut compiled = l7::Policy {
        name: policy.name.clone(),
        namespace: policy.namespace.clone(),
        ..Default::default()
    };
    for target in &policy.targets {
        match target {
            PolicyTarget::Gateway { name } => match waypoints.get(&policy.namespace, name) {
                Some(_) => compiled
                    .waypoints
                    .push(format!("{}/{name}", policy.namespace)),
                None => warnings.push(format!(
                    "{id}: targets Gateway {}/{name}, which is not a waypoint; not enforced there",
                    policy.namespace
                )),
            },
            PolicyTarget::Service { name } => {
                let found = services
                    .services
                    .iter()
                    .find(|s| s.source.namespace == policy.namespace && s.source.name == *name);
                match found {
                    Some(s) if s.service.waypoint.is_some() => compiled
                        .services
                        .push(format!("{}/{}", s.service.namespace, s.service.hostname)),
                    Some(_) => warnings.push(format!(
                        "{id}: targets Service {}/{name}, which has no waypoint to enforce it; \
                         label it istio.io/use-waypoint",
                        policy.namespace
                    )),
                    None => warnings.push(format!(
                        "{id}: targets Service {}/{name}, which does not exist",
                        policy.namespace
                    )),
                }
            }
            PolicyTarget::Other(what) => warnings.push(format!(
                "{id}: targets {what}; only a waypoint Gateway or a Service can enforce it"
            )),
        }
    }
    if compiled.waypoints.is_empty() && compiled.services.is_empty() {
        return None;
    }
    let (action, dry_run) = match policy.action {
        AuthzAction::Allow => (l7::policy::Action::Allow, false),
        AuthzAction::Deny => (l7::policy::Action::Deny, false),
        AuthzAction::Audit => (l7::policy::Action::Allow, true),
        AuthzAction::Custom => {
            warnings.push(format!(
                "{id}: CUSTOM needs an external authorizer that waypoints do not call; \
                 requests it matches are denied (fail closed)"
            ));
            (l7::policy::Action::Deny, false)
        }
    };
    compiled.action = action as i32;
    compiled.dry_run = dry_run;
    compiled.rules = policy.rules.iter().map(rule).collect();
    Some(compiled)
}
