//! Certificates from the real CA over TLS gRPC: what it signs, what it
//! refuses and why, and renewal with a short lifetime.

mod support;

use std::time::{Duration, SystemTime};

use support::TestControl;
use weft_proto::{
    istio::v1::auth::{
        istio_certificate_service_client::IstioCertificateServiceClient, IstioCertificateRequest,
    },
    spiffe::Identity,
};
use weft_proxy::identity::{ca_client::CaClient, CertificateManager};

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa)
}

#[tokio::test]
async fn signs_an_identity_of_a_workload_on_the_callers_node() {
    let tc = TestControl::start().await;
    let cert = CaClient::new(tc.plane("n1"))
        .sign(&id("demo", "client"))
        .await
        .unwrap();
    assert_eq!(cert.identity, id("demo", "client"));
    assert_eq!(cert.chain.len(), 1, "the leaf; the root travels separately");
    assert_eq!(cert.roots.len(), 1);
    let lifetime = cert.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(
        lifetime > Duration::from_secs(23 * 3600) && lifetime <= Duration::from_secs(24 * 3600),
        "{lifetime:?}"
    );
}

#[tokio::test]
async fn refuses_an_identity_that_runs_on_another_node() {
    let tc = TestControl::start().await;
    // demo/server runs on n2; n1 asks for it.
    let err = CaClient::new(tc.plane("n1"))
        .sign(&id("demo", "server"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("refusing to sign spiffe://cluster.local/ns/demo/sa/server for node n1"),
        "{err}"
    );
    assert!(err.contains("PermissionDenied"), "{err}");
    // And an identity nobody has.
    let err = CaClient::new(tc.plane("n2"))
        .sign(&id("demo", "ghost"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no workload with that identity is scheduled on n2"),
        "{err}"
    );
}

#[tokio::test]
async fn refuses_another_trust_domain_a_malformed_csr_and_an_unknown_caller() {
    let tc = TestControl::start().await;
    let err = CaClient::new(tc.plane("n1"))
        .sign(&Identity::new("evil.example", "demo", "client"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("outside this mesh's trust domain cluster.local"),
        "{err}"
    );

    let channel = tc.plane("n1").connect().await.unwrap();
    let mut raw = IstioCertificateServiceClient::new(channel);
    for (csr, expect) in [
        ("not a csr", "not a valid, self-signed PKCS#10 request"),
        (
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "not a valid",
        ),
    ] {
        let status = raw
            .create_certificate(IstioCertificateRequest {
                csr: csr.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains(expect), "{}", status.message());
    }

    let mut stranger = tc.plane("n1");
    stranger.token = "guessed".into();
    let err = CaClient::new(stranger)
        .sign(&id("demo", "client"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Unauthenticated") && err.contains("node token is not known"),
        "{err}"
    );
}

#[tokio::test]
async fn certificates_are_renewed_at_half_life() {
    let tc = TestControl::start_with(|c| c.cert_lifetime = Duration::from_secs(4)).await;
    let manager = CertificateManager::new(CaClient::new(tc.plane("n1")));
    let identity = id("demo", "client");
    let first = manager.fetch(&identity).await.unwrap();
    let remaining = first.not_after.duration_since(SystemTime::now()).unwrap();
    assert!(
        remaining <= Duration::from_secs(4),
        "the CA capped the lifetime: {remaining:?}"
    );
    // Renewal is due after about 2 s; well before expiry a new one is held.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let current = manager.current(&identity).unwrap();
        if current.serial != first.serial {
            assert!(current.not_after > first.not_after);
            assert!(
                SystemTime::now() < first.not_after,
                "renewed before the old one expired"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal observed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Concurrent fetches share the cached certificate.
    let (a, b) = tokio::join!(manager.fetch(&identity), manager.fetch(&identity));
    assert_eq!(a.unwrap().serial, b.unwrap().serial);
}

#[tokio::test]
async fn a_valid_certificate_is_kept_while_the_ca_is_away() {
    let mut tc = TestControl::start_with(|c| c.cert_lifetime = Duration::from_secs(6)).await;
    let mut manager = CertificateManager::new(CaClient::new(tc.plane("n1")));
    manager.backoff = (Duration::from_millis(100), Duration::from_millis(400));
    let identity = id("demo", "client");
    let first = manager.fetch(&identity).await.unwrap();
    tc.stop();
    // Past the renewal point (3 s), renewal fails, the old one stays.
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let held = manager.current(&identity).unwrap();
    assert_eq!(held.serial, first.serial);
    let info = manager.info();
    assert!(
        info[0].last_error.is_some(),
        "the failure is visible: {info:?}"
    );
    assert_eq!(manager.fetch(&identity).await.unwrap().serial, first.serial);
    // The CA returns: the next retry renews.
    tc.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while manager.current(&identity).unwrap().serial == first.serial {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal after the CA came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(manager.info()[0].last_error.is_none());
}
