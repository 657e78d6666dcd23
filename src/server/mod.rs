//! The local HTTP/1.1 server: accept, serve with the gateway, shut down
//! gracefully. Beside it: [`metrics`], the listener for `/metrics` and
//! `/healthz` (sharing this accept loop), and [`stall`], which cuts off a
//! client that accepts no bytes.

mod metrics;
mod stall;

pub use metrics::serve_metrics;
use stall::StallGuard;

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::client_ip::Peer;
use crate::config::{Settings, METRICS_LISTEN};
use crate::error::ConfigError;
use crate::gateway::Gateway;
use crate::startup::{self, Mode};
use crate::stats;

/// How long a client may take to send its request head (slow-loris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the gateway from `settings`, listens, and serves until SIGTERM or
/// Ctrl-C.
pub async fn run(settings: Settings) -> Result<(), ConfigError> {
    // Installed before start-up, so that the token list's load is counted.
    let metrics = match settings.metrics_listen {
        Some(address) => Some((
            address,
            stats::prometheus::install().map_err(|problem| ConfigError::Invalid {
                setting: METRICS_LISTEN,
                problem,
            })?,
        )),
        None => None,
    };
    let gateway = startup::build(&settings, Mode::Local).await?;
    if let Some((address, handle)) = metrics {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ConfigError::Listen { address, source })?;
        tracing::info!(%address, "metrics listening (/metrics, /healthz)");
        tokio::spawn(serve_metrics(listener, handle, gateway.clone()));
    }
    let listener =
        TcpListener::bind(settings.listen)
            .await
            .map_err(|source| ConfigError::Listen {
                address: settings.listen,
                source,
            })?;
    let address = listener
        .local_addr()
        .map_err(|source| ConfigError::Listen {
            address: settings.listen,
            source,
        })?;
    let workers = settings.worker_threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    tracing::info!(%address, workers, "listening");
    serve_on_workers(
        listener,
        gateway,
        shutdown_signal(),
        settings.shutdown_grace(),
        workers,
    )
    .await
    .map_err(ConfigError::Workers)
}

/// Serves until `shutdown` resolves, then stops accepting and gives in-flight
/// requests up to `grace` to finish. Everything runs on the current runtime.
pub async fn serve(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    anchor_timers();
    let connections = Connections::new(gateway);
    accept(&listener, shutdown, |stream| connections.serve(stream)).await;
    drop(listener);
    announce(grace);
    report(connections.drain(grace).await);
}

/// Like [`serve`], then closes the gateway. The connections are spread over
/// `workers` threads, each running a single-threaded runtime of its own and
/// keeping its own upstream pool: a connection, its requests and their
/// upstream connections then stay on one thread, with no wake-ups across
/// threads and no work stealing. This runtime only accepts, handing
/// connections out in turn. With one worker (or none) it is [`serve`].
///
/// The workers keep running until this returns, so that work spawned on one
/// of them (an upstream or AWS connection another worker borrowed, a
/// completion hook) is driven to its end during the drain.
pub async fn serve_on_workers(
    listener: TcpListener,
    gateway: Gateway,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    workers: usize,
) -> std::io::Result<()> {
    if workers <= 1 {
        serve(listener, gateway.clone(), shutdown, grace).await;
        gateway.close().await;
        return Ok(());
    }
    let (release, released) = tokio::sync::watch::channel(());
    let mut lanes = Vec::with_capacity(workers);
    let mut drained = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for n in 0..workers {
        let (lane, mut incoming) = tokio::sync::mpsc::unbounded_channel::<std::net::TcpStream>();
        let (done, finished) = tokio::sync::oneshot::channel::<bool>();
        let gateway = gateway.with_own_pool();
        let mut released = released.clone();
        // Built here, so that a runtime that cannot start fails the start-up.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::Builder::new()
            .name(format!("worker-{n}"))
            .spawn(move || {
                runtime.block_on(async move {
                    anchor_timers();
                    let connections = Connections::new(gateway);
                    while let Some(stream) = incoming.recv().await {
                        match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => connections.serve(stream),
                            Err(error) => {
                                tracing::warn!(%error, "a connection could not be handed over")
                            }
                        }
                    }
                    let _ = done.send(connections.drain(grace).await);
                    // Until every worker has drained and the gateway is closed.
                    let _ = released.changed().await;
                });
            })?;
        lanes.push(lane);
        drained.push(finished);
        threads.push(thread);
    }
    let mut next = 0;
    accept(&listener, shutdown, |stream| {
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "a connection could not be handed over");
                return;
            }
        };
        if lanes[next].send(stream).is_err() {
            tracing::warn!(worker = next, "a worker has stopped; connection dropped");
        }
        next = (next + 1) % lanes.len();
    })
    .await;
    drop(listener);
    announce(grace);
    drop(lanes);
    let mut all_closed = true;
    for finished in drained {
        all_closed &= finished.await.unwrap_or(false);
    }
    report(all_closed);
    gateway.close().await;
    drop(release);
    for thread in threads {
        if thread.join().is_err() {
            tracing::error!("a worker panicked");
        }
    }
    Ok(())
}

