//! A tunnel stream as `AsyncRead + AsyncWrite`, for code that speaks a
//! protocol over it (the waypoint's HTTP server and client) rather than
//! copying it byte for byte.
//!
//! Reads release HTTP/2 flow-control capacity as data is consumed; writes
//! wait for capacity and send what was granted; shutdown ends the stream
//! (END_STREAM), the tunnel's half-close.

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::copy::H2Stream;

/// An HBONE stream as a byte stream.
pub struct H2Io {
    /// Taken only by `Drop`.
    stream: Option<H2Stream>,
    /// Received but not yet read.
    pending: Bytes,
    eof: bool,
    shut: bool,
}

fn h2_to_io(err: h2::Error) -> std::io::Error {
    if err.is_io() {
        err.into_io()
            .unwrap_or_else(|| std::io::Error::other("tunnel stream failed"))
    } else {
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, err)
    }
}

impl H2Io {
    fn stream_mut(&mut self) -> &mut H2Stream {
        self.stream
            .as_mut()
            .expect("the stream is taken only on drop")
    }

    pub fn new(stream: H2Stream) -> Self {
        Self {
            stream: Some(stream),
            pending: Bytes::new(),
            eof: false,
            shut: false,
        }
    }

    /// Waits for one more chunk of the stream and returns everything
    /// received so far without consuming it (a later read still sees it),
    /// so a protocol can be recognised from its first bytes. Unchanged once
    /// the peer has ended the stream.
    pub async fn peek_more(&mut self) -> std::io::Result<&[u8]> {
        if !self.eof {
            match self.stream_mut().recv.data().await {
                Some(Ok(data)) => {
                    let _ = self
                        .stream_mut()
                        .recv
                        .flow_control()
                        .release_capacity(data.len());
                    if self.pending.is_empty() {
                        self.pending = data;
                    } else {
                        let mut joined =
                            bytes::BytesMut::with_capacity(self.pending.len() + data.len());
                        joined.extend_from_slice(&self.pending);
                        joined.extend_from_slice(&data);
                        self.pending = joined.freeze();
                    }
                }
                Some(Err(err)) => return Err(h2_to_io(err)),
                None => self.eof = true,
            }
        }
        Ok(&self.pending)
    }
}

/// How long a stream we ended keeps reading what the peer still sends
/// before it is let go.
const LINGER: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for H2Io {
    /// A stream we ended ourselves (END_STREAM sent) is drained until the
    /// peer ends its side too, as TCP lingers after a FIN: dropping it at
    /// once would reset it under a peer that has not finished sending. A
    /// stream dropped without being ended is reset, so the peer sees the
    /// failure rather than a clean end.
    fn drop(&mut self) {
        if !self.shut || self.eof {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                while let Some(Ok(data)) = stream.recv.data().await {
                    let _ = stream.recv.flow_control().release_capacity(data.len());
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
        });
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.stream_mut().recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this
                        .stream_mut()
                        .recv
                        .flow_control()
                        .release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(err)) => return Poll::Ready(Err(h2_to_io(err))),
                None => this.eof = true,
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.stream_mut().send;
        send.reserve_capacity(buf.len());
        loop {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(granted)) => {
                    let n = granted.min(buf.len());
                    send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(h2_to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(err)) => return Poll::Ready(Err(h2_to_io(err))),
                None => {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the tunnel stream is closed",
                    )))
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.stream_mut()
                .send
                .send_data(Bytes::new(), true)
                .map_err(h2_to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
