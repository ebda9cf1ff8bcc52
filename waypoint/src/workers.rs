//! The waypoint's worker threads, as Envoy and nginx run theirs: one per
//! core, each a single-threaded runtime serving whole the connections it
//! is handed. A tunnel's requests, the upstream connections they use and
//! the tasks they spawn stay on the thread that serves the tunnel, so
//! handing a request to its upstream connection and the response back
//! never wakes another thread — which, on a work-stealing runtime, costs
//! more CPU than the request's own work. The first worker is the caller's
//! runtime, which also runs the control side (xDS, certificates, admin).
//!
//! One listening socket, one acceptor (on the caller's runtime), and each
//! accepted connection goes to the worker serving the fewest open
//! connections. `SO_REUSEPORT` sockets, one per worker, were the first
//! design: the kernel hashes each connection's addresses to a socket, so a
//! load generator's 16 keep-alive connections landed 10 and 6, or worse,
//! and the busier worker's queue set the tail latency while the other
//! idled. A connection costs one hand-off over a channel; its requests
//! cost nothing more.

use std::{
    future::Future,
    net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use socket2::{Domain, Socket, Type};
use tokio::{io::unix::AsyncFd, net::TcpStream, sync::mpsc, task::JoinHandle as TaskHandle};

#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("binding {addr}: {source}; is another process using it?")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("watching the listening socket: {0}; is the process out of file descriptors?")]
    Watch(#[source] std::io::Error),
    #[error("starting worker thread {index}: {source}; is the process out of threads or memory?")]
    Thread {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// The worker count for `concurrency` (Istio's: 0 is one per core).
pub fn count(concurrency: usize) -> usize {
    match concurrency {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n.max(1),
    }
}

/// The listening socket on `addr`.
pub fn bind(addr: SocketAddr) -> Result<StdListener, WorkersError> {
    let failed = |source| WorkersError::Bind { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(failed)?;
    socket.set_reuse_address(true).map_err(failed)?;
    socket.set_nonblocking(true).map_err(failed)?;
    socket.bind(&addr.into()).map_err(failed)?;
    socket.listen(1024).map_err(failed)?;
    Ok(socket.into())
}

/// The open connections a worker serves; a connection's [`Load`] counts
/// it until it ends.
#[derive(Default)]
struct Gauge(AtomicUsize);

struct Load(Arc<Gauge>);

impl Load {
    fn on(gauge: &Arc<Gauge>) -> Self {
        gauge.0.fetch_add(1, Ordering::Relaxed);
        Load(gauge.clone())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection on its way to a worker thread.
struct Handed {
    stream: StdStream,
    peer: SocketAddr,
    load: Load,
}

/// A worker thread, as the acceptor sees it.
struct Remote {
    gauge: Arc<Gauge>,
    handoff: mpsc::UnboundedSender<Handed>,
}

/// The acceptor and the worker threads; everything stops when dropped
/// (connections the caller's runtime serves run on with it).
pub struct Workers {
    gauges: Vec<Arc<Gauge>>,
    acceptor: TaskHandle<()>,
}

impl Workers {
    /// Serves each connection `listener` accepts with `serve`, on `count`
    /// workers: the caller's runtime (this must be called on it) and
    /// `count - 1` threads.
    pub fn start<F, Fut>(
        listener: StdListener,
        count: usize,
        serve: F,
    ) -> Result<Self, WorkersError>
    where
        F: Fn(TcpStream, SocketAddr) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        // Watched directly (not as a tokio listener) so that accepting
        // yields a std socket, registered only with the runtime that serves
        // it.
        // SAFETY: `listener` owns its descriptor and is moved into the
        // `AsyncFd`, so the descriptor stays open, and is the same one, for
        // as long as it is registered.
        let listener = unsafe { AsyncFd::register(listener) }
            .map_err(|err| WorkersError::Watch(err.into_parts().1))?;
        let local = Arc::new(Gauge::default());
        let mut gauges = vec![local.clone()];
        let mut remotes = Vec::new();
        for index in 1..count.max(1) {
            let (handoff, handed) = mpsc::unbounded_channel();
            let gauge = Arc::new(Gauge::default());
            let serve = serve.clone();
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || run(index, handed, serve))
                .map_err(|source| WorkersError::Thread { index, source })?;
            gauges.push(gauge.clone());
            remotes.push(Remote { gauge, handoff });
        }
        let acceptor = tokio::spawn(accept(listener, local, remotes, serve));
        Ok(Workers { gauges, acceptor })
    }

    /// The workers, the caller's runtime first.
    pub fn len(&self) -> usize {
        self.gauges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.gauges.is_empty()
    }

    /// The open connections each worker serves, the caller's runtime first.
    pub fn loads(&self) -> Vec<usize> {
        self.gauges
            .iter()
            .map(|g| g.0.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // The acceptor owns the listening socket and the hand-off
        // channels: once it is gone, each thread's channel closes and its
        // runtime ends, with the connections it served.
        self.acceptor.abort();
    }
}

/// Accepts every connection and hands each to the worker with the fewest
/// open connections (ties go round the workers).
async fn accept<F, Fut>(
    listener: AsyncFd<StdListener>,
    local: Arc<Gauge>,
    remotes: Vec<Remote>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut next = 0usize;
    loop {
        let mut ready = match listener.readable().await {
            Ok(ready) => ready,
            Err(err) => {
                tracing::error!(%err, "the listening socket cannot be watched; accepting stopped");
                return;
            }
        };
        loop {
            let (stream, peer) = match ready.try_io(|l| l.get_ref().accept()) {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(err)) if gone_before_taken(&err) => continue,
                Ok(Err(err)) => {
                    // Out of descriptors or memory: wait a little, never
                    // spin.
                    tracing::warn!(%err, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                Err(_would_block) => break,
            };
            let _ = stream.set_nodelay(true);
            if let Err(err) = stream.set_nonblocking(true) {
                tracing::warn!(%peer, %err, "dropped an accepted connection");
                continue;
            }
            let workers = remotes.len() + 1;
            let load = |i: usize| match i {
                0 => local.0.load(Ordering::Relaxed),
                i => remotes[i - 1].gauge.0.load(Ordering::Relaxed),
            };
            let chosen = (0..workers)
                .map(|k| (next + k) % workers)
                .min_by_key(|&i| load(i))
                .unwrap_or(0);
            next = (chosen + 1) % workers;
            if chosen == 0 {
                serve_here(&serve, stream, peer, Load::on(&local));
                continue;
            }
            let remote = &remotes[chosen - 1];
            let handed = Handed {
                stream,
                peer,
                load: Load::on(&remote.gauge),
            };
            if let Err(mpsc::error::SendError(handed)) = remote.handoff.send(handed) {
                // That worker's runtime ended (logged by it): serve here.
                let Handed { stream, peer, .. } = handed;
                serve_here(&serve, stream, peer, Load::on(&local));
            }
        }
    }
}

/// An accept error that concerns one connection only (reset or failed
/// before it was taken): the next one is accepted at once, so a peer
/// resetting its handshakes cannot slow everyone's accepts.
fn gone_before_taken(err: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        err.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
    ) || err.raw_os_error() == Some(libc::EPROTO)
}

/// Serves one connection on the current runtime.
fn serve_here<F, Fut>(serve: &F, stream: StdStream, peer: SocketAddr, load: Load)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match TcpStream::from_std(stream) {
        Ok(stream) => {
            let served = serve(stream, peer);
            tokio::spawn(async move {
                served.await;
                drop(load);
            });
        }
        Err(err) => tracing::warn!(%peer, %err, "dropped an accepted connection"),
    }
}

fn run<F, Fut>(index: usize, mut handed: mpsc::UnboundedReceiver<Handed>, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(worker = index, %err, "worker runtime failed to start; the others serve its share");
            return;
        }
    };
    runtime.block_on(async move {
        while let Some(Handed { stream, peer, load }) = handed.recv().await {
            serve_here(&serve, stream, peer, load);
        }
    });
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        sync::{Arc, Mutex},
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Each connection is answered with the serving thread's name and held
    /// open until the client closes it.
    fn name_and_hold(
        seen: Arc<Mutex<BTreeMap<String, usize>>>,
    ) -> impl Fn(TcpStream, SocketAddr) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
           + Send
           + Clone
           + 'static {
        move |mut stream, _| {
            let seen = seen.clone();
            Box::pin(async move {
                let name = std::thread::current().name().unwrap_or("?").to_owned();
                *seen.lock().unwrap().entry(name.clone()).or_default() += 1;
                let _ = stream.write_all(format!("{name}\n").as_bytes()).await;
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            })
        }
    }

    async fn served_by(stream: &mut tokio::net::TcpStream) -> String {
        let mut name = Vec::new();
        loop {
            let b = stream.read_u8().await.unwrap();
            if b == b'\n' {
                return String::from_utf8(name).unwrap();
            }
            name.push(b);
        }
    }

    #[tokio::test]
    async fn open_connections_are_balanced_exactly_and_workers_stop_when_dropped() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let workers = Workers::start(listener, 3, name_and_hold(seen.clone())).unwrap();
        assert_eq!(workers.len(), 3);
        // A burst, as a load generator opens its connections: 16 over 3
        // workers is 6, 5, 5 — never the 10 and 6 a hash can give.
        let mut streams = Vec::new();
        for _ in 0..16 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = served_by(&mut stream).await;
            streams.push((name, stream));
        }
        let mut loads = workers.loads();
        loads.sort();
        assert_eq!(loads, vec![5, 5, 6], "open connections per worker");
        let seen_now = seen.lock().unwrap().clone();
        assert_eq!(seen_now.len(), 3, "three threads served: {seen_now:?}");
        // Closing one worker's connections sends the next ones there.
        streams.retain(|(name, _)| name != "worker-1");
        for _ in 0..200 {
            if workers.loads().contains(&0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            workers.loads().contains(&0),
            "closed connections still counted: {:?}",
            workers.loads()
        );
        for _ in 0..5 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            assert_eq!(served_by(&mut stream).await, "worker-1");
            streams.push((String::new(), stream));
        }
        drop(workers);
        // Stopped once the runtime next runs: nothing accepts any more.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = tokio::net::TcpStream::connect(addr).await;
        assert!(refused.is_err(), "a stopped acceptor still listens");
    }

    #[test]
    fn only_one_connection_s_accept_errors_are_skipped_at_once() {
        use std::io::{Error, ErrorKind};
        for (err, skipped) in [
            (Error::from(ErrorKind::ConnectionAborted), true),
            (Error::from(ErrorKind::ConnectionReset), true),
            (Error::from_raw_os_error(libc::EPROTO), true),
            (Error::from_raw_os_error(libc::EMFILE), false),
            (Error::from_raw_os_error(libc::ENOBUFS), false),
        ] {
            assert_eq!(gone_before_taken(&err), skipped, "{err}");
        }
    }

    #[test]
    fn concurrency_zero_is_a_worker_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(count(0), cores);
        assert_eq!(count(3), 3);
    }
}
