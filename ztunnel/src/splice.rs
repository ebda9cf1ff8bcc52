//! Running a spliced connection: two of ztunnel's sockets joined in the
//! kernel (see `ebpf/src/splice.rs`), so payload bytes never reach
//! ztunnel.
//!
//! ztunnel still owns the connection: it watches both sockets for the end
//! of each direction and passes it on (a FIN only after every spliced byte
//! of that direction has been acknowledged, so none is cut off), it forwards
//! anything that did land in its own queue (which only happens if a peer
//! socket vanished), it is what a policy change closes, and it advances the
//! connection's byte counters from the kernel's counts every second and at
//! the end.

use std::{
    io,
    os::fd::AsFd,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::{io::AsyncWriteExt, net::TcpStream};
use weft_proxy::{copy::Transferred, metrics::ConnectionMeter};

use crate::capture::ebpf::{socket_cookie_of, EbpfCapture};

/// How often the byte counters catch up with the kernel's counts.
const METER_INTERVAL: Duration = Duration::from_secs(1);
/// How long the end of a direction waits for its spliced bytes to be
/// acknowledged before passing the FIN on anyway.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// What a spliced connection carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplicedTransfer {
    /// All bytes each way, as [`Transferred`] counts them.
    pub total: Transferred,
    /// Of those, the bytes the kernel moved (the rest ztunnel copied).
    pub in_kernel: Transferred,
}

/// Takes the splice's map entries out of the kernel however the
/// connection ends (including a policy change dropping it mid-way).
struct Joined<'a> {
    ebpf: &'a Mutex<EbpfCapture>,
    cookies: (u64, u64),
}

impl Joined<'_> {
    /// The bytes the kernel has moved so far: (first → second, second →
    /// first).
    fn moved(&self) -> (u64, u64) {
        let ebpf = self.ebpf.lock().expect("capture lock");
        (
            ebpf.spliced_bytes(self.cookies.0),
            ebpf.spliced_bytes(self.cookies.1),
        )
    }
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        self.ebpf
            .lock()
            .expect("capture lock")
            .unsplice(self.cookies.0, self.cookies.1);
    }
}

/// One direction: what ztunnel itself copied, and whether it has ended.
#[derive(Default)]
struct Direction {
    copied: u64,
    ended: bool,
}

/// Splices `source` (the client's side) and `destination` (the
/// application's side) and runs the connection to its end. Nothing may
/// have been read from either socket.
pub async fn run(
    ebpf: &Mutex<EbpfCapture>,
    source: &mut TcpStream,
    destination: &mut TcpStream,
    meter: &ConnectionMeter,
) -> io::Result<SplicedTransfer> {
    let cookies = (
        socket_cookie_of(source.as_fd())?,
        socket_cookie_of(destination.as_fd())?,
    );
    let acked_base = (bytes_acked(source)?, bytes_acked(destination)?);
    ebpf.lock()
        .expect("capture lock")
        .splice(
            (source.as_fd(), cookies.0),
            (destination.as_fd(), cookies.1),
        )
        .map_err(io::Error::other)?;
    let joined = Joined { ebpf, cookies };
    let (mut forward, mut backward) = (Direction::default(), Direction::default());
    let mut metered = (0u64, 0u64);
    let mut tick = tokio::time::interval(METER_INTERVAL);
    let mut buf = vec![0u8; 16 * 1024];
    let meter_up_to = |metered: &mut (u64, u64), now: (u64, u64)| {
        meter.add_request(now.0.saturating_sub(metered.0));
        meter.add_response(now.1.saturating_sub(metered.1));
        *metered = now;
    };
    while !(forward.ended && backward.ended) {
        tokio::select! {
            ready = source.readable(), if !forward.ended => {
                ready?;
                if let Some(n) = step(source, destination, &mut buf, &mut forward).await? {
                    metered.0 += n;
                    meter.add_request(n);
                }
                if forward.ended {
                    let kernel = joined.moved().0;
                    drain(destination, acked_base.1, kernel + forward.copied).await?;
                    let _ = destination.shutdown().await;
                }
            }
            ready = destination.readable(), if !backward.ended => {
                ready?;
                if let Some(n) = step(destination, source, &mut buf, &mut backward).await? {
                    metered.1 += n;
                    meter.add_response(n);
                }
                if backward.ended {
                    let kernel = joined.moved().1;
                    drain(source, acked_base.0, kernel + backward.copied).await?;
                    let _ = source.shutdown().await;
                }
            }
            _ = tick.tick() => {
                let moved = joined.moved();
                meter_up_to(
                    &mut metered,
                    (moved.0 + forward.copied, moved.1 + backward.copied),
                );
            }
        }
    }
    let moved = joined.moved();
    meter_up_to(
        &mut metered,
        (moved.0 + forward.copied, moved.1 + backward.copied),
    );
    drop(joined);
    Ok(SplicedTransfer {
        total: Transferred {
            sent: moved.0 + forward.copied,
            received: moved.1 + backward.copied,
        },
        in_kernel: Transferred {
            sent: moved.0,
            received: moved.1,
        },
    })
}

/// Reads what landed in ztunnel's own queue of `from` (nothing, while the
/// splice holds) and writes it to `to`; marks the direction ended at EOF.
/// Returns the bytes copied, if any.
async fn step(
    from: &TcpStream,
    to: &mut TcpStream,
    buf: &mut [u8],
    direction: &mut Direction,
) -> io::Result<Option<u64>> {
    match from.try_read(buf) {
        Ok(0) => {
            direction.ended = true;
            Ok(None)
        }
        Ok(n) => {
            to.write_all(&buf[..n]).await?;
            direction.copied += n as u64;
            Ok(Some(n as u64))
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits until `socket` has had `expected` bytes acknowledged since
/// `base`, so a FIN sent now cannot overtake spliced data.
async fn drain(socket: &TcpStream, base: u64, expected: u64) -> io::Result<()> {
    let deadline = Instant::now() + DRAIN_LIMIT;
    while bytes_acked(socket)?.saturating_sub(base) < expected {
        if Instant::now() > deadline {
            tracing::warn!(
                expected,
                "spliced bytes still unacknowledged; ending the direction anyway"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// `tcpi_bytes_acked` of a socket.
fn bytes_acked(socket: &TcpStream) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(info.tcpi_bytes_acked)
    } else {
        Err(io::Error::last_os_error())
    }
}
