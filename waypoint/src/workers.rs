//! The waypoint's worker threads, as Envoy and nginx run theirs: one per
//! core, each a single-threaded runtime with a listening socket of its own
//! on the shared address (`SO_REUSEPORT`: the kernel spreads new
//! connections across them; a shared socket would let whichever thread
//! wakes first take a whole burst), serving what it accepted whole. A
//! tunnel's requests, the upstream connections they use and the tasks they
//! spawn stay on the thread that accepted the tunnel, so handing a request
//! to its upstream connection and the response back never wakes another
//! thread — which, on a work-stealing runtime, costs more CPU than the
//! request's own work. The first worker is the caller's runtime, which
//! also runs the control side (xDS, certificates, admin).

use std::{
    future::Future,
    net::{SocketAddr, TcpListener as StdListener},
    thread::JoinHandle,
};

use socket2::{Domain, Socket, Type};
use tokio::{net::TcpListener, sync::oneshot};

#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("binding {addr} for {count} workers: {source}; is another process using it?")]
    Bind {
        addr: SocketAddr,
        count: usize,
        #[source]
        source: std::io::Error,
    },
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

/// `count` listening sockets on `addr` (one port for all, when `addr`'s
/// is 0), each for one worker.
pub fn bind(addr: SocketAddr, count: usize) -> Result<Vec<StdListener>, WorkersError> {
    let failed = |source| WorkersError::Bind {
        addr,
        count,
        source,
    };
    let first = listen(addr).map_err(failed)?;
    let bound = first.local_addr().map_err(failed)?;
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(listen(bound).map_err(failed)?);
    }
    Ok(listeners)
}

fn listen(addr: SocketAddr) -> std::io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Worker threads besides the caller's runtime; stopped when dropped.
pub struct Workers {
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts a thread for each of `listeners`, serving it with `serve` on
    /// a runtime of its own.
    pub fn start<F, Fut>(listeners: Vec<StdListener>, serve: F) -> Result<Self, WorkersError>
    where
        F: Fn(TcpListener) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let mut workers = Workers {
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let index = i + 1;
            let (stop, stopped) = oneshot::channel();
            let serve = serve.clone();
            let thread = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || run(index, listener, serve, stopped))
                .map_err(|source| WorkersError::Thread { index, source })?;
            workers.stops.push(stop);
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Threads running besides the caller's.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn run<F, Fut>(index: usize, listener: StdListener, serve: F, stopped: oneshot::Receiver<()>)
where
    F: Fn(TcpListener) -> Fut,
    Fut: Future<Output = ()>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(worker = index, %err, "worker runtime failed to start");
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(worker = index, %err, "worker cannot watch its listener");
                return;
            }
        };
        tokio::select! {
            _ = serve(listener) => {}
            _ = stopped => {}
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

    #[tokio::test]
    async fn connections_are_spread_over_the_workers_which_stop_when_dropped() {
        let listeners = bind("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let addr = listeners[0].local_addr().unwrap();
        assert!(listeners.iter().all(|l| l.local_addr().unwrap() == addr));
        let seen: Arc<Mutex<BTreeMap<String, usize>>> = Arc::default();
        let record = seen.clone();
        let workers = Workers::start(listeners, move |listener: TcpListener| {
            let seen = record.clone();
            async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let name = std::thread::current().name().unwrap_or("?").to_owned();
                    let _ = stream.write_all(name.as_bytes()).await;
                    *seen.lock().unwrap().entry(name).or_default() += 1;
                }
            }
        })
        .unwrap();
        assert_eq!(workers.len(), 3);
        // A burst of connections, as a load generator opens them.
        let mut streams = Vec::new();
        for _ in 0..60 {
            streams.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        for mut stream in streams {
            let mut name = String::new();
            stream.read_to_string(&mut name).await.unwrap();
            assert!(name.starts_with("worker-"), "{name:?}");
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "every worker took connections: {seen:?}");
        assert_eq!(seen.values().sum::<usize>(), 60);
        drop(workers);
        // Stopped: the address is free, nothing accepts any more.
        let refused = tokio::net::TcpStream::connect(addr).await;
        assert!(refused.is_err(), "a stopped worker still listens");
    }

    #[test]
    fn concurrency_zero_is_a_worker_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(count(0), cores);
        assert_eq!(count(3), 3);
    }
}
