//! Objects → workload-API resources, checked field by field.

use std::net::Ipv4Addr;

use weft_control::{
    source::{local::LocalSource, ConfigSnapshot},
    translate::{translate, MeshConfig, Resources},
};
use weft_proto::istio::{
    security::{self, string_match::MatchType},
    workload::{self, address::Type},
};

fn snapshot(yaml: &str) -> ConfigSnapshot {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("objects.yaml"), yaml).unwrap();
    let snapshot = LocalSource::new(dir.path()).load().unwrap();
    assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
    snapshot
}

fn resources(yaml: &str) -> Resources {
    translate(&snapshot(yaml), &MeshConfig::default())
}

fn workload<'a>(r: &'a Resources, ns: &str, name: &str) -> &'a workload::Workload {
    match r
        .addresses
        .get(&format!("Kubernetes//Pod/{ns}/{name}"))
        .and_then(|a| a.r#type.as_ref())
    {
        Some(Type::Workload(w)) => w,
        other => panic!("no workload {ns}/{name}: {other:?}"),
    }
}

fn service<'a>(r: &'a Resources, ns: &str, name: &str) -> &'a workload::Service {
    let key = format!("{ns}/{name}.{ns}.svc.cluster.local");
    match r.addresses.get(&key).and_then(|a| a.r#type.as_ref()) {
        Some(Type::Service(s)) => s,
        other => panic!("no service {key}: {other:?}"),
    }
}

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: demo
  labels: {app: server, version: v2}
spec:
  nodeName: n2
  serviceAccountName: server-sa
  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
status: {podIP: 198.18.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: optout, namespace: demo, labels: {istio.io/dataplane-mode: none}}
spec: {nodeName: n1}
status: {podIP: 198.18.1.3}
---
apiVersion: v1
kind: Pod
metadata: {name: old, namespace: legacy}
spec: {nodeName: n1}
status: {podIP: 198.18.1.4}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: demo}
spec: {nodeName: n1}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: demo}
spec:
  selector: {app: server}
  ports: [{name: web, port: 80, targetPort: http}, {port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: fixed, namespace: demo}
spec: {clusterIP: 198.19.0.77, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: demo}
spec: {clusterIP: None, ports: [{port: 80}]}
"#;

#[test]
fn pods_become_workloads_with_istios_fields() {
    let r = resources(MESH);
    let w = workload(&r, "demo", "server");
    assert_eq!(w.uid, "Kubernetes//Pod/demo/server");
    assert_eq!(w.addresses, vec![vec![198, 18, 2, 2]]);
    assert_eq!(w.tunnel_protocol, workload::TunnelProtocol::Hbone as i32);
    assert_eq!(
        (w.trust_domain.as_str(), w.service_account.as_str()),
        ("cluster.local", "server-sa")
    );
    assert_eq!(w.node, "n2");
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("server", "v2")
    );
    let ports = &w.services["demo/server.demo.svc.cluster.local"].ports;
    assert_eq!(
        ports
            .iter()
            .map(|p| (p.service_port, p.target_port))
            .collect::<Vec<_>>(),
        vec![(80, 8080), (9000, 9000)],
        "the named target port resolves to the container port"
    );
    assert_eq!(
        workload(&r, "demo", "optout").tunnel_protocol,
        workload::TunnelProtocol::None as i32,
        "a pod's own dataplane-mode=none wins over its namespace"
    );
    assert_eq!(
        workload(&r, "legacy", "old").tunnel_protocol,
        workload::TunnelProtocol::None as i32,
        "a pod of an unenrolled namespace is known but not in the mesh"
    );
    assert!(
        !r.addresses.contains_key("Kubernetes//Pod/demo/pending"),
        "no IP yet: not addressable"
    );
}

