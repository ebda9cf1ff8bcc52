//! HBONE over real TLS and HTTP/2 on loopback, with certificates from the
//! real CA: tunnels carry bytes both ways with half-close, identities are
//! enforced on both ends, and the pool shares one handshake.

mod support;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{HeaderName, HeaderValue, StatusCode};
use support::TestControl;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use weft_proto::spiffe::Identity;
use weft_proxy::{
    copy,
    hbone::{
        client::{handshake, HboneError},
        pool::{Pool, PoolKey},
        server,
        tls::{client_config, server_config, TrustBundle, WorkloadCertResolver},
    },
    identity::{ca_client::CaClient, WorkloadCertificate},
};

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "demo", sa)
}

/// An app that answers "<request reversed>" once the client half-closes.
async fn app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut request = Vec::new();
                s.read_to_end(&mut request).await.unwrap();
                request.reverse();
                s.write_all(&request).await.unwrap();
            });
        }
    });
    addr
}

struct Fixture {
    tc: TestControl,
    trust: TrustBundle,
    client_cert: Arc<WorkloadCertificate>,
    hbone: SocketAddr,
    app: SocketAddr,
}

/// An HBONE server for demo/server that forwards every CONNECT to its
/// authority (only the app's address is accepted).
async fn fixture() -> Fixture {
    let tc = TestControl::start().await;
    let client_cert = Arc::new(
        CaClient::new(tc.plane("n1"))
            .sign(&id("client"))
            .await
            .unwrap(),
    );
    let server_cert = Arc::new(
        CaClient::new(tc.plane("n2"))
            .sign(&id("server"))
            .await
            .unwrap(),
    );
    let trust = TrustBundle::new(&client_cert.roots, "cluster.local").unwrap();
    let resolver = Arc::new(WorkloadCertResolver::new(move || Some(server_cert.clone())));
    let acceptor = TlsAcceptor::from(server_config(resolver, &trust).unwrap());
    let app = app().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone = listener.local_addr().unwrap();
    let server_trust = trust.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, trust) = (acceptor.clone(), server_trust.clone());
            tokio::spawn(async move {
                let result = server::serve(tcp, acceptor, &trust, move |connect| async move {
                    if connect.authority != app.to_string() {
                        return connect.reject(StatusCode::BAD_REQUEST);
                    }
                    assert_eq!(connect.peer, id("client"));
                    assert_eq!(
                        connect.headers.get("x-test").map(|v| v.as_bytes()),
                        Some(&b"yes"[..])
                    );
                    let mut upstream = TcpStream::connect(app).await.unwrap();
                    let tunnel = connect.accept().unwrap();
                    copy::tcp_h2(&mut upstream, tunnel, &copy::Meter::none())
                        .await
                        .unwrap();
                })
                .await;
                if let Err(err) = result {
                    eprintln!("server refused: {err}");
                }
            });
        }
    });
    Fixture {
        tc,
        trust,
        client_cert,
        hbone,
        app,
    }
}

fn key(f: &Fixture, destination: Identity) -> PoolKey {
    PoolKey {
        source_workload: "client".into(),
        source: id("client"),
        destination,
        address: f.hbone,
    }
}

fn headers() -> Vec<(HeaderName, HeaderValue)> {
    vec![(
        HeaderName::from_static("x-test"),
        HeaderValue::from_static("yes"),
    )]
}

