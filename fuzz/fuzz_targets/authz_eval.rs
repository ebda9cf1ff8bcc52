//! Arbitrary text as AuthorizationPolicy / PeerAuthentication YAML: it is
//! translated as the control service would, converted as ztunnel would, and
//! evaluated against a few connections. Nothing may panic, and a DENY
//! policy that matches must never be overruled.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use weft_control::{
    source::{yaml::parse_file, ConfigSnapshot},
    translate::{translate, MeshConfig},
};
use weft_proto::spiffe::Identity;
use weft_proxy::{
    authz::{evaluate, Connection, Decision},
    state::{Authorization, PolicyAction},
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut snapshot = ConfigSnapshot::default();
    for object in parse_file(std::path::Path::new("fuzz.yaml"), text).into_iter().flatten() {
        snapshot.objects.insert(object.key(), object);
    }
    let resources = translate(&snapshot, &MeshConfig::default());
    let policies: Vec<Arc<Authorization>> = resources
        .authorizations
        .into_values()
        .filter_map(|p| Authorization::try_from(p).ok())
        .map(Arc::new)
        .collect();
    let identity = Identity::new("cluster.local", "demo", "client");
    for (src_identity, port) in [(Some(&identity), 80u16), (None, 8080)] {
        let connection = Connection {
            src_ip: "198.18.1.2".parse().unwrap(),
            src_identity,
            dst_ip: "198.18.2.2".parse().unwrap(),
            dst_port: port,
        };
        let decision = evaluate(&policies, &connection);
        let denies: Vec<Arc<Authorization>> = policies
            .iter()
            .filter(|p| p.action == PolicyAction::Deny && !p.dry_run)
            .cloned()
            .collect();
        // Adding only ALLOW policies can never turn a DENY into an allow.
        if !evaluate(&denies, &connection).is_allowed() {
            assert!(matches!(decision, Decision::Deny { .. }), "a matching DENY was overruled");
        }
    }
});
