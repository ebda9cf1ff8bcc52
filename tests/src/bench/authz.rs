//! The cost of deciding one connection with 10,000 policies of 10 rules
//! each in the proxy's state, against the same lookup with no policies.
//!
//! - `typical`: the policies spread over 100 namespaces (100 apply to the
//!   destination), the last rule of each matching, so every rule is tried;
//! - `worst`: all 10,000 apply to the destination, none matches until the
//!   very last policy.

use std::{
    hint::black_box,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use weft_proto::spiffe::Identity;
use weft_proxy::{
    authz::{evaluate, Connection},
    state::{
        policy::{Clause, Match, Rule, StringMatch},
        Authorization, PolicyAction, PolicyScope, ProxyState,
    },
};

const POLICIES: usize = 10_000;
const RULES: usize = 10;

fn policy(index: usize, namespace: &str) -> Authorization {
    let rules = (0..RULES)
        .map(|r| {
            let last = r == RULES - 1 && index == POLICIES - 1;
            let port = if last { 80 } else { 10_000 + r as u16 };
            Rule {
                clauses: vec![
                    Clause {
                        matches: vec![
                            Match {
                                principals: vec![StringMatch::Prefix(format!(
                                    "cluster.local/ns/team-{r}/"
                                ))],
                                not_source_ips: vec!["198.18.200.0/24"
                                    .parse::<IpNet>()
                                    .expect("valid")],
                                ..Default::default()
                            },
                            Match {
                                principals: vec![StringMatch::Prefix(
                                    "cluster.local/ns/demo/".into(),
                                )],
                                ..Default::default()
                            },
                        ],
                    },
                    Clause {
                        matches: vec![Match {
                            destination_ports: vec![port],
                            ..Default::default()
                        }],
                    },
                ],
            }
        })
        .collect();
    Authorization {
        name: format!("p{index}"),
        namespace: namespace.into(),
        scope: PolicyScope::Namespace,
        action: PolicyAction::Allow,
        rules,
        dry_run: false,
    }
}

fn state(namespaces: usize) -> ProxyState {
    let state = ProxyState::default();
    for i in 0..POLICIES {
        // The destination's namespace ("demo") gets the last share.
        let namespace = if i * namespaces / POLICIES == namespaces - 1 {
            "demo".to_owned()
        } else {
            format!("ns{}", i % namespaces)
        };
        let p = policy(i, &namespace);
        state.upsert_policy(&p.key(), p);
    }
    state
}

/// Mean time per decision over `rounds`, with the policy lookup included.
fn time(state: &ProxyState, rounds: u32) -> Duration {
    let identity = Identity::new("cluster.local", "demo", "client");
    let connection = Connection {
        src_ip: "198.18.1.2".parse::<IpAddr>().expect("valid"),
        src_identity: Some(&identity),
        dst_ip: "198.18.2.2".parse::<IpAddr>().expect("valid"),
        dst_port: 80,
    };
    let start = Instant::now();
    for _ in 0..rounds {
        let policies: Vec<Arc<Authorization>> = state.policies_for("demo", &[]);
        black_box(evaluate(black_box(&policies), black_box(&connection)));
    }
    start.elapsed() / rounds
}

pub fn run() {
    let empty = ProxyState::default();
    let baseline = time(&empty, 200_000);
    let typical = state(100);
    let typical_cost = time(&typical, 2_000);
    let worst = state(1);
    let worst_cost = time(&worst, 20);
    let applicable = |s: &ProxyState| s.policies_for("demo", &[]).len();
    println!(
        "authz-eval: one connection decided, {POLICIES} policies × {RULES} rules in the state"
    );
    println!("  no policy (lookup only)        {:>10.2?}", baseline);
    println!(
        "  typical: {:>5} apply           {:>10.2?}  ({:.0}× baseline)",
        applicable(&typical),
        typical_cost,
        typical_cost.as_secs_f64() / baseline.as_secs_f64()
    );
    println!(
        "  worst:   {:>5} apply           {:>10.2?}  ({:.0}× baseline)",
        applicable(&worst),
        worst_cost,
        worst_cost.as_secs_f64() / baseline.as_secs_f64()
    );
}
