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
