//! L4 authorization policies, converted once from
//! `istio.security.Authorization`. (Evaluation lives with the proxies that
//! enforce them.)

use ipnet::IpNet;
use serde::Serialize;
use weft_proto::istio::security as pb;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PolicyScope {
    /// Every workload in the mesh.
    Global,
    /// Every workload in the policy's namespace.
    Namespace,
    /// Workloads that list the policy.
    WorkloadSelector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// A string matcher: exact, prefix, suffix, or "any non-empty value".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Presence,
}

impl StringMatch {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(s) => value.starts_with(s.as_str()),
            StringMatch::Suffix(s) => value.ends_with(s.as_str()),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

/// All set fields must match; values within a field are alternatives;
/// `not_` fields must all miss.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<IpNet>,
    pub not_source_ips: Vec<IpNet>,
    pub destination_ips: Vec<IpNet>,
    pub not_destination_ips: Vec<IpNet>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

/// Any of its matches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Clause {
    pub matches: Vec<Match>,
}

/// All of its clauses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub clauses: Vec<Clause>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: PolicyScope,
    pub action: PolicyAction,
    /// Any of its rules.
    pub rules: Vec<Rule>,
    /// Evaluated and recorded, never enforced (AUDIT).
    pub dry_run: bool,
}

impl Authorization {
    /// `namespace/name`, the policy's resource name.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("authorization {name}: {reason}")]
pub struct PolicyError {
    pub name: String,
    pub reason: String,
}

fn string_matches(list: Vec<pb::StringMatch>) -> Result<Vec<StringMatch>, String> {
    use pb::string_match::MatchType;
    list.into_iter()
        .map(|m| match m.match_type {
            Some(MatchType::Exact(s)) => Ok(StringMatch::Exact(s)),
            Some(MatchType::Prefix(s)) => Ok(StringMatch::Prefix(s)),
            Some(MatchType::Suffix(s)) => Ok(StringMatch::Suffix(s)),
            Some(MatchType::Presence(())) => Ok(StringMatch::Presence),
            None => Err("a string match has no match type".to_owned()),
        })
        .collect()
}

fn nets(list: Vec<pb::Address>) -> Result<Vec<IpNet>, String> {
    list.into_iter()
        .map(|a| {
            let ip = super::workload::ip_from_bytes(&a.address)?;
            let len = u8::try_from(a.length)
                .map_err(|_| format!("prefix length {} is too long", a.length))?;
            IpNet::new(ip, len).map_err(|_| format!("{ip}/{len} is not a valid CIDR block"))
        })
        .collect()
}

fn port_list(list: Vec<u32>) -> Result<Vec<u16>, String> {
    list.into_iter()
        .map(|p| u16::try_from(p).map_err(|_| format!("{p} is not a port")))
        .collect()
}

impl TryFrom<pb::Match> for Match {
    type Error = String;

    fn try_from(m: pb::Match) -> Result<Self, String> {
        Ok(Self {
            namespaces: string_matches(m.namespaces)?,
            not_namespaces: string_matches(m.not_namespaces)?,
            principals: string_matches(m.principals)?,
            not_principals: string_matches(m.not_principals)?,
            source_ips: nets(m.source_ips)?,
            not_source_ips: nets(m.not_source_ips)?,
            destination_ips: nets(m.destination_ips)?,
            not_destination_ips: nets(m.not_destination_ips)?,
            destination_ports: port_list(m.destination_ports)?,
            not_destination_ports: port_list(m.not_destination_ports)?,
        })
    }
}

impl TryFrom<pb::Authorization> for Authorization {
    type Error = PolicyError;

    fn try_from(a: pb::Authorization) -> Result<Self, Self::Error> {
        let name = format!("{}/{}", a.namespace, a.name);
        let fail = |reason: String| PolicyError {
            name: name.clone(),
            reason,
        };
        if a.name.is_empty() {
            return Err(fail("the policy has no name".into()));
        }
        let scope = match pb::Scope::try_from(a.scope) {
            Ok(pb::Scope::Global) => PolicyScope::Global,
            Ok(pb::Scope::Namespace) => PolicyScope::Namespace,
            Ok(pb::Scope::WorkloadSelector) => PolicyScope::WorkloadSelector,
            Err(_) => return Err(fail(format!("unknown scope {}", a.scope))),
        };
        // An action this proxy does not know must not be guessed at: an
        // unknown action is refused rather than read as ALLOW.
        let action = match pb::Action::try_from(a.action) {
            Ok(pb::Action::Allow) => PolicyAction::Allow,
            Ok(pb::Action::Deny) => PolicyAction::Deny,
            Err(_) => return Err(fail(format!("unknown action {}", a.action))),
        };
        let rules = a
            .rules
            .into_iter()
            .map(|rule| {
                Ok(Rule {
                    clauses: rule
                        .clauses
                        .into_iter()
                        .map(|clause| {
                            Ok(Clause {
                                matches: clause
                                    .matches
                                    .into_iter()
                                    .map(Match::try_from)
                                    .collect::<Result<_, String>>()?,
                            })
                        })
                        .collect::<Result<_, String>>()?,
                })
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(&fail)?;
        Ok(Self {
            name: a.name,
            namespace: a.namespace,
            scope,
            action,
            rules,
            dry_run: a.dry_run,
        })
    }
}
