//! Upstream HTTP connections kept for reuse, as Envoy keeps them: an
//! HTTP/1.1 connection (over its HBONE stream) goes back to the pool once
//! its response has been read whole; an HTTP/2 connection is shared by
//! every request to its endpoint. Connections are pooled per endpoint,
//! protocol and tunnel (the tunnel's headers name the client's address and
//! the service), so a reused one says the same of its requests as a new
//! one would. Idle ones are dropped after [`IDLE_TIMEOUT`], before a
//! server's own keep-alive timeout would close them under a request.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use foldhash::HashMap;
use hyper::client::conn::{http1, http2};

use crate::{forward::RequestBody, h1, http::Version};

/// How long an idle HTTP/1.1 connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle HTTP/1.1 connections kept per key, at most.
const MAX_IDLE: usize = 64;

/// What a pooled connection is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub endpoint: SocketAddr,
    pub version: Version,
    /// The onward tunnel's headers, as text ([`crate::proxy::Tunnel`]).
    pub tunnel: Arc<str>,
    /// The worker thread using it.
    pub worker: std::thread::ThreadId,
}

impl PoolKey {
    /// The key for the calling worker thread.
    pub fn new(endpoint: SocketAddr, version: Version, tunnel: Arc<str>) -> Self {
        Self {
            endpoint,
            version,
            tunnel,
            worker: std::thread::current().id(),
        }
    }
}

/// A connection's request sender.
pub enum Sender {
    Http1(http1::SendRequest<RequestBody>),
    Http2(http2::SendRequest<RequestBody>),
}

/// An idle HTTP/1.1 connection and since when.
type Idle = (http1::SendRequest<RequestBody>, Instant);
/// The same, of the waypoint's own client.
type OwnIdle = (Box<h1::client::Conn>, Instant);

#[derive(Default)]
pub struct HttpPool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    shared: Mutex<HashMap<PoolKey, http2::SendRequest<RequestBody>>>,
    /// Idle connections of the waypoint's own HTTP/1.1 client.
    own: Mutex<HashMap<PoolKey, Vec<OwnIdle>>>,
}

impl HttpPool {
    /// A connection for `key` that can take a request now, if one is kept.
    pub fn take(&self, key: &PoolKey) -> Option<Sender> {
        match key.version {
            Version::Http1 => {
                let mut idle = self.idle.lock().expect("pool lock");
                let list = idle.get_mut(key)?;
                while let Some((sender, since)) = list.pop() {
                    if since.elapsed() < IDLE_TIMEOUT && sender.is_ready() {
                        return Some(Sender::Http1(sender));
                    }
                }
                None
            }
            Version::Http2 => {
                let mut shared = self.shared.lock().expect("pool lock");
                match shared.get(key) {
                    Some(sender) if !sender.is_closed() => Some(Sender::Http2(sender.clone())),
                    Some(_) => {
                        shared.remove(key);
                        None
                    }
                    None => None,
                }
            }
        }
    }

    /// Keeps a new HTTP/2 connection for every request to `key`.
    pub fn share(&self, key: PoolKey, sender: &http2::SendRequest<RequestBody>) {
        self.shared
            .lock()
            .expect("pool lock")
            .insert(key, sender.clone());
    }

    /// Puts an HTTP/1.1 connection back once its response has been read
    /// whole (a connection whose response is abandoned closes instead).
    pub fn release(self: &Arc<Self>, key: PoolKey, mut sender: http1::SendRequest<RequestBody>) {
        // Usually ready at once (the response was read whole); otherwise
        // a task waits for the connection to finish the exchange.
        if sender.is_ready() {
            return self.keep(key, sender);
        }
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.keep(key, sender);
            }
        });
    }

    fn keep(&self, key: PoolKey, sender: http1::SendRequest<RequestBody>) {
        let mut idle = self.idle.lock().expect("pool lock");
        let list = idle.entry(key).or_default();
        list.retain(|(s, since)| since.elapsed() < IDLE_TIMEOUT && !s.is_closed());
        if list.len() < MAX_IDLE {
            list.push((sender, Instant::now()));
        }
    }

    /// A kept connection of the waypoint's own HTTP/1.1 client for `key`
    /// that can take a request now, if there is one.
    pub fn take_own(&self, key: &PoolKey) -> Option<Box<h1::client::Conn>> {
        let mut own = self.own.lock().expect("pool lock");
        let list = own.get_mut(key)?;
        while let Some((mut conn, since)) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && conn.is_idle() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose response was read whole.
    pub fn keep_own(&self, key: PoolKey, conn: Box<h1::client::Conn>) {
        let mut own = self.own.lock().expect("pool lock");
        let list = own.entry(key).or_default();
        if list.len() >= MAX_IDLE {
            // The longest idle goes first.
            list.retain(|(_, since)| since.elapsed() < IDLE_TIMEOUT);
        }
        if list.len() < MAX_IDLE {
            list.push((conn, Instant::now()));
        }
    }

    /// Idle HTTP/1.1 connections and shared HTTP/2 ones, for the dump.
    pub fn counts(&self) -> (usize, usize) {
        let idle = self
            .idle
            .lock()
            .expect("pool lock")
            .values()
            .map(Vec::len)
            .sum::<usize>()
            + self
                .own
                .lock()
                .expect("pool lock")
                .values()
                .map(Vec::len)
                .sum::<usize>();
        let shared = self.shared.lock().expect("pool lock").len();
        (idle, shared)
    }
}
