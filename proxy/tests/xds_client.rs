//! The proxy's delta-ADS client against the real control service over TLS
//! on loopback: initial sync, updates, removals, NACKs, authentication and
//! riding out a control-service restart.

mod support;

use std::{net::IpAddr, time::Duration};

use support::{eventually, xds_client, TestControl, MESH};
use weft_control::translate::{translate, MeshConfig};
use weft_proto::istio::workload;

const SERVER_IP: [u8; 4] = [198, 18, 2, 2];

#[tokio::test]
async fn syncs_then_follows_changes_in_the_config_directory() {
    let tc = TestControl::start().await;
    let (state, mut status, _task) = xds_client(tc.plane("n1"), "n1");
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(|s| s.synced))
        .await
        .expect("synced within 10 s")
        .unwrap();
    let server = state
        .workload_by_ip(IpAddr::from(SERVER_IP))
        .expect("server workload");
    assert_eq!(
        server.identity.to_string(),
        "spiffe://cluster.local/ns/demo/sa/server"
    );
    let (service, port) = state
        .service_by_vip("198.19.0.10:80".parse().unwrap())
        .expect("service by VIP:port");
    assert_eq!((service.name.as_str(), port.target_port), ("server", 8080));
    assert_eq!(state.endpoints(service.key()).len(), 1);

    // A new pod appears in the directory…
    let extra = "apiVersion: v1\nkind: Pod\nmetadata: {name: extra, namespace: demo, labels: {app: server}}\nspec: {nodeName: n1}\nstatus: {podIP: 198.18.1.9}\n";
    std::fs::write(tc.config_dir().join("extra.yaml"), extra).unwrap();
    eventually(&state, "the new pod", |s| {
        s.workload_by_ip([198, 18, 1, 9].into()).is_some()
    })
    .await;
    assert_eq!(
        state.endpoints(service.key()).len(),
        2,
        "and backs the service"
    );
    // …and goes away again.
    std::fs::remove_file(tc.config_dir().join("extra.yaml")).unwrap();
    eventually(&state, "the pod removed", |s| {
        s.workload_by_ip([198, 18, 1, 9].into()).is_none()
    })
    .await;
    assert_eq!(status.borrow().nacks, 0);
}

#[tokio::test]
async fn a_bad_resource_is_nacked_and_the_rest_applied() {
    let tc = TestControl::start().await;
    let (state, mut status, _task) = xds_client(tc.plane("n1"), "n1");
    status.wait_for(|s| s.synced).await.unwrap();

    // Serve the directory's resources plus one this proxy must reject (an
    // address that is 5 bytes long) and one more good one.
    let snapshot = tc.control().snapshot();
    let mut resources = translate(&snapshot, &MeshConfig::default());
    let broken = workload::Workload {
        uid: "Kubernetes//Pod/demo/broken".into(),
        namespace: "demo".into(),
        addresses: vec![vec![198, 18, 1, 2, 3]],
        ..Default::default()
    };
    let good = workload::Workload {
        uid: "Kubernetes//Pod/demo/good".into(),
        namespace: "demo".into(),
        addresses: vec![vec![198, 18, 1, 77]],
        ..Default::default()
    };
    for w in [broken, good] {
        resources.addresses.insert(
            w.uid.clone(),
            workload::Address {
                r#type: Some(workload::address::Type::Workload(w)),
            },
        );
    }
    tc.control().store().update(resources);
    eventually(&state, "the good workload", |s| {
        s.workload("Kubernetes//Pod/demo/good").is_some()
    })
    .await;
    assert!(state.workload("Kubernetes//Pod/demo/broken").is_none());
    assert!(
        state.workload_by_ip(IpAddr::from(SERVER_IP)).is_some(),
        "earlier config is kept"
    );
    status.wait_for(|s| s.nacks == 1).await.unwrap();
    // The server handles the NACK asynchronously: give it a moment.
    let mut clients = tc.control().clients();
    for _ in 0..100 {
        if clients[0].last_nack.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        clients = tc.control().clients();
    }
    let nack = clients[0]
        .last_nack
        .clone()
        .expect("the server recorded the NACK");
    assert!(
        nack.contains("Kubernetes//Pod/demo/broken") && nack.contains("5 bytes"),
        "{nack}"
    );
    assert_eq!(clients[0].node, "n1");
    assert_eq!(clients[0].proxy_id, "ztunnel~n1");
}

#[tokio::test]
async fn an_unknown_token_is_refused() {
    let tc = TestControl::start().await;
    let mut plane = tc.plane("n1");
    plane.token = "not-a-token".into();
    let (state, mut status, _task) = xds_client(plane, "n1");
    let status = tokio::time::timeout(
        Duration::from_secs(10),
        status.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    let error = status.last_error.unwrap();
    assert!(error.contains("node token is not known"), "{error}");
    assert!(!status.synced);
    assert_eq!(state.counts()["workloads"], 0);
}

#[tokio::test]
async fn a_restarted_control_service_is_rejoined_and_changes_made_meanwhile_arrive() {
    let mut tc = TestControl::start().await;
    let (state, mut status, _task) = xds_client(tc.plane("n1"), "n1");
    status.wait_for(|s| s.synced).await.unwrap();
    let before = state.counts();

    tc.stop();
    status.wait_for(|s| !s.connected).await.unwrap();
    // While the control service is away the proxy keeps what it had.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state.counts(), before);
    assert!(state.workload_by_ip(IpAddr::from(SERVER_IP)).is_some());

    // Config changes while it is down: the server pod moves to a new IP.
    let moved = MESH.replace("198.18.2.2", "198.18.2.3");
    std::fs::write(tc.config_dir().join("mesh.yaml"), moved).unwrap();
    tc.restart().await;
    eventually(&state, "the moved pod", |s| {
        s.workload_by_ip([198, 18, 2, 3].into()).is_some()
    })
    .await;
    assert!(state.workload_by_ip(IpAddr::from(SERVER_IP)).is_none());
    assert!(status.borrow().connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_every_connected_client() {
    let tc = TestControl::start().await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        let (state, mut status, task) = xds_client(tc.plane(node), node);
        status.wait_for(|s| s.synced).await.unwrap();
        clients.push((state, task));
    }
    assert_eq!(tc.control().clients().len(), 20);
    let extra = "apiVersion: v1\nkind: Pod\nmetadata: {name: extra, namespace: demo}\nspec: {nodeName: n1}\nstatus: {podIP: 198.18.1.50}\n";
    std::fs::write(tc.config_dir().join("extra.yaml"), extra).unwrap();
    for (state, _) in &clients {
        eventually(state, "the new pod on every client", |s| {
            s.workload_by_ip([198, 18, 1, 50].into()).is_some()
        })
        .await;
    }
}
