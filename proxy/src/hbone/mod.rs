//! HBONE: TCP connections tunnelled as HTTP/2 CONNECT streams over mutual
//! TLS, to port 15008 of the destination.
//!
//! [`client`] opens tunnels (through the [`pool`], which shares one TLS
//! connection among up to 100 streams per source/destination pair),
//! [`server`] accepts them and hands each CONNECT stream to the caller, and
//! [`tls`] holds the identity rules both sides enforce.

pub mod client;
pub mod io;
pub mod pool;
pub mod server;
pub mod tls;

use std::time::Duration;

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;

/// HTTP/2 stream window: a full bandwidth-delay product of a fast local
/// path, so a single tunnel is never window-bound.
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// HTTP/2 connection window: room for several busy streams.
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// HTTP/2 frame size: large frames mean fewer headers and fewer TLS records
/// to seal per byte.
pub const FRAME_SIZE: u32 = 256 * 1024;
/// Data a stream may queue for sending before the copy loop waits: enough
/// for a window's worth of bulk data between two TLS writes.
pub const SEND_BUFFER: usize = 4 * 1024 * 1024;
/// Read buffer under TLS. rustls reads at most 4 KiB at a time; a buffer
/// below it turns a stream of small reads into few large `recv` calls.
pub const READ_BUFFER: usize = 64 * 1024;
/// How long a TLS + HTTP/2 handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a CONNECT may wait for its answer (the destination's ztunnel
/// connecting to the application, or room for a stream on the connection).
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(15);
/// Concurrent CONNECT streams one HBONE connection carries: what a server
/// advertises and what the pool puts on one connection before opening
/// another.
pub const MAX_STREAMS: u32 = 100;
