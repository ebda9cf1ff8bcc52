//! Sharing HBONE connections.
//!
//! Connections are keyed by (source workload, source identity, destination
//! identity, destination address): the source workload is part of the key
//! because ztunnel opens tunnels from inside each pod's network namespace,
//! so a connection carries its pod's own source address. A connection takes
//! at most `max_streams` concurrent streams; beyond that a new one is made.
//! Concurrent first requests for a key wait for one handshake instead of
//! each making their own. Connections idle longer than `idle_timeout` are
//! closed; dead ones (GOAWAY, failed PING) are dropped and replaced.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderName, HeaderValue};
use serde::Serialize;
use weft_proto::spiffe::Identity;

use super::client::{connect_stream, Connection, HboneError};
use crate::copy::H2Stream;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The source workload (its uid): the network namespace tunnels leave from.
    pub source_workload: String,
    pub source: Identity,
    pub destination: Identity,
    pub address: SocketAddr,
}

struct Pooled {
    id: u64,
    send: SendRequest<Bytes>,
    driver: tokio::task::JoinHandle<()>,
    active: AtomicUsize,
    last_used: Mutex<Instant>,
}

impl Pooled {
    fn alive(&self) -> bool {
        !self.driver.is_finished()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Counters, for `/stats` and tests.
#[derive(Debug, Default, Serialize)]
pub struct PoolStats {
    /// TLS + HTTP/2 handshakes made.
    pub handshakes: AtomicU64,
    /// Streams opened on an existing connection.
    pub reused: AtomicU64,
    /// Streams opened in total.
    pub streams: AtomicU64,
}

#[derive(Default)]
struct Slot {
    conns: Vec<Arc<Pooled>>,
    /// Held while a connection for this key is being made.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

/// The HBONE connection pool.
#[derive(Clone)]
pub struct Pool {
    slots: Arc<Mutex<HashMap<PoolKey, Slot>>>,
    stats: Arc<PoolStats>,
    next_id: Arc<AtomicU64>,
    pub max_streams: usize,
    pub idle_timeout: Duration,
}

/// A stream from the pool; the connection's stream count drops with it.
pub struct PooledStream {
    pub stream: Option<H2Stream>,
    conn: Arc<Pooled>,
}

impl PooledStream {
    pub fn take(&mut self) -> H2Stream {
        self.stream.take().expect("the stream is taken once")
    }

    /// The pool's id of the connection carrying this stream.
    pub fn connection_id(&self) -> u64 {
        self.conn.id
    }
}

impl Drop for PooledStream {
    fn drop(&mut self) {
        self.conn.active.fetch_sub(1, Ordering::AcqRel);
        *self.conn.last_used.lock().expect("pool lock") = Instant::now();
    }
}

impl Default for Pool {
    fn default() -> Self {
        Self::new(super::MAX_STREAMS as usize, Duration::from_secs(60))
    }
}

impl Pool {
    /// A pool; its idle reaper runs on the current tokio runtime.
    pub fn new(max_streams: usize, idle_timeout: Duration) -> Self {
        let pool = Self {
            slots: Arc::default(),
            stats: Arc::default(),
            next_id: Arc::default(),
            max_streams,
            idle_timeout,
        };
        let slots = Arc::downgrade(&pool.slots);
        let period = (idle_timeout / 4).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(slots) = slots.upgrade() else { return };
                let now = Instant::now();
                let mut slots = slots.lock().expect("pool lock");
                for slot in slots.values_mut() {
                    slot.conns.retain(|c| {
                        let idle = c.active.load(Ordering::Acquire) == 0
                            && now.duration_since(*c.last_used.lock().expect("pool lock"))
                                > idle_timeout;
                        c.alive() && !idle
                    });
                }
                slots.retain(|_, slot| {
                    !slot.conns.is_empty() || Arc::strong_count(&slot.connecting) > 1
                });
            }
        });
        pool
    }

    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Open connections, for status.
    pub fn connections(&self) -> usize {
        self.slots
            .lock()
            .expect("pool lock")
            .values()
            .map(|s| s.conns.len())
            .sum()
    }

    /// A connection for `key` with room for one more stream, reserved.
    fn pick(&self, key: &PoolKey) -> Option<Arc<Pooled>> {
        let mut slots = self.slots.lock().expect("pool lock");
        let slot = slots.get_mut(key)?;
        slot.conns.retain(|c| c.alive());
        slot.conns.iter().find_map(|c| {
            c.active
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max_streams).then_some(n + 1)
                })
                .ok()
                .map(|_| c.clone())
        })
    }

    fn connect_lock(&self, key: &PoolKey) -> Arc<tokio::sync::Mutex<()>> {
        self.slots
            .lock()
            .expect("pool lock")
            .entry(key.clone())
            .or_default()
            .connecting
            .clone()
    }

    /// Opens a CONNECT stream to `authority` for `key`, on a pooled
    /// connection or one made by `connect`.
    pub async fn stream<C, Fut>(
        &self,
        key: &PoolKey,
        authority: SocketAddr,
        headers: &[(HeaderName, HeaderValue)],
        connect: C,
    ) -> Result<PooledStream, HboneError>
    where
        C: Fn() -> Fut,
        Fut: Future<Output = Result<Connection, HboneError>>,
    {
        let mut retried = false;
        loop {
            let (conn, fresh) = match self.pick(key) {
                Some(conn) => (conn, false),
                None => {
                    let lock = self.connect_lock(key);
                    let _guard = lock.lock().await;
                    // Someone may have connected while we waited.
                    match self.pick(key) {
                        Some(conn) => (conn, false),
                        None => {
                            let connection = connect().await?;
                            self.stats.handshakes.fetch_add(1, Ordering::Relaxed);
                            let conn = Arc::new(Pooled {
                                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                                send: connection.send,
                                driver: connection.driver,
                                active: AtomicUsize::new(1),
                                last_used: Mutex::new(Instant::now()),
                            });
                            self.slots
                                .lock()
                                .expect("pool lock")
                                .entry(key.clone())
                                .or_default()
                                .conns
                                .push(conn.clone());
                            (conn, true)
                        }
                    }
                }
            };
            // Releases the reserved stream slot if opening fails.
            let mut guard = PooledStream { stream: None, conn };
            match connect_stream(&guard.conn.send, key.address, authority, headers).await {
                Ok(stream) => {
                    self.stats.streams.fetch_add(1, Ordering::Relaxed);
                    if !fresh {
                        self.stats.reused.fetch_add(1, Ordering::Relaxed);
                    }
                    guard.stream = Some(stream);
                    return Ok(guard);
                }
                // A pooled connection that broke since its last use: drop
                // it and try once more on a fresh one.
                Err(HboneError::H2 { .. }) if !fresh && !retried => {
                    guard.conn.driver.abort();
                    retried = true;
                }
                Err(err) => return Err(err),
            }
        }
    }
}