#[test]
fn services_keep_or_get_stable_vips() {
    let r = resources(MESH);
    let fixed = service(&r, "demo", "fixed");
    assert_eq!(fixed.addresses[0].address, vec![198, 19, 0, 77]);
    let allocated = service(&r, "demo", "server");
    let ip =
        Ipv4Addr::from(<[u8; 4]>::try_from(allocated.addresses[0].address.as_slice()).unwrap());
    assert!(
        MeshConfig::default().service_vips.contains(&ip),
        "{ip} outside the VIP range"
    );
    assert_eq!(
        allocated
            .ports
            .iter()
            .map(|p| (p.service_port, p.target_port))
            .collect::<Vec<_>>(),
        vec![(80, 0), (9000, 9000)],
        "a named target port is left to each workload (0)"
    );
    assert!(service(&r, "demo", "headless").addresses.is_empty());
    // The same objects give the same VIP (across restarts, too).
    assert_eq!(resources(MESH), r);
}

fn policy<'a>(r: &'a Resources, key: &str) -> &'a security::Authorization {
    r.authorizations
        .get(key)
        .unwrap_or_else(|| panic!("no policy {key}: {:?}", r.authorizations.keys()))
}

#[test]
fn authorization_policies_keep_istios_structure_and_fail_closed() {
    let yaml = format!(
        "{MESH}{}",
        r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/demo/sa/client"], notNamespaces: ["evil*"]}
    - source: {ipBlocks: ["198.18.1.0/24"]}
    to: [{operation: {ports: ["8080"]}}]
    when: [{key: source.ip, notValues: ["198.18.1.66"]}]
  - to: [{operation: {methods: ["GET"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: demo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"], ports: ["9000"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: for-waypoint, namespace: demo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
"#
    );
    let r = resources(&yaml);
    let allow = policy(&r, "demo/allow-client");
    assert_eq!(allow.scope, security::Scope::WorkloadSelector as i32);
    assert_eq!(allow.action, security::Action::Allow as i32);
    assert_eq!(
        allow.rules.len(),
        1,
        "the L7-only ALLOW rule is dropped: it can never match at L4"
    );
    let clauses = &allow.rules[0].clauses;
    assert_eq!(
        clauses.len(),
        3,
        "from, to and one when condition: {clauses:#?}"
    );
    assert_eq!(clauses[0].matches.len(), 2, "two sources are alternatives");
    assert_eq!(
        clauses[0].matches[0].principals[0].match_type,
        Some(MatchType::Exact("cluster.local/ns/demo/sa/client".into()))
    );
    assert_eq!(
        clauses[0].matches[0].not_namespaces[0].match_type,
        Some(MatchType::Prefix("evil".into()))
    );
    assert_eq!(
        clauses[0].matches[1].source_ips[0],
        security::Address {
            address: vec![198, 18, 1, 0],
            length: 24
        }
    );
    assert_eq!(clauses[1].matches[0].destination_ports, vec![8080]);
    assert_eq!(clauses[2].matches[0].not_source_ips[0].length, 32);
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("demo/allow-client") && w.contains("to.operation.methods")));
    assert_eq!(
        workload(&r, "demo", "server").authorization_policies,
        vec!["demo/allow-client"]
    );

    let deny = policy(&r, "demo/deny-admin");
    assert_eq!(deny.scope, security::Scope::Namespace as i32);
    assert_eq!(
        deny.rules[0].clauses[0].matches[0].destination_ports,
        vec![9000],
        "L4 part of the DENY kept"
    );
    assert!(r
        .warnings
        .iter()
        .any(|w| w.contains("demo/deny-admin") && w.contains("denying more")));

    assert_eq!(
        policy(&r, "istio-system/mesh-wide").scope,
        security::Scope::Global as i32
    );
    assert!(
        !r.authorizations.contains_key("demo/for-waypoint"),
        "waypoint policies are not ztunnel's"
    );
}

#[test]
fn peer_authentication_becomes_deny_policies() {
    let yaml = format!(
        "{MESH}{}",
        r#"
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: demo}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: server-ports, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  portLevelMtls: {9000: {mode: PERMISSIVE}}
"#
    );
    let r = resources(&yaml);
    let strict = policy(&r, "istio-system/istio_converted_static_strict");
    assert_eq!(strict.action, security::Action::Deny as i32);
    assert_eq!(
        strict.rules[0].clauses[0].matches[0].not_principals[0].match_type,
        Some(MatchType::Presence(()))
    );
    assert_eq!(
        workload(&r, "demo", "optout").authorization_policies,
        vec!["istio-system/istio_converted_static_strict"]
    );
    let converted = policy(&r, "demo/converted_peer_authentication_server-ports");
    let clauses = &converted.rules[0].clauses;
    assert_eq!(
        clauses[1].matches[0].not_destination_ports,
        vec![9000],
        "plaintext allowed on 9000 only"
    );
    assert_eq!(
        workload(&r, "demo", "server").authorization_policies,
        vec!["demo/converted_peer_authentication_server-ports"]
    );
    assert!(workload(&r, "legacy", "old")
        .authorization_policies
        .is_empty());
}

#[test]
fn peer_authentication_levels_override_each_other() {
    let yaml = format!(
        "{MESH}{}",
        r#"
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: relaxed, namespace: legacy}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: server-open, namespace: demo}
spec:
  selector: {matchLabels: {app: server}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {8080: {mode: STRICT}}
"#
    );
    let r = resources(&yaml);
    let strict = "istio-system/istio_converted_static_strict";
    // Mesh STRICT reaches a namespace without its own setting…
    assert_eq!(
        workload(&r, "demo", "optout").authorization_policies,
        vec![strict]
    );
    // …a namespace's PERMISSIVE overrides it…
    assert!(workload(&r, "legacy", "old")
        .authorization_policies
        .is_empty());
    // …and a workload's PERMISSIVE with a STRICT port overrides both.
    let server = workload(&r, "demo", "server");
    assert_eq!(
        server.authorization_policies,
        vec!["demo/converted_peer_authentication_server-open"]
    );
    let converted = policy(&r, "demo/converted_peer_authentication_server-open");
    assert_eq!(
        converted.rules[0].clauses[1].matches[0].destination_ports,
        vec![8080],
        "plaintext denied on 8080 only"
    );
}

