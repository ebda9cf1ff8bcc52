//! Sockets ztunnel makes in pods' namespaces, and the socket marks that keep
//! them out of capture.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::netns::InpodNetns;

/// Mark on ztunnel's own outbound sockets: capture rules let them pass.
pub const SKIP_MARK: u32 = 0x539;
/// Mark on transparent upstream sockets (inbound): their replies are routed
/// back to ztunnel inside the pod.
pub const TPROXY_MARK: u32 = 0x111;
/// The mask both marks are matched under.
pub const MARK_MASK: u32 = 0xfff;

/// A listener bound inside the pod. `SO_REUSEPORT`: during a rolling
/// update the next ztunnel binds the same ports in the pod beside this one
/// and takes over when this one closes its listeners (the kernel lets only
/// sockets of the same user join the group).
pub fn listen(netns: &InpodNetns, addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = netns
        .run(|| Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)))??;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// How long ztunnel waits for a TCP connection it opens (to an
/// application, a passthrough destination or a peer's 15008).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects to `dst` from inside the pod, with `mark`.
pub async fn connect(netns: &InpodNetns, dst: SocketAddr, mark: u32) -> io::Result<TcpStream> {
    connect_then(netns, dst, mark, |_| ())
        .await
        .map(|(s, ())| s)
}

/// As [`connect`], calling `bound` with the socket's local address as soon
/// as the kernel has chosen it (before the connection can be accepted
/// anywhere).
pub async fn connect_then<T>(
    netns: &InpodNetns,
    dst: SocketAddr,
    mark: u32,
    bound: impl FnOnce(SocketAddr) -> T,
) -> io::Result<(TcpStream, T)> {
    let socket = new_socket(netns, dst, mark)?;
    match socket.connect(&dst.into()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(err) => return Err(err),
    }
    let local = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("a TCP socket has an IP address"))?;
    let registered = bound(local);
    let stream = TcpStream::from_std(socket.into())?;
    tokio::time::timeout(CONNECT_TIMEOUT, stream.writable())
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()),
            )
        })??;
    if let Some(err) = stream.take_error()? {
        return Err(err);
    }
    // Writable without an error still means connected only if a peer is
    // there.
    stream.peer_addr()?;
    Ok((stream, registered))
}

fn new_socket(netns: &InpodNetns, dst: SocketAddr, mark: u32) -> io::Result<Socket> {
    let socket = netns
        .run(|| Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP)))??;
    socket.set_nonblocking(true)?;
    socket.set_mark(mark)?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket)
}

/// A transparent socket inside the pod, bound to `source` (the client's
/// address, any port), ready to connect to `dst`; with its bound address.
pub fn transparent(
    netns: &InpodNetns,
    dst: SocketAddr,
    mark: u32,
    source: IpAddr,
) -> io::Result<(TcpSocket, SocketAddr)> {
    let socket = new_socket(netns, dst, mark)?;
    socket.set_ip_transparent_v4(true)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    let bound = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("a TCP socket has an IP address"))?;
    Ok((TcpSocket::from_std_stream(socket.into()), bound))
}

/// Pauses an accept loop after an error (out of descriptors, say), so it
/// does not spin.
pub async fn after_accept_error() {
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

/// Where a connection redirected by iptables (REDIRECT) was headed.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let mut addr: libc::sockaddr_in = unsafe_zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            libc::SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    )))
}

fn unsafe_zeroed() -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}
