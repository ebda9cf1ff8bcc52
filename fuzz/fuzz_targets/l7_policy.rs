//! Waypoint policies and request paths as an attacker would write them: a
//! policy (YAML, translated by the control service, converted by the
//! waypoint) and a request must never panic; path normalization must be
//! idempotent and leave no dot segment; and a request whose path only
//! differs by what normalization removes is decided the same way.
#![no_main]

use std::sync::Arc;

use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use waypoint::{
    normalize::{normalize, PathNormalization},
    policy::{evaluate, Policy, RequestAttrs},
};
use weft_control::{
    source::{yaml::parse_file, ConfigSnapshot},
    translate::{translate, MeshConfig},
};

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: istio-waypoint}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}
"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (policy, request) = text.split_once("\n===\n").unwrap_or((text, "GET /"));
    let mut first = request.lines().next().unwrap_or("GET /").split_whitespace();
    let method = first.next().unwrap_or("GET");
    let raw_path = first.next().unwrap_or("/");
    for mode in [
        PathNormalization::Base,
        PathNormalization::MergeSlashes,
        PathNormalization::DecodeAndMergeSlashes,
    ] {
        if let Ok(once) = normalize(raw_path, mode) {
            assert_eq!(normalize(&once, mode).as_deref(), Ok(once.as_str()), "idempotent");
            if once.starts_with('/') {
                assert!(
                    !once.split('/').any(|s| s == "." || s == ".."),
                    "a dot segment survived in {once:?}"
                );
            }
        }
    }
    let Ok(path) = normalize(raw_path, PathNormalization::Base) else {
        return;
    };
    let mut snapshot = ConfigSnapshot::default();
    let config = format!("{MESH}---\n{policy}");
    for object in parse_file(std::path::Path::new("fuzz.yaml"), &config).into_iter().flatten() {
        snapshot.objects.insert(object.key(), object);
    }
    let resources = translate(&snapshot, &MeshConfig::default());
    let policies: Vec<Arc<Policy>> = resources
        .l7_policies
        .values()
        .filter_map(|p| Policy::try_from(p.clone()).ok())
        .map(Arc::new)
        .collect();
    let headers = HeaderMap::new();
    let attrs = |path: &str| {
        evaluate(
            &policies,
            &RequestAttrs {
                principal: "cluster.local/ns/shop/sa/client",
                namespace: "shop",
                source_ip: "198.18.1.2".parse().expect("an address"),
                destination_ip: "198.19.0.10".parse().expect("an address"),
                destination_port: 80,
                host: "web.shop",
                method,
                path,
                headers: &headers,
                opaque: false,
            },
        )
    };
    // The same canonical path, however it was spelled, is decided alike.
    let dotted = format!("/x/..{path}");
    if let Ok(again) = normalize(&dotted, PathNormalization::Base) {
        if again == path {
            assert_eq!(attrs(&path), attrs(&again));
        }
    }
});