#[test]
fn root_namespace_selector_policies_select_pods_of_every_namespace() {
    let r = resources(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: server}}
spec: {nodeName: n1}
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: demo, labels: {app: other}}
spec: {nodeName: n1}
status: {podIP: 198.18.1.3}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {namespaces: [legacy]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: local-only, namespace: elsewhere}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {namespaces: [legacy]}}]}]
"#,
    );
    let cases = [
        ("server", vec!["istio-system/mesh-wide"]),
        ("other", vec![]),
    ];
    for (pod, expected) in cases {
        assert_eq!(
            workload(&r, "demo", pod).authorization_policies,
            expected,
            "{pod}"
        );
    }
}

#[test]
fn finished_pods_are_not_workloads_and_shared_addresses_are_reported() {
    let r = resources(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo}
spec: {nodeName: n1}
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: jobs}
spec: {nodeName: n1}
status: {podIP: 198.18.1.2, phase: Succeeded}
---
apiVersion: v1
kind: Pod
metadata: {name: crashed, namespace: jobs}
spec: {nodeName: n1}
status: {podIP: 198.18.1.2, phase: Failed}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: demo}
spec: {nodeName: n1}
status: {podIP: 198.18.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: stale, namespace: other}
spec: {nodeName: n2}
status: {podIP: 198.18.1.5, phase: Running}
"#,
    );
    assert!(!r.addresses.contains_key("Kubernetes//Pod/jobs/done"));
    assert!(!r.addresses.contains_key("Kubernetes//Pod/jobs/crashed"));
    workload(&r, "demo", "server");
    // Both live claimants are published, and the conflict is named.
    workload(&r, "demo", "web");
    workload(&r, "other", "stale");
    let conflicts: Vec<&String> = r
        .warnings
        .iter()
        .filter(|w| w.contains("claim address"))
        .collect();
    assert_eq!(conflicts.len(), 1, "{:?}", r.warnings);
    assert!(
        conflicts[0].contains("Pod demo/web") && conflicts[0].contains("Pod other/stale"),
        "{}",
        conflicts[0]
    );
    assert!(conflicts[0].contains("198.18.1.5"), "{}", conflicts[0]);
}

