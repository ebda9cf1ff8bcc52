//! Datagrams on a unix `SOCK_SEQPACKET` socket, with descriptors: ZDS's
//! transport. One protobuf message per datagram, nothing around it.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use nix::sys::socket::{
    accept4, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, UnixCredentials,
};
use tokio::io::unix::AsyncFd;

/// Largest datagram read; a longer one arrives truncated and is refused.
pub const MAX_DATAGRAM: usize = 64 * 1024;

fn new_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is an open descriptor that stays open, and keeps
    // returning the same number, until the `AsyncFd` owning it is dropped.
    Ok(unsafe { AsyncFd::register(fd) }?)
}

/// One datagram as it arrived: its bytes, the descriptors it carried (now
/// owned here, so they close if nobody takes them), and whether the kernel
/// cut the data or the descriptors short.
#[derive(Debug)]
pub struct Datagram {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
    pub truncated: bool,
}

/// A connected datagram socket.
pub struct Datagrams {
    fd: AsyncFd<OwnedFd>,
}

impl Datagrams {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = new_socket()?;
        connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(Self { fd: register(fd)? })
    }

    /// A connected pair (for tests of either side).
    pub fn pair() -> io::Result<(Self, Self)> {
        let (a, b) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )?;
        Ok((Self { fd: register(a)? }, Self { fd: register(b)? }))
    }

    /// Who is at the other end: for a connecting side, the process that
    /// made the listening socket; for an accepting side, the one that
    /// connected.
    pub fn peer_credentials(&self) -> io::Result<UnixCredentials> {
        nix::sys::socket::getsockopt(
            self.fd.get_ref(),
            nix::sys::socket::sockopt::PeerCredentials,
        )
        .map_err(io::Error::from)
    }

    /// Whether the peer has closed its end (checked without waiting and
    /// without consuming anything).
    pub fn peer_closed(&self) -> bool {
        let mut byte = [0u8; 1];
        match nix::sys::socket::recv(
            self.fd.get_ref().as_raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => true,
            Ok(_) => false,
            Err(nix::errno::Errno::EAGAIN) => false,
            Err(_) => true,
        }
    }

    /// Sends one datagram, with `fds` attached.
    pub async fn send(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let result = guard.try_io(|fd| {
                let iov = [IoSlice::new(bytes)];
                let rights;
                let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() {
                    &[]
                } else {
                    rights = [ControlMessage::ScmRights(fds)];
                    &rights
                };
                sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            });
            match result {
                Ok(sent) => return sent.map(drop),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one datagram; `None` when the peer closed (a zero-length
    /// datagram reads the same: no ZDS message encodes to nothing).
    pub async fn recv(&self) -> io::Result<Option<Datagram>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                // Room for more descriptors than any message may carry, so
                // that extra ones are seen (and closed) rather than lost.
                let mut cmsg = nix::cmsg_space!([RawFd; 8]);
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = recvmsg::<()>(
                    fd.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(received) = c {
                        // SAFETY: the kernel just installed these descriptors
                        // in this process; nothing else owns them.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) }),
                        );
                    }
                }
                let truncated = msg
                    .flags
                    .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                let len = msg.bytes;
                buf.truncate(len);
                Ok(Datagram {
                    bytes: buf,
                    fds,
                    truncated,
                })
            });
            match result {
                Ok(Ok(d)) if d.bytes.is_empty() && d.fds.is_empty() && !d.truncated => {
                    return Ok(None)
                }
                Ok(Ok(d)) => return Ok(Some(d)),
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }
}

/// A listening datagram socket.
pub struct DatagramListener {
    fd: AsyncFd<OwnedFd>,
}

impl DatagramListener {
    /// Binds `path` (replacing a stale socket file) with mode 0600, creating
    /// its directory.
    pub fn bind(path: &Path) -> io::Result<Self> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let fd = new_socket()?;
        bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listen(&fd, Backlog::new(16).map_err(io::Error::from)?)?;
        Ok(Self { fd: register(fd)? })
    }

    pub async fn accept(&self) -> io::Result<Datagrams> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                accept4(
                    fd.as_raw_fd(),
                    SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                )
                .map_err(io::Error::from)
            }) {
                Ok(Ok(raw)) => {
                    // SAFETY: accept4 returned a new descriptor we now own.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    return Ok(Datagrams { fd: register(fd)? });
                }
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }
}
