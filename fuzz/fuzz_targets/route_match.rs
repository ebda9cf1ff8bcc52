//! Routes as users write them, and requests as clients send them: an
//! HTTPRoute (YAML, translated by the control service, converted by the
//! waypoint) and a request line must never panic, and a request the
//! waypoint routes must really match the route it chose.
#![no_main]

use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use waypoint::{
    matcher::{matches, select, RequestInfo, Selection},
    routes::ServiceRoutes,
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
    // `ROUTE YAML \n===\n METHOD TARGET \n header: value…`
    let (route, request) = text.split_once("\n===\n").unwrap_or((text, "GET /"));
    let mut snapshot = ConfigSnapshot::default();
    let config = format!("{MESH}---\n{route}");
    for object in parse_file(std::path::Path::new("fuzz.yaml"), &config).into_iter().flatten() {
        snapshot.objects.insert(object.key(), object);
    }
    let resources = translate(&snapshot, &MeshConfig::default());
    let Some(compiled) = resources.routes.get("shop/web.shop.svc.cluster.local") else {
        return;
    };
    let Ok(routes) = ServiceRoutes::try_from(compiled.clone()) else {
        return;
    };
    let mut lines = request.lines();
    let mut first = lines.next().unwrap_or("GET /").split_whitespace();
    let method = first.next().unwrap_or("GET");
    let target = first.next().unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::try_from(name.trim()),
                http::HeaderValue::try_from(value.trim()),
            ) {
                headers.append(n, v);
            }
        }
    }
    let info = RequestInfo {
        method,
        path,
        query,
        headers: &headers,
        port: 80,
        caller_namespace: "shop",
    };
    if let Selection::Route(route) = select(&routes, &info) {
        assert!(matches(&route.matcher, &info), "chose a route that does not match");
    }
});