#[test]
fn host_network_pods_share_their_nodes_address_and_are_never_enrolled() {
    let r = resources(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: kube-system, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: kube-proxy-n1, namespace: kube-system}
spec: {nodeName: n1, hostNetwork: true}
status: {podIP: 198.19.255.1, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: node-agent-n1, namespace: kube-system}
spec: {nodeName: n1, hostNetwork: true}
status: {podIP: 198.19.255.1, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: kube-system}
spec: {nodeName: n1}
status: {podIP: 198.18.1.9, phase: Running}
"#,
    );
    assert!(
        !r.warnings.iter().any(|w| w.contains("claim address")),
        "{:?}",
        r.warnings
    );
    let proxy = workload(&r, "kube-system", "kube-proxy-n1");
    assert_eq!(
        proxy.network_mode,
        workload::NetworkMode::HostNetwork as i32
    );
    assert_eq!(
        proxy.tunnel_protocol,
        workload::TunnelProtocol::None as i32,
        "a host-network pod in an ambient namespace is not enrolled"
    );
    let app = workload(&r, "kube-system", "app");
    assert_eq!(app.network_mode, workload::NetworkMode::Standard as i32);
    assert_eq!(app.tunnel_protocol, workload::TunnelProtocol::Hbone as i32);
}

#[test]
fn waypoints_are_published_where_their_traffic_goes() {
    let r = resources(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: pods, namespace: shop, labels: {istio.io/waypoint-for: workload}}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: v1
kind: Service
metadata: {name: waypoint, namespace: shop}
spec:
  clusterIP: 198.19.0.20
  selector: {gateway.networking.k8s.io/gateway-name: waypoint}
  ports: [{port: 15008}]
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: n1, serviceAccountName: waypoint}
status: {podIP: 198.18.1.20}
---
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: shop, labels: {app: app}}
spec: {nodeName: n1}
status: {podIP: 198.18.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: own, namespace: shop, labels: {app: own, istio.io/use-waypoint: pods}}
spec: {nodeName: n1}
status: {podIP: 198.18.1.3}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: shop}
spec: {clusterIP: 198.19.0.10, selector: {app: app}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: missing, namespace: shop, labels: {istio.io/use-waypoint: nowhere}}
spec: {clusterIP: 198.19.0.11, selector: {app: app}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: optout, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 198.19.0.12, selector: {app: app}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: bypod, namespace: shop, labels: {istio.io/use-waypoint: pods}}
spec: {clusterIP: 198.19.0.13, selector: {app: app}, ports: [{port: 80}]}
"#,
    );
    use workload::gateway_address::Destination;
    let by_vip = |vip: [u8; 4]| {
        Some(workload::GatewayAddress {
            destination: Some(Destination::Address(workload::NetworkAddress {
                network: String::new(),
                address: vip.to_vec(),
            })),
            hbone_mtls_port: 15008,
        })
    };
    let by_name = |ns: &str, name: &str| {
        Some(workload::GatewayAddress {
            destination: Some(Destination::Hostname(workload::NamespacedHostname {
                namespace: ns.into(),
                hostname: format!("{name}.{ns}.svc.cluster.local"),
            })),
            hbone_mtls_port: 15008,
        })
    };
    let cases = [
        // The namespace's waypoint, by its Service's VIP.
        ("app", by_vip([198, 19, 0, 20])),
        // Named but missing: by hostname, so it is refused, not bypassed.
        ("missing", by_name("shop", "nowhere")),
        ("optout", None),
        // A workload-only waypoint takes no service traffic.
        ("bypod", None),
        // The waypoint's own Service never goes through a waypoint.
        ("waypoint", None),
    ];
    for (name, expected) in cases {
        assert_eq!(
            service(&r, "shop", name).waypoint,
            expected,
            "service {name}"
        );
    }
    // Pod-addressed traffic: only a waypoint for workloads takes it.
    assert_eq!(workload(&r, "shop", "app").waypoint, None);
    assert_eq!(
        workload(&r, "shop", "own").waypoint,
        by_name("shop", "pods"),
        "a workload waypoint without a Service yet is published by hostname"
    );
    // The waypoint's own pod speaks HBONE and has no waypoint.
    let wp = workload(&r, "shop", "waypoint-0");
    assert_eq!(wp.waypoint, None);
    assert_eq!(wp.tunnel_protocol, workload::TunnelProtocol::Hbone as i32);
}

