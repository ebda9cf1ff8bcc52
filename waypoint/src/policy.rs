//! L7 authorization at the waypoint: `weft.l7.v1.Policy` resources
//! converted once, held in a table the xDS client keeps current, and
//! evaluated for every request with Istio's semantics — a matching DENY
//! denies; otherwise, if ALLOW policies apply, one must match; AUDIT
//! (dry-run) policies are recorded, never enforced. What a Weft proxy
//! cannot check (JWT request principals, `request.auth.*`) never makes an
//! ALLOW match and always makes a DENY match: it fails closed.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, RwLock},
};

use http::HeaderMap;
use ipnet::IpNet;
use serde::Serialize;
use weft_proto::{weft::l7::v1 as pb, L7_POLICY_TYPE_URL};
use weft_proxy::xds::handlers::{decode, Received, ResourceHandler, Versions};

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

    /// Case-insensitive (hosts).
    fn matches_ignoring_case(&self, value: &str) -> bool {
        let lower = |s: &str| s.to_ascii_lowercase();
        match self {
            StringMatch::Exact(s) => lower(value) == lower(s),
            StringMatch::Prefix(s) => lower(value).starts_with(&lower(s)),
            StringMatch::Suffix(s) => lower(value).ends_with(&lower(s)),
            StringMatch::Presence => !value.is_empty(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Source {
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
    pub remote_ip_blocks: Vec<IpNet>,
    pub not_remote_ip_blocks: Vec<IpNet>,
    pub request_principals: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Operation {
    pub hosts: Vec<StringMatch>,
    pub not_hosts: Vec<StringMatch>,
    pub methods: Vec<StringMatch>,
    pub not_methods: Vec<StringMatch>,
    pub paths: Vec<StringMatch>,
    pub not_paths: Vec<StringMatch>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
}

#[derive(Clone, Debug, Serialize)]
pub enum Condition {
    /// `request.headers[name]`, name lower case.
    Header {
        name: String,
        values: Vec<StringMatch>,
        not_values: Vec<StringMatch>,
    },
    /// `source.ip`, `remote.ip`, `destination.ip`.
    Ip {
        destination: bool,
        values: Vec<IpNet>,
        not_values: Vec<IpNet>,
    },
    /// `source.namespace`, `source.principal`, `destination.port`.
    Text {
        key: String,
        values: Vec<StringMatch>,
        not_values: Vec<StringMatch>,
    },
    /// A key no Weft proxy evaluates.
    Unsupported { key: String },
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Rule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    /// `namespace/name`.
    pub key: String,
    pub action: Action,
    pub dry_run: bool,
    pub waypoints: Vec<String>,
    pub services: Vec<String>,
    pub rules: Vec<Rule>,
}

fn string_match(m: pb::StringMatch) -> Result<StringMatch, String> {
    use pb::string_match::Kind;
    Ok(match m.kind.ok_or("a string match without a kind")? {
        Kind::Exact(s) => StringMatch::Exact(s),
        Kind::Prefix(s) => StringMatch::Prefix(s),
        Kind::Suffix(s) => StringMatch::Suffix(s),
        Kind::Presence(_) => StringMatch::Presence,
    })
}

fn strings(list: Vec<pb::StringMatch>) -> Result<Vec<StringMatch>, String> {
    list.into_iter().map(string_match).collect()
}

fn nets(list: Vec<String>) -> Result<Vec<IpNet>, String> {
    list.into_iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{s:?} is not a CIDR block"))
        })
        .collect()
}

fn ports(list: Vec<u32>) -> Result<Vec<u16>, String> {
    list.into_iter()
        .map(|p| u16::try_from(p).map_err(|_| format!("{p} is not a port")))
        .collect()
}

fn condition(c: pb::Condition) -> Result<Condition, String> {
    let key = c.key;
    if let Some(name) = key
        .strip_prefix("request.headers[")
        .and_then(|rest| rest.strip_suffix(']'))
    {
        return Ok(Condition::Header {
            name: name.to_ascii_lowercase(),
            values: strings(c.values)?,
            not_values: strings(c.not_values)?,
        });
    }
    let exact_texts = |list: Vec<pb::StringMatch>| -> Result<Vec<String>, String> {
        strings(list)?
            .into_iter()
            .map(|m| match m {
                StringMatch::Exact(s) => Ok(s),
                other => Err(format!("{other:?} is not an address")),
            })
            .collect()
    };
    match key.as_str() {
        "source.ip" | "remote.ip" | "destination.ip" => Ok(Condition::Ip {
            destination: key == "destination.ip",
            values: nets(exact_texts(c.values)?)?,
            not_values: nets(exact_texts(c.not_values)?)?,
        }),
        "source.namespace" | "source.principal" | "destination.port" => Ok(Condition::Text {
            key,
            values: strings(c.values)?,
            not_values: strings(c.not_values)?,
        }),
        _ => Ok(Condition::Unsupported { key }),
    }
}

impl TryFrom<pb::Policy> for Policy {
    type Error = String;
    fn try_from(p: pb::Policy) -> Result<Self, String> {
        let action = match pb::policy::Action::try_from(p.action) {
            Ok(pb::policy::Action::Allow) => Action::Allow,
            Ok(pb::policy::Action::Deny) => Action::Deny,
            Err(_) => return Err(format!("unknown action {}", p.action)),
        };
        let rules = p
            .rules
            .into_iter()
            .map(|r| -> Result<Rule, String> {
                Ok(Rule {
                    from: r
                        .from
                        .into_iter()
                        .map(|s| -> Result<Source, String> {
                            Ok(Source {
                                principals: strings(s.principals)?,
                                not_principals: strings(s.not_principals)?,
                                namespaces: strings(s.namespaces)?,
                                not_namespaces: strings(s.not_namespaces)?,
                                ip_blocks: nets(s.ip_blocks)?,
                                not_ip_blocks: nets(s.not_ip_blocks)?,
                                remote_ip_blocks: nets(s.remote_ip_blocks)?,
                                not_remote_ip_blocks: nets(s.not_remote_ip_blocks)?,
                                request_principals: s.request_principals,
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    to: r
                        .to
                        .into_iter()
                        .map(|o| -> Result<Operation, String> {
                            Ok(Operation {
                                hosts: strings(o.hosts)?,
                                not_hosts: strings(o.not_hosts)?,
                                methods: strings(o.methods)?,
                                not_methods: strings(o.not_methods)?,
                                paths: strings(o.paths)?,
                                not_paths: strings(o.not_paths)?,
                                ports: ports(o.ports)?,
                                not_ports: ports(o.not_ports)?,
                            })
                        })
                        .collect::<Result<_, _>>()?,
                    when: r
                        .when
                        .into_iter()
                        .map(condition)
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            key: format!("{}/{}", p.namespace, p.name),
            action,
            dry_run: p.dry_run,
            waypoints: p.waypoints,
            services: p.services,
            rules,
        })
    }
}

/// What a policy is evaluated against, for one request.
pub struct RequestAttrs<'a> {
    /// The caller's identity without `spiffe://`.
    pub principal: &'a str,
    pub namespace: &'a str,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// The `Host` / `:authority`.
    pub host: &'a str,
    pub method: &'a str,
    /// Normalized, without the query.
    pub path: &'a str,
    pub headers: &'a HeaderMap,
    /// Not a request but a connection carried at L4: host, method, path and
    /// headers are unknown, and rules that need them fail closed.
    pub opaque: bool,
}

impl<'a> RequestAttrs<'a> {
    /// A connection carried at L4.
    pub fn connection(
        principal: &'a str,
        namespace: &'a str,
        source_ip: IpAddr,
        destination: std::net::SocketAddr,
        headers: &'a HeaderMap,
    ) -> Self {
        Self {
            principal,
            namespace,
            source_ip,
            destination_ip: destination.ip(),
            destination_port: destination.port(),
            host: "",
            method: "",
            path: "",
            headers,
            opaque: true,
        }
    }
}

/// A positive list: empty, or some entry matches.
fn any(list: &[StringMatch], value: &str) -> bool {
    list.is_empty() || list.iter().any(|m| m.matches(value))
}

/// A negative list: empty, or no entry matches.
fn none(list: &[StringMatch], value: &str) -> bool {
    !list.iter().any(|m| m.matches(value))
}

fn host_matches(m: &StringMatch, host: &str) -> bool {
    m.matches_ignoring_case(host)
        || m.matches_ignoring_case(crate::filters::host_without_port(host))
}

/// `unknown` is what an attribute no Weft proxy can check makes the rule:
/// false in ALLOW policies, true in DENY ones (fail closed).
fn source_matches(s: &Source, a: &RequestAttrs<'_>, unknown: bool) -> bool {
    if s.request_principals && !unknown {
        return false;
    }
    let in_nets = |nets: &[IpNet], ip: IpAddr| nets.iter().any(|n| n.contains(&ip.to_canonical()));
    any(&s.principals, a.principal)
        && none(&s.not_principals, a.principal)
        && any(&s.namespaces, a.namespace)
        && none(&s.not_namespaces, a.namespace)
        && (s.ip_blocks.is_empty() || in_nets(&s.ip_blocks, a.source_ip))
        && !in_nets(&s.not_ip_blocks, a.source_ip)
        && (s.remote_ip_blocks.is_empty() || in_nets(&s.remote_ip_blocks, a.source_ip))
        && !in_nets(&s.not_remote_ip_blocks, a.source_ip)
}

fn operation_matches(o: &Operation, a: &RequestAttrs<'_>, unknown: bool) -> bool {
    let l7 = [
        &o.hosts,
        &o.not_hosts,
        &o.methods,
        &o.not_methods,
        &o.paths,
        &o.not_paths,
    ];
    if a.opaque && l7.iter().any(|list| !list.is_empty()) {
        // Only the ports can be checked on a connection.
        return unknown
            && (o.ports.is_empty() || o.ports.contains(&a.destination_port))
            && !o.not_ports.contains(&a.destination_port);
    }
    (o.hosts.is_empty() || o.hosts.iter().any(|m| host_matches(m, a.host)))
        && !o.not_hosts.iter().any(|m| host_matches(m, a.host))
        && any(&o.methods, a.method)
        && none(&o.not_methods, a.method)
        && any(&o.paths, a.path)
        && none(&o.not_paths, a.path)
        && (o.ports.is_empty() || o.ports.contains(&a.destination_port))
        && !o.not_ports.contains(&a.destination_port)
}

fn condition_matches(c: &Condition, a: &RequestAttrs<'_>, unknown: bool) -> bool {
    match c {
        Condition::Header { .. } if a.opaque => unknown,
        Condition::Header {
            name,
            values,
            not_values,
        } => {
            // Every value of a repeated header on its own, never joined.
            let present: Vec<&str> = a
                .headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            (values.is_empty() || present.iter().any(|v| values.iter().any(|m| m.matches(v))))
                && !present
                    .iter()
                    .any(|v| not_values.iter().any(|m| m.matches(v)))
        }
        Condition::Ip {
            destination,
            values,
            not_values,
        } => {
            let ip = if *destination {
                a.destination_ip
            } else {
                a.source_ip
            }
            .to_canonical();
            (values.is_empty() || values.iter().any(|n| n.contains(&ip)))
                && !not_values.iter().any(|n| n.contains(&ip))
        }
        Condition::Text {
            key,
            values,
            not_values,
        } => {
            let port;
            let value = match key.as_str() {
                "source.namespace" => a.namespace,
                "source.principal" => a.principal,
                _ => {
                    port = a.destination_port.to_string();
                    &port
                }
            };
            any(values, value) && none(not_values, value)
        }
        Condition::Unsupported { .. } => unknown,
    }
}

fn rule_matches(r: &Rule, a: &RequestAttrs<'_>, unknown: bool) -> bool {
    (r.from.is_empty() || r.from.iter().any(|s| source_matches(s, a, unknown)))
        && (r.to.is_empty() || r.to.iter().any(|o| operation_matches(o, a, unknown)))
        && r.when.iter().all(|c| condition_matches(c, a, unknown))
}

fn policy_matches(p: &Policy, a: &RequestAttrs<'_>) -> bool {
    let unknown = p.action == Action::Deny;
    p.rules.iter().any(|r| rule_matches(r, a, unknown))
}

/// The outcome for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow {
        audited: Vec<String>,
    },
    /// Denied; the policies that decided it (`namespace/name`).
    Deny {
        policy: String,
        audited: Vec<String>,
    },
}

/// Decides a request against `policies` (the ones that apply to it).
pub fn evaluate(policies: &[Arc<Policy>], a: &RequestAttrs<'_>) -> Verdict {
    let audited: Vec<String> = policies
        .iter()
        .filter(|p| p.dry_run && policy_matches(p, a))
        .map(|p| p.key.clone())
        .collect();
    let enforced = || policies.iter().filter(|p| !p.dry_run);
    if let Some(deny) = enforced().find(|p| p.action == Action::Deny && policy_matches(p, a)) {
        return Verdict::Deny {
            policy: deny.key.clone(),
            audited,
        };
    }
    let allows: Vec<&Arc<Policy>> = enforced().filter(|p| p.action == Action::Allow).collect();
    if allows.is_empty() || allows.iter().any(|p| policy_matches(p, a)) {
        Verdict::Allow { audited }
    } else {
        Verdict::Deny {
            policy: allows
                .iter()
                .map(|p| p.key.as_str())
                .collect::<Vec<_>>()
                .join(","),
            audited,
        }
    }
}

/// Every policy waypoints enforce, by `namespace/name`.
#[derive(Default)]
pub struct PolicyTable {
    policies: RwLock<BTreeMap<String, Arc<Policy>>>,
}

impl PolicyTable {
    /// The policies for a request through waypoint `waypoint` addressed to
    /// `service` (`namespace/hostname`, if a service was addressed).
    pub fn applying(&self, waypoint: &str, service: Option<&str>) -> Vec<Arc<Policy>> {
        self.policies
            .read()
            .expect("policies lock")
            .values()
            .filter(|p| {
                p.waypoints.iter().any(|w| w == waypoint)
                    || service.is_some_and(|s| p.services.iter().any(|ps| ps == s))
            })
            .cloned()
            .collect()
    }

    pub fn dump(&self) -> Vec<Arc<Policy>> {
        self.policies
            .read()
            .expect("policies lock")
            .values()
            .cloned()
            .collect()
    }
}

/// Applies `weft.l7.v1.Policy` resources to a [`PolicyTable`].
pub struct PolicyHandler {
    table: Arc<PolicyTable>,
    versions: Versions,
}

impl PolicyHandler {
    pub fn new(table: Arc<PolicyTable>) -> Self {
        Self {
            table,
            versions: Versions::default(),
        }
    }
}

impl ResourceHandler for PolicyHandler {
    fn type_url(&self) -> &'static str {
        L7_POLICY_TYPE_URL
    }

    fn apply(&self, updates: Vec<Received>, removals: &[String]) -> Vec<(String, String)> {
        let mut rejected = Vec::new();
        let mut policies = self.table.policies.write().expect("policies lock");
        for r in updates {
            match decode::<pb::Policy>(L7_POLICY_TYPE_URL, &r).and_then(Policy::try_from) {
                Ok(policy) => {
                    policies.insert(r.name.clone(), Arc::new(policy));
                    self.versions.set(&r.name, &r.version);
                }
                Err(reason) => {
                    tracing::warn!(resource = %r.name, %reason, "rejected a policy (NACK); keeping the previous one");
                    rejected.push((r.name, reason));
                }
            }
        }
        for name in removals {
            policies.remove(name);
            self.versions.remove(name);
        }
        rejected
    }

    fn versions(&self) -> BTreeMap<String, String> {
        self.versions.all()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn attrs<'a>(method: &'a str, path: &'a str, headers: &'a HeaderMap) -> RequestAttrs<'a> {
        RequestAttrs {
            principal: "cluster.local/ns/shop/sa/client",
            namespace: "shop",
            source_ip: "198.18.1.2".parse().unwrap(),
            destination_ip: "198.19.0.10".parse().unwrap(),
            destination_port: 80,
            host: "Web.Shop:80",
            method,
            path,
            headers,
            opaque: false,
        }
    }

    fn policy(action: Action, rule: Rule) -> Arc<Policy> {
        Arc::new(Policy {
            key: "shop/p".into(),
            action,
            dry_run: false,
            waypoints: vec![],
            services: vec![],
            rules: vec![rule],
        })
    }

    fn exact(s: &str) -> StringMatch {
        StringMatch::Exact(s.into())
    }

    #[test]
    fn operations_match_methods_paths_hosts_and_ports() {
        let none = HeaderMap::new();
        let get_api = Rule {
            to: vec![Operation {
                methods: vec![exact("GET")],
                paths: vec![StringMatch::Prefix("/api/".into())],
                hosts: vec![exact("web.shop")],
                not_ports: vec![8443],
                ..Default::default()
            }],
            ..Default::default()
        };
        let allow = [policy(Action::Allow, get_api)];
        let cases = [
            ("GET", "/api/x", true),
            ("POST", "/api/x", false),
            ("GET", "/admin", false),
            ("get", "/api/x", false),
        ];
        for (method, path, allowed) in cases {
            let verdict = evaluate(&allow, &attrs(method, path, &none));
            assert_eq!(
                matches!(verdict, Verdict::Allow { .. }),
                allowed,
                "{method} {path}"
            );
        }
    }

    #[test]
    fn repeated_headers_are_matched_value_by_value_and_deny_wins() {
        let mut headers = HeaderMap::new();
        headers.append("x-role", HeaderValue::from_static("guest"));
        headers.append("x-role", HeaderValue::from_static("admin"));
        let deny_admin = policy(
            Action::Deny,
            Rule {
                when: vec![Condition::Header {
                    name: "x-role".into(),
                    values: vec![exact("admin")],
                    not_values: vec![],
                }],
                ..Default::default()
            },
        );
        let allow_all = policy(Action::Allow, Rule::default());
        let verdict = evaluate(
            &[allow_all.clone(), deny_admin.clone()],
            &attrs("GET", "/", &headers),
        );
        assert!(matches!(verdict, Verdict::Deny { .. }), "{verdict:?}");
        // A joined value is not what the policy named.
        let joined = policy(
            Action::Deny,
            Rule {
                when: vec![Condition::Header {
                    name: "x-role".into(),
                    values: vec![exact("guest,admin")],
                    not_values: vec![],
                }],
                ..Default::default()
            },
        );
        let verdict = evaluate(&[allow_all, joined], &attrs("GET", "/", &headers));
        assert!(matches!(verdict, Verdict::Allow { .. }), "{verdict:?}");
    }

    #[test]
    fn what_cannot_be_checked_fails_closed() {
        let none = HeaderMap::new();
        let jwt = Rule {
            from: vec![Source {
                request_principals: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let auth = Rule {
            when: vec![Condition::Unsupported {
                key: "request.auth.claims[group]".into(),
            }],
            ..Default::default()
        };
        for rule in [jwt, auth] {
            let allow = evaluate(
                &[policy(Action::Allow, rule.clone())],
                &attrs("GET", "/", &none),
            );
            assert!(
                matches!(allow, Verdict::Deny { .. }),
                "an ALLOW never matches"
            );
            let deny = evaluate(&[policy(Action::Deny, rule)], &attrs("GET", "/", &none));
            assert!(matches!(deny, Verdict::Deny { .. }), "a DENY always does");
        }
    }

    #[test]
    fn connections_carried_at_l4_fail_closed_on_l7_rules() {
        let none = HeaderMap::new();
        let get_only = Rule {
            to: vec![Operation {
                methods: vec![exact("GET")],
                ..Default::default()
            }],
            ..Default::default()
        };
        let connection = RequestAttrs::connection(
            "cluster.local/ns/shop/sa/client",
            "shop",
            "198.18.1.2".parse().unwrap(),
            "198.19.0.10:80".parse().unwrap(),
            &none,
        );
        let allow = evaluate(&[policy(Action::Allow, get_only.clone())], &connection);
        assert!(
            matches!(allow, Verdict::Deny { .. }),
            "an L7 ALLOW allows no connection"
        );
        let deny = evaluate(&[policy(Action::Deny, get_only)], &connection);
        assert!(
            matches!(deny, Verdict::Deny { .. }),
            "an L7 DENY denies every connection"
        );
        let ports = Rule {
            to: vec![Operation {
                paths: vec![exact("/admin")],
                ports: vec![9090],
                ..Default::default()
            }],
            ..Default::default()
        };
        let deny = evaluate(&[policy(Action::Deny, ports)], &connection);
        assert!(
            matches!(deny, Verdict::Allow { .. }),
            "…on the ports it names only"
        );
    }

    #[test]
    fn sources_match_identity_namespace_and_address() {
        let none = HeaderMap::new();
        let cases = [
            (
                Source {
                    principals: vec![exact("cluster.local/ns/shop/sa/client")],
                    ..Default::default()
                },
                true,
            ),
            (
                Source {
                    principals: vec![exact("cluster.local/ns/shop/sa/other")],
                    ..Default::default()
                },
                false,
            ),
            (
                Source {
                    namespaces: vec![exact("shop")],
                    ..Default::default()
                },
                true,
            ),
            (
                Source {
                    not_namespaces: vec![exact("shop")],
                    ..Default::default()
                },
                false,
            ),
            (
                Source {
                    ip_blocks: vec!["198.18.1.0/24".parse().unwrap()],
                    ..Default::default()
                },
                true,
            ),
            (
                Source {
                    not_ip_blocks: vec!["198.18.1.2/32".parse().unwrap()],
                    ..Default::default()
                },
                false,
            ),
        ];
        for (source, allowed) in cases {
            let rule = Rule {
                from: vec![source.clone()],
                ..Default::default()
            };
            let verdict = evaluate(&[policy(Action::Allow, rule)], &attrs("GET", "/", &none));
            assert_eq!(
                matches!(verdict, Verdict::Allow { .. }),
                allowed,
                "{source:?}"
            );
        }
    }
}
