//! L4 authorization decisions, table-driven: every match field, negations,
//! empty rules, plaintext, and the ALLOW / DENY / AUDIT interplay.

use std::{net::IpAddr, sync::Arc};

use weft_proto::spiffe::Identity;
use weft_proxy::{
    authz::{evaluate, Connection, Decision, DenyReason},
    state::{
        policy::{Clause, Match, Rule, StringMatch},
        Authorization, PolicyAction, PolicyScope,
    },
};

fn policy(name: &str, action: PolicyAction, rules: Vec<Rule>) -> Arc<Authorization> {
    Arc::new(Authorization {
        name: name.into(),
        namespace: "demo".into(),
        scope: PolicyScope::Namespace,
        action,
        rules,
        dry_run: false,
    })
}

fn audit(name: &str, rules: Vec<Rule>) -> Arc<Authorization> {
    let mut p = (*policy(name, PolicyAction::Allow, rules)).clone();
    p.dry_run = true;
    Arc::new(p)
}

/// One rule of one clause of one match.
fn when(m: Match) -> Vec<Rule> {
    vec![Rule {
        clauses: vec![Clause { matches: vec![m] }],
    }]
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

struct Case {
    name: &'static str,
    policies: Vec<Arc<Authorization>>,
    /// Source identity's service account in namespace `ns` ("" = plaintext).
    from: (&'static str, &'static str),
    src_ip: &'static str,
    dst_port: u16,
    allowed: bool,
}

fn decide(case: &Case) -> Decision {
    let identity =
        (!case.from.0.is_empty()).then(|| Identity::new("cluster.local", case.from.0, case.from.1));
    let connection = Connection {
        src_ip: case.src_ip.parse::<IpAddr>().unwrap(),
        src_identity: identity.as_ref(),
        dst_ip: "198.18.2.2".parse().unwrap(),
        dst_port: case.dst_port,
    };
    evaluate(&case.policies, &connection)
}

#[test]
fn decisions() {
    use PolicyAction::{Allow, Deny};
    let client = ("demo", "client");
    let plaintext = ("", "");
    let cases = vec![
        Case {
            name: "no policy allows",
            policies: vec![],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "plaintext with no policy is allowed",
            policies: vec![],
            from: plaintext,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "ALLOW without rules allows nothing",
            policies: vec![policy("a", Allow, vec![])],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: false,
        },
        Case {
            name: "a rule without clauses matches everything",
            policies: vec![policy("a", Allow, vec![Rule::default()])],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "DENY without rules denies nothing",
            policies: vec![policy("d", Deny, vec![])],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "principal exact",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    principals: vec![exact("cluster.local/ns/demo/sa/client")],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "principal exact, other caller",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    principals: vec![exact("cluster.local/ns/demo/sa/client")],
                    ..Default::default()
                }),
            )],
            from: ("demo", "other"),
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: false,
        },
        Case {
            name: "principal prefix",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    principals: vec![StringMatch::Prefix("cluster.local/ns/demo/".into())],
                    ..Default::default()
                }),
            )],
            from: ("demo", "anyone"),
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "principal suffix",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    principals: vec![StringMatch::Suffix("/sa/client".into())],
                    ..Default::default()
                }),
            )],
            from: ("other", "client"),
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "principals need an identity",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    principals: vec![StringMatch::Presence],
                    ..Default::default()
                }),
            )],
            from: plaintext,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: false,
        },
        Case {
            name: "notPrincipals presence denies plaintext (STRICT)",
            policies: vec![policy(
                "strict",
                Deny,
                when(Match {
                    not_principals: vec![StringMatch::Presence],
                    ..Default::default()
                }),
            )],
            from: plaintext,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: false,
        },
        Case {
            name: "notPrincipals presence lets mTLS through",
            policies: vec![policy(
                "strict",
                Deny,
                when(Match {
                    not_principals: vec![StringMatch::Presence],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "namespaces",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    namespaces: vec![exact("demo")],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "namespaces, other namespace",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    namespaces: vec![exact("demo")],
                    ..Default::default()
                }),
            )],
            from: ("prod", "client"),
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: false,
        },
        Case {
            name: "notNamespaces excludes",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    not_namespaces: vec![exact("prod")],
                    ..Default::default()
                }),
            )],
            from: ("prod", "x"),
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: false,
        },
        Case {
            name: "notNamespaces lets others in",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    not_namespaces: vec![exact("prod")],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "ipBlocks",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    source_ips: vec![net("198.18.1.0/24")],
                    ..Default::default()
                }),
            )],
            from: plaintext,
            src_ip: "198.18.1.9",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "ipBlocks, outside",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    source_ips: vec![net("198.18.1.0/24")],
                    ..Default::default()
                }),
            )],
            from: plaintext,
            src_ip: "198.18.3.9",
            dst_port: 80,
            allowed: false,
        },
        Case {
            name: "ipBlocks, IPv6",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    source_ips: vec![net("fd00:198:18::/48")],
                    ..Default::default()
                }),
            )],
            from: plaintext,
            src_ip: "fd00:198:18:1::5",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "notIpBlocks",
            policies: vec![policy(
                "d",
                Deny,
                when(Match {
                    not_source_ips: vec![net("198.18.0.0/16")],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.19.0.1",
            dst_port: 80,
            allowed: false,
        },
        Case {
            name: "notIpBlocks, inside",
            policies: vec![policy(
                "d",
                Deny,
                when(Match {
                    not_source_ips: vec![net("198.18.0.0/16")],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.18.5.1",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "destination ip",
            policies: vec![policy(
                "d",
                Deny,
                when(Match {
                    destination_ips: vec![net("198.18.2.2/32")],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: false,
        },
        Case {
            name: "not destination ip",
            policies: vec![policy(
                "d",
                Deny,
                when(Match {
                    not_destination_ips: vec![net("198.18.2.2/32")],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "ports",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    destination_ports: vec![80, 443],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 443,
            allowed: true,
        },
        Case {
            name: "ports, other",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    destination_ports: vec![80, 443],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 8080,
            allowed: false,
        },
        Case {
            name: "notPorts",
            policies: vec![policy(
                "d",
                Deny,
                when(Match {
                    not_destination_ports: vec![80],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 22,
            allowed: false,
        },
        Case {
            name: "fields of one match are ANDed",
            policies: vec![policy(
                "a",
                Allow,
                when(Match {
                    namespaces: vec![exact("demo")],
                    destination_ports: vec![80],
                    ..Default::default()
                }),
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 81,
            allowed: false,
        },
        Case {
            name: "matches of a clause are ORed",
            policies: vec![policy(
                "a",
                Allow,
                vec![Rule {
                    clauses: vec![Clause {
                        matches: vec![
                            Match {
                                destination_ports: vec![1],
                                ..Default::default()
                            },
                            Match {
                                destination_ports: vec![80],
                                ..Default::default()
                            },
                        ],
                    }],
                }],
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "clauses of a rule are ANDed",
            policies: vec![policy(
                "a",
                Allow,
                vec![Rule {
                    clauses: vec![
                        Clause {
                            matches: vec![Match {
                                namespaces: vec![exact("demo")],
                                ..Default::default()
                            }],
                        },
                        Clause {
                            matches: vec![Match {
                                destination_ports: vec![9],
                                ..Default::default()
                            }],
                        },
                    ],
                }],
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: false,
        },
        Case {
            name: "rules are ORed",
            policies: vec![policy(
                "a",
                Allow,
                vec![
                    Rule {
                        clauses: vec![Clause {
                            matches: vec![Match {
                                destination_ports: vec![9],
                                ..Default::default()
                            }],
                        }],
                    },
                    Rule::default(),
                ],
            )],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "DENY beats a matching ALLOW",
            policies: vec![
                policy("a", Allow, vec![Rule::default()]),
                policy(
                    "d",
                    Deny,
                    when(Match {
                        destination_ports: vec![80],
                        ..Default::default()
                    }),
                ),
            ],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: false,
        },
        Case {
            name: "one of several ALLOWs suffices",
            policies: vec![
                policy(
                    "a1",
                    Allow,
                    when(Match {
                        destination_ports: vec![9],
                        ..Default::default()
                    }),
                ),
                policy(
                    "a2",
                    Allow,
                    when(Match {
                        destination_ports: vec![80],
                        ..Default::default()
                    }),
                ),
            ],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "AUDIT alone changes nothing",
            policies: vec![audit("audit", vec![Rule::default()])],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: true,
        },
        Case {
            name: "AUDIT does not count as an ALLOW",
            policies: vec![
                audit("audit", vec![Rule::default()]),
                policy(
                    "a",
                    Allow,
                    when(Match {
                        destination_ports: vec![9],
                        ..Default::default()
                    }),
                ),
            ],
            from: client,
            src_ip: "198.18.1.2",
            dst_port: 80,
            allowed: false,
        },
    ];
    for case in &cases {
        let decision = decide(case);
        assert_eq!(
            decision.is_allowed(),
            case.allowed,
            "{}: {decision:?}",
            case.name
        );
    }
}

#[test]
fn denials_name_the_policy_and_audits_are_reported() {
    let deny = policy(
        "no-80",
        PolicyAction::Deny,
        when(Match {
            destination_ports: vec![80],
            ..Default::default()
        }),
    );
    let watch = audit("watch", vec![Rule::default()]);
    let identity = Identity::new("cluster.local", "demo", "client");
    let connection = Connection {
        src_ip: "198.18.1.2".parse().unwrap(),
        src_identity: Some(&identity),
        dst_ip: "198.18.2.2".parse().unwrap(),
        dst_port: 80,
    };
    assert_eq!(
        evaluate(&[deny.clone(), watch.clone()], &connection),
        Decision::Deny {
            reason: DenyReason::DenyPolicy("demo/no-80".into()),
            audited: vec!["demo/watch".into()],
        }
    );
    let only_allow = policy(
        "web-only",
        PolicyAction::Allow,
        when(Match {
            destination_ports: vec![443],
            ..Default::default()
        }),
    );
    match evaluate(&[only_allow], &connection) {
        Decision::Deny { reason, .. } => {
            assert_eq!(
                reason,
                DenyReason::NoAllowMatch(vec!["demo/web-only".into()])
            );
            assert!(reason.to_string().contains("no ALLOW policy matched"));
        }
        other => panic!("{other:?}"),
    }
}