const ROUTED: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.10, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 198.19.0.11, selector: {app: web}, ports: [{port: 80}]}
"#;

fn route_names(r: &Resources, service: &str) -> Vec<String> {
    r.routes[service]
        .routes
        .iter()
        .map(|route| {
            let m = route.r#match.as_ref().unwrap();
            format!(
                "{}#{} {}",
                route.route,
                route.rule,
                m.path.as_ref().unwrap().value
            )
        })
        .collect()
}

#[test]
fn route_rules_are_ordered_by_the_gateway_api_precedence() {
    let r = resources(&format!(
        "{ROUTED}{}",
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api/}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api}, method: GET}]
    backendRefs: [{name: web, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: X-One, value: "1"}, {name: x-two, value: "2"}]
    - path: {type: PathPrefix, value: /api}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /api}}]
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/r.*"}}]
    backendRefs: [{name: web, port: 80}]
"#
    ));
    assert_eq!(
        route_names(&r, "shop/web.shop.svc.cluster.local"),
        [
            "shop/a#1 /api",  // Exact
            "shop/a#2 /r.*",  // a regular expression
            "shop/b#2 /api",  // same prefix length: the method first
            "shop/a#0 /api",  // then more headers
            "shop/a#0 /api",  // then the route by name (a before b)…
            "shop/b#1 /api/", // …and a trailing slash does not lengthen a prefix
            "shop/b#0 /",
        ]
    );
    let headers = &r.routes["shop/web.shop.svc.cluster.local"].routes[3]
        .r#match
        .as_ref()
        .unwrap()
        .headers;
    assert_eq!(
        headers[0].name, "x-one",
        "header names are compared lower case"
    );
}

#[test]
fn route_status_says_why_a_route_or_backend_is_refused() {
    let r = resources(&format!(
        "{ROUTED}{}",
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mixed, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: web}
  - {group: "", kind: Service, name: plain}
  - {group: "", kind: Service, name: ghost}
  - {group: "", kind: Service, name: web, port: 81}
  rules:
  - backendRefs:
    - {name: web, port: 80}
    - {name: missing, port: 80}
    - {name: web, port: 80, namespace: elsewhere}
"#
    ));
    let status = &r.route_status["shop/mixed"];
    type Conditions<'a> = Vec<(&'a str, bool, &'a str)>;
    let summary: Vec<(String, Conditions<'_>)> = status
        .iter()
        .map(|p| {
            (
                p.parent.clone(),
                p.conditions
                    .iter()
                    .map(|c| (c.kind, c.status, c.reason))
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "Service shop/web".to_string(),
                vec![
                    ("Accepted", true, "Accepted"),
                    ("ResolvedRefs", false, "BackendNotFound")
                ]
            ),
            (
                "Service shop/plain".to_string(),
                vec![("Accepted", false, "NoMatchingParent")]
            ),
            (
                "Service shop/ghost".to_string(),
                vec![("Accepted", false, "NoMatchingParent")]
            ),
            (
                "Service shop/web".to_string(),
                vec![("Accepted", false, "NoMatchingParent")]
            ),
        ]
    );
    assert!(
        status[1].conditions[0].message.contains("has no waypoint"),
        "{status:?}"
    );
    // The invalid backends stay, marked, so their share answers 500.
    let backends = &r.routes["shop/web.shop.svc.cluster.local"].routes[0].backends;
    let errors: Vec<bool> = backends.iter().map(|b| !b.error.is_empty()).collect();
    assert_eq!(errors, [false, true, true]);
    assert!(
        backends[2].error.contains("ReferenceGrant"),
        "{}",
        backends[2].error
    );
}

