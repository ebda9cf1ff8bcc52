//! Moving bytes between the two legs of a proxied connection.
//!
//! Both directions run concurrently. When one side finishes sending (EOF,
//! or END_STREAM on an HTTP/2 stream) the other side's write half is closed
//! in turn (TCP FIN / END_STREAM), so half-closed protocols keep working; an
//! error on either side resets both (TCP RST / RST_STREAM). Buffers start
//! small and double while reads keep filling them, up to [`MAX_BUFFER`], so
//! an idle connection costs little and a bulk flow gets large reads; the
//! same buffer is reused for every read, with no allocation per chunk.

use std::{
    future::poll_fn,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

use bytes::{Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

/// First buffer size of each direction.
pub const INITIAL_BUFFER: usize = 16 * 1024;
/// Largest buffer a direction grows to.
pub const MAX_BUFFER: usize = 256 * 1024;

/// Bytes moved, from the first leg's point of view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Read from the first leg and written to the second.
    pub sent: u64,
    /// Read from the second leg and written to the first.
    pub received: u64,
}

/// Where a copy reports the bytes it moves, as they move: `forward` for
/// the first leg → second leg direction, `backward` for the other.
#[derive(Clone, Copy)]
pub struct Meter<'a> {
    meter: Option<&'a crate::metrics::ConnectionMeter>,
    /// Whether the first leg is the connection's source (so forward bytes
    /// are its request bytes).
    first_is_source: bool,
}

impl<'a> Meter<'a> {
    /// Counts into `meter`; `first_is_source` tells the directions apart.
    pub fn new(meter: &'a crate::metrics::ConnectionMeter, first_is_source: bool) -> Self {
        Self {
            meter: Some(meter),
            first_is_source,
        }
    }

    /// Counts nothing.
    pub fn none() -> Self {
        Self {
            meter: None,
            first_is_source: true,
        }
    }

    fn forward(&self, n: u64) {
        if let Some(m) = self.meter {
            if self.first_is_source {
                m.add_request(n)
            } else {
                m.add_response(n)
            }
        }
    }

    fn backward(&self, n: u64) {
        if let Some(m) = self.meter {
            if self.first_is_source {
                m.add_response(n)
            } else {
                m.add_request(n)
            }
        }
    }
}

/// A copy that ended in an error, with what had been moved until then.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct CopyFailure {
    #[source]
    pub error: CopyError,
    pub transferred: Transferred,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{side}: {source}")]
    Io {
        side: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("tunnel stream: {0}")]
    H2(#[from] h2::Error),
    #[error("tunnel stream closed by the peer before all data was sent")]
    StreamClosed,
}

/// One HTTP/2 stream (a CONNECT tunnel) as a byte pipe.
pub struct H2Stream {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
}

/// A growing read buffer.
struct Growing {
    buf: BytesMut,
    target: usize,
}

impl Growing {
    fn new() -> Self {
        Self {
            buf: BytesMut::with_capacity(INITIAL_BUFFER),
            target: INITIAL_BUFFER,
        }
    }

    async fn read_from<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> std::io::Result<usize> {
        if self.buf.capacity() < self.target {
            // Reclaims the old allocation once every sent chunk is released.
            self.buf.reserve(self.target);
        }
        let n = reader.read_buf(&mut self.buf).await?;
        if n >= self.target && self.target < MAX_BUFFER {
            self.target = (self.target * 2).min(MAX_BUFFER);
        }
        Ok(n)
    }
}

/// Copies between a TCP connection and a tunnel stream until both
/// directions are done.
pub async fn tcp_h2(
    tcp: &mut TcpStream,
    stream: H2Stream,
    meter: &Meter<'_>,
) -> Result<Transferred, CopyFailure> {
    let H2Stream { mut send, mut recv } = stream;
    let (mut reader, mut writer) = tcp.split();
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let upstream = async {
        let mut buf = Growing::new();
        loop {
            let n = match buf.read_from(&mut reader).await {
                Ok(n) => n,
                Err(source) => {
                    send.send_reset(h2::Reason::CANCEL);
                    return Err(CopyError::Io {
                        side: "client",
                        source,
                    });
                }
            };
            if n == 0 {
                send.send_data(Bytes::new(), true)?;
                return Ok(());
            }
            let mut chunk = buf.buf.split().freeze();
            while !chunk.is_empty() {
                send.reserve_capacity(chunk.len());
                let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(granted) => granted?,
                    None => return Err(CopyError::StreamClosed),
                };
                if granted == 0 {
                    continue;
                }
                let part = chunk.split_to(granted.min(chunk.len()));
                let len = part.len() as u64;
                send.send_data(part, false)?;
                sent.fetch_add(len, Relaxed);
                meter.forward(len);
            }
        }
    };
    let downstream = async {
        while let Some(data) = recv.data().await {
            let data = data?;
            let len = data.len();
            writer
                .write_all(&data)
                .await
                .map_err(|source| CopyError::Io {
                    side: "client",
                    source,
                })?;
            received.fetch_add(len as u64, Relaxed);
            meter.backward(len as u64);
            recv.flow_control().release_capacity(len)?;
        }
        writer.shutdown().await.map_err(|source| CopyError::Io {
            side: "client",
            source,
        })?;
        Ok(())
    };
    let outcome = tokio::try_join!(upstream, downstream);
    let transferred = Transferred {
        sent: sent.load(Relaxed),
        received: received.load(Relaxed),
    };
    match outcome {
        Ok(_) => Ok(transferred),
        Err(error) => {
            reset(tcp);
            Err(CopyFailure { error, transferred })
        }
    }
}

/// Copies between two TCP connections until both directions are done.
pub async fn tcp_tcp(
    a: &mut TcpStream,
    b: &mut TcpStream,
    meter: &Meter<'_>,
) -> Result<Transferred, CopyFailure> {
    let (mut a_read, mut a_write) = a.split();
    let (mut b_read, mut b_write) = b.split();
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let forward = pump(
        &mut a_read,
        &mut b_write,
        ("downstream", "upstream"),
        &sent,
        |n| meter.forward(n),
    );
    let backward = pump(
        &mut b_read,
        &mut a_write,
        ("upstream", "downstream"),
        &received,
        |n| meter.backward(n),
    );
    let outcome = tokio::try_join!(forward, backward);
    let transferred = Transferred {
        sent: sent.load(Relaxed),
        received: received.load(Relaxed),
    };
    match outcome {
        Ok(_) => Ok(transferred),
        Err(error) => {
            reset(a);
            reset(b);
            Err(CopyFailure { error, transferred })
        }
    }
}

async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    (from, to): (&'static str, &'static str),
    total: &AtomicU64,
    count: impl Fn(u64),
) -> Result<(), CopyError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Growing::new();
    loop {
        let n = buf
            .read_from(reader)
            .await
            .map_err(|source| CopyError::Io { side: from, source })?;
        if n == 0 {
            writer
                .shutdown()
                .await
                .map_err(|source| CopyError::Io { side: to, source })?;
            return Ok(());
        }
        writer
            .write_all(&buf.buf[..n])
            .await
            .map_err(|source| CopyError::Io { side: to, source })?;
        buf.buf.clear();
        total.fetch_add(n as u64, Relaxed);
        count(n as u64);
    }
}

/// Makes the socket send RST instead of FIN when it is closed.
fn reset(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(std::time::Duration::ZERO));
}
