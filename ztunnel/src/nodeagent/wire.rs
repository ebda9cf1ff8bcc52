//! Packets on a unix SOCK_SEQPACKET socket, with descriptors.

use std::{
    io::{self, IoSlice, IoSliceMut},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::Path,
};

use nix::sys::socket::{
    accept4, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;

/// Largest message accepted.
const MAX_PACKET: usize = 64 * 1024;
/// First byte of every packet. An empty protobuf message encodes to no
/// bytes, and a zero-length read is how a closed peer looks, so every packet
/// carries this marker before its message.
const MARKER: u8 = 0x57;

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

/// A connected packet socket.
pub struct Packets {
    fd: AsyncFd<OwnedFd>,
}

impl Packets {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let fd = new_socket()?;
        connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(Self { fd: register(fd)? })
    }

    /// Who is at the other end (pid, uid, gid when it connected).
    pub fn peer_credentials(&self) -> io::Result<nix::sys::socket::UnixCredentials> {
        nix::sys::socket::getsockopt(
            self.fd.get_ref(),
            nix::sys::socket::sockopt::PeerCredentials,
        )
        .map_err(io::Error::from)
    }

    /// Sends one packet, with `fds` attached.
    pub async fn send(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            let result = guard.try_io(|fd| {
                let iov = [IoSlice::new(&[MARKER]), IoSlice::new(bytes)];
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

    /// Receives one packet and its descriptors; `None` when the peer closed.
    pub async fn recv(&self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| {
                let mut buf = vec![0u8; MAX_PACKET];
                let mut cmsg = nix::cmsg_space!([RawFd; 4]);
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
                let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
                let len = msg.bytes;
                buf.truncate(len);
                Ok((buf, fds, truncated))
            });
            match result {
                Ok(Ok((buf, fds, _))) if buf.is_empty() && fds.is_empty() => return Ok(None),
                Ok(Ok((_, _, true))) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "packet larger than 64 KiB",
                    ))
                }
                Ok(Ok((mut buf, fds, false))) => {
                    if buf.first() != Some(&MARKER) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "not a node-agent packet",
                        ));
                    }
                    buf.remove(0);
                    return Ok(Some((buf, fds)));
                }
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }
}

/// A listening packet socket.
pub struct PacketListener {
    fd: AsyncFd<OwnedFd>,
}

impl PacketListener {
    /// Binds `path` (replacing a stale socket file) with mode 0600.
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

    pub async fn accept(&self) -> io::Result<Packets> {
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
                    return Ok(Packets { fd: register(fd)? });
                }
                Ok(Err(err)) => return Err(err),
                Err(_would_block) => continue,
            }
        }
    }
}
