//! The waypoint's worker threads, as Envoy and nginx run theirs: one per
//! core, each a single-threaded runtime accepting from the shared listener
//! and serving what it accepted whole. A tunnel's requests, the upstream
//! connections they use and the tasks they spawn stay on the thread that
//! accepted the tunnel, so handing a request to its upstream connection
//! and the response back never wakes another thread — which, on a
//! work-stealing runtime, costs more CPU than the request's own work.
//! The first worker is the caller's runtime, which also runs the control
//! side (xDS, certificates, admin).

use std::{future::Future, net::TcpListener as StdListener, thread::JoinHandle};

use tokio::{net::TcpListener, sync::oneshot};

#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error("sharing the listener with worker {index}: {source}")]
    Listener {
        index: usize,
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
        n => n,
    }
}

/// Worker threads besides the caller's runtime; stopped when dropped.
pub struct Workers {
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `extra` threads, each serving `listener` with `serve` on a
    /// runtime of its own (`serve` is called once per thread, with that
    /// thread's handle on the listener).
    pub fn start<F, Fut>(
        extra: usize,
        listener: &TcpListener,
        serve: F,
    ) -> Result<Self, WorkersError>
    where
        F: Fn(TcpListener) -> Fut + Send + Clone + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let mut workers = Workers {
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for index in 1..=extra {
            let shared =
                share(listener).map_err(|source| WorkersError::Listener { index, source })?;
            let (stop, stopped) = oneshot::channel();
            let serve = serve.clone();
            let thread = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || run(index, shared, serve, stopped))
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

/// Another handle on the same listening socket, for another runtime.
fn share(listener: &TcpListener) -> std::io::Result<StdListener> {
    let fd = std::os::fd::AsFd::as_fd(listener).try_clone_to_owned()?;
    let shared = StdListener::from(fd);
    shared.set_nonblocking(true)?;
    Ok(shared)
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
                tracing::error!(worker = index, %err, "worker cannot watch the listener");
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
        collections::BTreeSet,
        sync::{Arc, Mutex},
    };

    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn every_worker_accepts_from_the_shared_listener_and_stops_when_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<BTreeSet<String>>> = Arc::default();
        let record = seen.clone();
        let workers = Workers::start(2, &listener, move |listener: TcpListener| {
            let seen = record.clone();
            async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    let name = std::thread::current().name().unwrap_or("?").to_owned();
                    let _ = stream.write_all(name.as_bytes()).await;
                    seen.lock().unwrap().insert(name);
                }
            }
        })
        .unwrap();
        assert_eq!(workers.len(), 2);
        // The caller's runtime keeps its own handle and does not accept
        // here, so the two workers share every connection between them.
        for _ in 0..1000 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut name = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut name)
                .await
                .unwrap();
            assert!(name.starts_with("worker-"), "{name:?}");
            if seen.lock().unwrap().len() == 2 {
                break;
            }
        }
        assert_eq!(
            *seen.lock().unwrap(),
            BTreeSet::from(["worker-1".to_owned(), "worker-2".to_owned()]),
            "both workers accepted connections"
        );
        drop(workers);
        // Stopped: nothing accepts any more (the connection waits in the
        // backlog of the caller's listener, unanswered).
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
        )
        .await;
        assert!(read.is_err(), "a stopped worker still answered: {read:?}");
    }

    #[test]
    fn concurrency_zero_is_a_worker_per_core() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(count(0), cores);
        assert_eq!(count(3), 3);
    }
}