#[test]
fn policies_with_target_refs_go_to_waypoints_and_say_where_they_cannot() {
    let r = resources(&format!(
        "{ROUTED}{}",
        r#"
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-web, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}, {kind: Service, group: "", name: plain}]
  rules:
  - from: [{source: {principals: ["spiffe://cluster.local/ns/shop/sa/client"]}}]
    to: [{operation: {methods: [GET], paths: ["/api/*"]}}]
    when: [{key: "request.headers[x-env]", values: [prod]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: on-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: CUSTOM
  provider: {name: ext}
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nowhere, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: ingress}]
"#
    ));
    use weft_proto::weft::l7::v1::{policy::Action, string_match::Kind};
    let on_web = &r.l7_policies["shop/on-web"];
    assert_eq!(on_web.services, ["shop/web.shop.svc.cluster.local"]);
    assert!(on_web.waypoints.is_empty());
    let rule = &on_web.rules[0];
    assert_eq!(
        rule.from[0].principals[0].kind,
        Some(Kind::Exact("cluster.local/ns/shop/sa/client".into())),
        "principals lose their scheme, as at L4"
    );
    assert_eq!(rule.to[0].paths[0].kind, Some(Kind::Prefix("/api/".into())));
    assert_eq!(rule.when[0].key, "request.headers[x-env]");
    let on_waypoint = &r.l7_policies["shop/on-waypoint"];
    assert_eq!(on_waypoint.waypoints, ["shop/waypoint"]);
    assert_eq!(
        on_waypoint.action,
        Action::Deny as i32,
        "CUSTOM fails closed"
    );
    assert!(!r.l7_policies.contains_key("shop/nowhere"));
    for expected in [
        "targets Service shop/plain, which has no waypoint",
        "targets Gateway shop/ingress, which is not a waypoint",
        "CUSTOM needs an external authorizer",
    ] {
        assert!(
            r.warnings.iter().any(|w| w.contains(expected)),
            "{expected}: {:?}",
            r.warnings
        );
    }
    // Node proxies never receive them.
    assert!(!r.authorizations.contains_key("shop/on-web"));
}

#[test]
fn a_grpc_route_wins_over_an_http_route_on_the_same_parent() {
    let r = resources(&format!(
        "{ROUTED}{}",
        r#"
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 198.19.0.12, selector: {app: web}, ports: [{port: 80}, {port: 9090}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web}, {group: "", kind: Service, name: api, port: 9090}]
  rules:
  - backendRefs: [{name: web, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: page, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: web}
  - {group: "", kind: Service, name: api, port: 80}
  - {group: "", kind: Service, name: api, port: 9090}
  rules:
  - matches: [{path: {type: PathPrefix, value: /page}}]
    backendRefs: [{name: web, port: 80}]
"#
    ));
    let accepted = |key: &str| -> Vec<(String, bool, String)> {
        r.route_status[key]
            .iter()
            .map(|p| {
                let c = p.conditions.iter().find(|c| c.kind == "Accepted").unwrap();
                (p.parent.clone(), c.status, c.reason.to_owned())
            })
            .collect()
    };
    let row = |parent: &str, ok: bool, reason: &str| (parent.to_owned(), ok, reason.to_owned());
    assert_eq!(
        accepted("GRPCRoute/shop/rpc"),
        [
            row("Service shop/web", true, "Accepted"),
            row("Service shop/api", true, "Accepted"),
        ]
    );
    // Refused where the GRPCRoute is (the whole Service, or the same
    // port), taken on another port.
    assert_eq!(
        accepted("shop/page"),
        [
            row("Service shop/web", false, "Conflicted"),
            row("Service shop/api", true, "Accepted"),
            row("Service shop/api", false, "Conflicted"),
        ]
    );
    let web = &r.routes["shop/web.shop.svc.cluster.local"].routes;
    assert!(
        web.iter().all(|route| route.route == "shop/rpc"),
        "{web:#?}"
    );
    let api = &r.routes["shop/api.shop.svc.cluster.local"].routes;
    let on: Vec<(&str, &[u32])> = api
        .iter()
        .map(|route| (route.route.as_str(), route.ports.as_slice()))
        .collect();
    assert_eq!(on, [("shop/page", &[80][..]), ("shop/rpc", &[9090][..])]);
}