async fn roundtrip(
    pool: &Pool,
    f: &Fixture,
    destination: Identity,
    payload: &[u8],
) -> Result<(Vec<u8>, u64), HboneError> {
    let (cert, trust, addr) = (f.client_cert.clone(), f.trust.clone(), f.hbone);
    let dest = destination.clone();
    let mut stream = pool
        .stream(&key(f, destination), f.app, &headers(), || {
            let (cert, trust, dest) = (cert.clone(), trust.clone(), dest.clone());
            async move {
                let config = client_config(&cert, &dest, &trust)
                    .map_err(|e| HboneError::Config(e.to_string()))?;
                let tcp = TcpStream::connect(addr)
                    .await
                    .map_err(|source| HboneError::Connect { addr, source })?;
                handshake(tcp, addr, config).await
            }
        })
        .await?;
    let connection = stream.connection_id();
    let mut tunnel = stream.take();
    tunnel
        .send
        .send_data(bytes::Bytes::copy_from_slice(payload), true)
        .unwrap();
    let mut reply = Vec::new();
    while let Some(chunk) = tunnel.recv.data().await {
        let chunk = chunk.unwrap();
        tunnel
            .recv
            .flow_control()
            .release_capacity(chunk.len())
            .unwrap();
        reply.extend_from_slice(&chunk);
    }
    Ok((reply, connection))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_carry_bytes_and_share_one_handshake() {
    let f = fixture().await;
    let pool = Pool::default();
    let (reply, first) = roundtrip(&pool, &f, id("server"), b"hello").await.unwrap();
    assert_eq!(reply, b"olleh");
    // A larger payload exercises flow control and buffer growth.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (reply, _) = roundtrip(&pool, &f, id("server"), &big).await.unwrap();
    assert_eq!(reply.len(), big.len());
    assert!(reply.iter().rev().eq(big.iter()));
    for _ in 0..48 {
        let (_, connection) = roundtrip(&pool, &f, id("server"), b"again").await.unwrap();
        assert_eq!(connection, first, "every stream reuses the one connection");
    }
    let stats = pool.stats();
    assert_eq!(
        stats.handshakes.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(stats.streams.load(std::sync::atomic::Ordering::Relaxed), 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_streams_wait_for_one_handshake_and_overflow_opens_another() {
    let f = Arc::new(fixture().await);
    let mut pool = Pool::default();
    pool.max_streams = 4;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (pool, f) = (pool.clone(), f.clone());
            tokio::spawn(async move { roundtrip(&pool, &f, id("server"), b"x").await.unwrap() })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        pool.stats()
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Hold 4 streams open: the 5th needs a second connection.
    let mut held = Vec::new();
    for _ in 0..4 {
        let (cert, trust, addr) = (f.client_cert.clone(), f.trust.clone(), f.hbone);
        held.push(
            pool.stream(&key(&f, id("server")), f.app, &headers(), || {
                let (cert, trust) = (cert.clone(), trust.clone());
                async move {
                    let config = client_config(&cert, &id("server"), &trust).unwrap();
                    let tcp = TcpStream::connect(addr).await.unwrap();
                    handshake(tcp, addr, config).await
                }
            })
            .await
            .unwrap(),
        );
    }
    roundtrip(&pool, &f, id("server"), b"overflow")
        .await
        .unwrap();
    assert_eq!(
        pool.stats()
            .handshakes
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert_eq!(pool.connections(), 2);
}

#[tokio::test]
async fn a_server_with_the_wrong_identity_is_refused() {
    let f = fixture().await;
    let err = roundtrip(&Pool::default(), &f, id("someone-else"), b"x")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the server is spiffe://cluster.local/ns/demo/sa/server, but the destination must be spiffe://cluster.local/ns/demo/sa/someone-else"),
        "{err}"
    );
}

#[tokio::test]
async fn a_non_200_answer_is_a_failure() {
    let f = fixture().await;
    let pool = Pool::default();
    let (cert, trust, addr) = (f.client_cert.clone(), f.trust.clone(), f.hbone);
    let wrong_authority: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let err = pool
        .stream(&key(&f, id("server")), wrong_authority, &headers(), || {
            let (cert, trust) = (cert.clone(), trust.clone());
            async move {
                let config = client_config(&cert, &id("server"), &trust).unwrap();
                let tcp = TcpStream::connect(addr).await.unwrap();
                handshake(tcp, addr, config).await
            }
        })
        .await
        .err()
        .expect("400 is not success");
    assert!(
        matches!(
            err,
            HboneError::Status {
                status: StatusCode::BAD_REQUEST,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn plaintext_and_unauthenticated_clients_get_nothing() {
    let f = fixture().await;
    // Plaintext HTTP/2 preface straight at the TLS port.
    let mut tcp = TcpStream::connect(f.hbone).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "only a TLS alert or a close: {:?}",
        &buf[..n]
    );

    // TLS without a client certificate.
    let config = rustls::ClientConfig::builder_with_provider(weft_proxy::hbone::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(f.trust.roots.clone())
        .with_no_client_auth();
    let tcp = TcpStream::connect(f.hbone).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("server").unwrap();
    let result = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        tls.write_all(b"x").await?;
        let mut buf = [0u8; 16];
        tls.read(&mut buf).await
    }
    .await;
    assert!(
        !matches!(result, Ok(n) if n > 0),
        "a certificate-less client must not be served: {result:?}"
    );
}

/// A client with a valid certificate that completes TLS and then says
/// nothing holds the server's connection no longer than the handshake
/// timeout; a server that never answers a CONNECT holds the client's
/// stream no longer than the stream timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_stall_after_tls_are_cut_off() {
    use weft_proxy::hbone::{HANDSHAKE_TIMEOUT, STREAM_TIMEOUT};
    let f = fixture().await;
    let silent_client = async {
        let config = client_config(&f.client_cert, &id("server"), &f.trust).unwrap();
        let tcp = TcpStream::connect(f.hbone).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("server").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("TLS with a valid certificate");
        let started = std::time::Instant::now();
        let mut buf = [0u8; 64];
        // The server's HTTP/2 SETTINGS may come first; then the close.
        loop {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, tls.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
                Err(_) => panic!("the server kept a silent client past its handshake timeout"),
            }
        }
        started.elapsed()
    };

    // A server that completes both handshakes and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute = listener.local_addr().unwrap();
    let server_cert = Arc::new(
        CaClient::new(f.tc.plane("n2"))
            .sign(&id("server"))
            .await
            .unwrap(),
    );
    let resolver = Arc::new(WorkloadCertResolver::new(move || Some(server_cert.clone())));
    let acceptor = TlsAcceptor::from(server_config(resolver, &f.trust).unwrap());
    let trust = f.trust.clone();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = server::serve(tcp, acceptor, &trust, |connect| async move {
            // Holds the request unanswered for longer than anyone waits.
            tokio::time::sleep(STREAM_TIMEOUT * 4).await;
            drop(connect);
        })
        .await;
    });
    let unanswered = async {
        let config = client_config(&f.client_cert, &id("server"), &f.trust).unwrap();
        let tcp = TcpStream::connect(mute).await.unwrap();
        let connection = handshake(tcp, mute, config).await.unwrap();
        let started = std::time::Instant::now();
        let result =
            weft_proxy::hbone::client::connect_stream(&connection.send, mute, f.app, &[]).await;
        (result.map(|_| ()), started.elapsed())
    };

    let (silent_for, (result, waited)) = tokio::join!(silent_client, unanswered);
    assert!(
        silent_for <= HANDSHAKE_TIMEOUT + Duration::from_secs(2),
        "closed after {silent_for:?}"
    );
    match result {
        Err(HboneError::StreamTimeout { .. }) => {}
        other => panic!("expected a stream timeout, got {other:?}"),
    }
    assert!(waited >= STREAM_TIMEOUT && waited <= STREAM_TIMEOUT + Duration::from_secs(2));
}
