//! Weft's `cgroup/connect4` program, loaded into this kernel and attached to
//! a topology's pods cgroup, rewrites a real `connect()` of an enrolled pod's
//! process to ztunnel's outbound port, and nothing else.

mod support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};

use support::probe;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_tests::{apps, privilege::require_privileged, topology::Topology};
use ztunnel::capture::ebpf::{netns_cookie_of, EbpfCapture, NetnsCookie};

const OUTBOUND_PORT: u16 = 15001;

/// A destination nobody listens on: only capture can make a connection to
/// it succeed.
const UNROUTED: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 250, 9), 80);

fn netns_cookie(pod: &weft_tests::topology::Pod) -> NetnsCookie {
    pod.enter(|| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("a socket in the pod");
        netns_cookie_of(std::os::fd::AsFd::as_fd(&socket)).expect("SO_NETNS_COOKIE")
    })
    .expect("entering the pod")
}

fn weft_programs_loaded() -> usize {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| info.name_as_str() == Some(weft_ebpf_common::CONNECT4_PROGRAM))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect4_rewrites_an_enrolled_pods_connect_and_nothing_else() -> anyhow::Result<()> {
    require_privileged();
    let topo = Topology::builder()
        .node("n1")
        .pod("default/enrolled", "n1")
        .pod("default/bystander", "n1")
        .build()?;
    let enrolled = topo.pod("default/enrolled");
    let bystander = topo.pod("default/bystander");

    // ztunnel's stand-in: the outbound listener on the enrolled pod's loopback.
    let outbound = enrolled.enter(|| TcpListener::bind((Ipv4Addr::LOCALHOST, OUTBOUND_PORT)))??;
    outbound.set_nonblocking(true)?;
    let outbound = tokio::net::TcpListener::from_std(outbound)?;
    // A real server in the bystander pod, for connections that must go direct.
    let direct = bystander.enter(|| TcpListener::bind((bystander.ip(), 8080)))??;
    let _direct = apps::spawn_echo(direct, "bystander")?;
    let direct_addr = SocketAddr::from((bystander.ip(), 8080));

    let before = weft_programs_loaded();
    let mut capture = EbpfCapture::load()?;
    capture.attach(topo.pods_cgroup())?;
    let cookie = netns_cookie(enrolled);
    capture.enroll(cookie, OUTBOUND_PORT)?;
    assert!(capture.is_enrolled(cookie));

    // 1. The enrolled pod's connect() to an unrouted address lands on the
    //    outbound listener, and the original destination is recorded.
    let accept = tokio::spawn(async move {
        let (mut stream, _) = outbound.accept().await?;
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await?;
        stream.write_all(b"captured").await?;
        anyhow::Ok((String::from_utf8(request)?, outbound))
    });
    let report = probe(enrolled, SocketAddr::V4(UNROUTED), "to the void").await?;
    let (request, outbound) = accept.await??;
    assert_eq!(request, "to the void");
    assert_eq!(report.reply, "captured");
    assert_eq!(
        report.peer,
        SocketAddr::from((Ipv4Addr::LOCALHOST, OUTBOUND_PORT))
    );
    assert_eq!(capture.original_dst(report.socket_cookie)?, Some(UNROUTED));

    // 2. A process in the same network namespace but outside the pods'
    //    cgroup (as ztunnel is) goes direct.
    let mut outsider = enrolled.netns().command(env!("CARGO_BIN_EXE_weft-probe"));
    outsider.args(["connect", &direct_addr.to_string(), "--send", "outsider"]);
    let out = tokio::process::Command::from(outsider).output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let outsider = weft_tests::apps::ProbeReport::parse(&out.stdout)?;
    assert_eq!(outsider.peer, direct_addr);
    assert_eq!(capture.original_dst(outsider.socket_cookie)?, None);

    // 3. A pod in the cgroup that is not enrolled goes direct.
    let report = probe(bystander, direct_addr, "unenrolled").await?;
    assert_eq!(report.peer, direct_addr);
    assert!(report.reply.starts_with("bystander saw"));

    // 4. Loopback destinations of the enrolled pod stay local.
    let local = enrolled.enter(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 9090)))??;
    let _local = apps::spawn_echo(local, "local")?;
    let report = probe(
        enrolled,
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9090)),
        "lo",
    )
    .await?;
    assert_eq!(report.reply, "local saw 127.0.0.1: lo");

    // 5. Released, the pod's next connect() goes direct.
    capture.release(cookie)?;
    assert!(!capture.is_enrolled(cookie));
    let report = probe(enrolled, direct_addr, "released").await?;
    assert_eq!(report.peer, direct_addr);
    assert_eq!(
        report.reply,
        format!("bystander saw {}: released", enrolled.ip())
    );

    // 6. Enrolled again, then the programs dropped: detached and unloaded.
    capture.enroll(cookie, OUTBOUND_PORT)?;
    assert_eq!(weft_programs_loaded(), before + 1);
    drop(capture);
    assert_eq!(
        weft_programs_loaded(),
        before,
        "dropping the loader unloads its program"
    );
    let report = probe(enrolled, direct_addr, "after unload").await?;
    assert_eq!(report.peer, direct_addr);
    drop(outbound);
    topo.teardown()?;
    Ok(())
}