#[test]
fn section_names_pick_a_service_port_or_a_waypoint_listener() {
    let r = resources(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 198.19.0.10
  selector: {app: web}
  ports: [{name: http, port: 80}, {name: admin, port: 81}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: sections, namespace: shop}
spec:
  parentRefs:
  - {group: "", kind: Service, name: web, sectionName: http}
  - {group: "", kind: Service, name: web, sectionName: nope}
  - {group: "", kind: Service, name: web, sectionName: http, port: 81}
  - {name: waypoint, sectionName: mesh}
  - {name: waypoint, sectionName: other}
  rules:
  - backendRefs: [{name: web, port: 80}]
"#,
    );
    let accepted: Vec<(String, bool)> = r.route_status["shop/sections"]
        .iter()
        .map(|p| {
            (
                p.parent.clone(),
                p.conditions
                    .iter()
                    .any(|c| c.kind == "Accepted" && c.status),
            )
        })
        .collect();
    assert_eq!(
        accepted,
        [
            ("Service shop/web".to_string(), true),
            ("Service shop/web".to_string(), false),
            ("Service shop/web".to_string(), false),
            ("Gateway shop/waypoint".to_string(), true),
            ("Gateway shop/waypoint".to_string(), false),
        ]
    );
    // The port named `http` is 80: the route applies there only.
    let routes = &r.routes["shop/web.shop.svc.cluster.local"].routes;
    assert!(
        routes
            .iter()
            .any(|route| route.route == "shop/sections" && route.ports == [80]),
        "{routes:#?}"
    );
}

#[test]
fn waypoint_statuses_say_what_is_missing() {
    let r = resources(
        r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: pods-only, namespace: shop, labels: {istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: pods-only, namespace: shop}
spec: {clusterIP: 198.19.0.21, ports: [{port: 15008}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop, labels: {istio.io/use-waypoint: ghost}}
spec: {ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop, labels: {istio.io/use-waypoint: pods-only}}
spec: {ports: [{port: 5432}]}
"#,
    );
    let gateways = &r.statuses.gateways;
    // No Service named after it: not programmed, and nothing to bind to.
    assert_eq!(gateways["shop/waypoint"].address, None);
    assert_eq!(
        gateways["shop/waypoint"].message,
        "Service waypoint.shop.svc has no address yet"
    );
    assert_eq!(
        gateways["shop/pods-only"].address,
        Some(Ipv4Addr::new(198, 19, 0, 21).into())
    );
    let reasons: Vec<(&str, bool, &str)> = r
        .statuses
        .services
        .iter()
        .map(|(key, bound)| (key.as_str(), bound.bound, bound.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            ("shop/api", false, "WaypointNotFound"),
            ("shop/db", false, "WaypointTakesNoServices"),
            ("shop/web", false, "WaypointNotReady"),
        ],
        "waypoints' own Services carry no binding"
    );
}