/// Accepts connections until `shutdown` resolves, handing each to `take`.
async fn accept(
    listener: &TcpListener,
    shutdown: impl Future<Output = ()>,
    mut take: impl FnMut(tokio::net::TcpStream),
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        take(stream);
    }
}

/// How often the timer anchor fires: sooner than any per-request timer
/// (the header read's 30 s, the upstream's and the clients' timeouts, all
/// whole seconds), so none of them is ever the runtime's next wake-up.
const TIMER_ANCHOR_EVERY: Duration = Duration::from_secs(1);

/// Keeps a timer pending on the current runtime, always due within
/// [`TIMER_ANCHOR_EVERY`].
///
/// tokio's timer wakes its I/O driver (a write to an eventfd) whenever a new
/// timer is due before the driver's planned wake-up, even when the runtime's
/// own thread sets it while running, with nobody parked to wake
/// (tokio-rs/tokio#5207). Between requests no timer was pending, so the
/// first timers of each request did just that: two `write`s per request on
/// top of the six calls nginx makes too (two each of `epoll_wait`,
/// `recvfrom` and `writev`). With the anchor the planned wake-up is always
/// within a second, the per-request timers fall after it, and they wake
/// nothing. An idle runtime pays one wake-up a second.
fn anchor_timers() {
    tokio::spawn(async {
        loop {
            tokio::time::sleep(TIMER_ANCHOR_EVERY).await;
        }
    });
}

/// The connections one runtime serves, watched for a graceful shutdown.
struct Connections {
    gateway: Gateway,
    builder: http1::Builder,
    graceful: GracefulShutdown,
}

impl Connections {
    fn new(gateway: Gateway) -> Self {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        Self {
            gateway,
            builder,
            graceful: GracefulShutdown::new(),
        }
    }

    /// Serves one connection, in a task of the current runtime.
    fn serve(&self, stream: tokio::net::TcpStream) {
        let gateway = self.gateway.clone();
        let idle = gateway.client_idle_timeout();
        let peer = stream.peer_addr().ok().map(|a| Peer::new(a.ip()));
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            if let Some(peer) = peer {
                request.extensions_mut().insert(peer);
            }
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(request).await) }
        });
        let io = StallGuard::new(TokioIo::new(stream), idle);
        let connection = self
            .graceful
            .watch(self.builder.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }

    /// Asks every connection to finish its request in flight and close,
    /// waiting up to `grace` for them; whether they all closed in time.
    async fn drain(self, grace: Duration) -> bool {
        tokio::select! {
            () = self.graceful.shutdown() => true,
            () = tokio::time::sleep(grace) => false,
        }
    }
}

fn announce(grace: Duration) {
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: no new connections, waiting for in-flight requests"
    );
}

fn report(all_closed: bool) {
    if all_closed {
        tracing::info!("all connections closed");
    } else {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
