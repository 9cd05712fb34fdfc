//! The data-plane threads: thread per core, as Envoy's workers.
//!
//! Each worker is an OS thread running its own single-threaded tokio runtime, and holds its
//! own accept socket for every listener. With more than one worker the sockets of a listener
//! share its port through `SO_REUSEPORT`, so the kernel spreads new connections over the
//! workers, and a connection (its two sockets, its TLS state and its relay task) lives and
//! dies on the thread that accepted it. Nothing on the per-request path crosses threads:
//! a request costs one wake-up of one thread, where a work-stealing runtime may wake a
//! second thread that finds nothing to do.
//!
//! What the workers share is read-mostly and lock-free on the hot path: the policy
//! (`ArcSwap`), the identity store, the connection and handshake semaphores, the metrics
//! (atomics) and the audit queue. Policy pushes, SVID rotation and the admin API run on the
//! caller's runtime, outside the workers.
//!
//! `SO_REUSEPORT` would let a second process of the same user join a listener's port and take
//! a share of its connections without any error. Before binding the group, a probe socket
//! without `SO_REUSEPORT` binds the address, so a port already in use (by another sidecar
//! started with the same config, say) still fails start-up with "address in use". The probe
//! stays bound until the group listens, so with port 0 no other socket can be handed the
//! port in between. What remains: two processes of the same user starting at the same
//! instant on the same fixed port can both pass their probes (Envoy's `reuse_port` has the
//! same property); the kernel never lets another user join.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use warden_policy::Direction;

use crate::StartError;
use crate::shared::{Permits, Shared};

/// Listen backlog of each accept socket (tokio's default for `TcpListener::bind`).
const BACKLOG: u32 = 1024;

/// How long a stopping worker waits for its blocking tasks (DNS lookups) before leaving
/// them behind.
const SHUTDOWN_BLOCKING_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

thread_local! {
    /// The index of the worker running on this thread.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the data-plane worker on this thread (`None` on any other thread).
pub(crate) fn current() -> Option<usize> {
    WORKER.with(Cell::get)
}

/// Starts a connection's task on the current (worker) runtime.
pub(crate) type Serve = Arc<dyn Fn(TcpStream, SocketAddr, Permits) + Send + Sync>;

/// One listener as the workers see it: an accept socket per worker and what to do with an
/// accepted connection.
pub(crate) struct ListenerGroup {
    pub sockets: Vec<std::net::TcpListener>,
    pub direction: Direction,
    pub name: Arc<str>,
    /// Inbound: count the connection against `limits.max_pending_handshakes`.
    pub handshake_limit: bool,
    pub serve: Serve,
}

/// Binds `workers` accept sockets to `addr` (one without `SO_REUSEPORT` when `workers` is 1).
/// Returns the bound address (the OS-chosen port when `addr` has port 0) and the sockets,
/// listening and non-blocking, ready for [`TcpListener::from_std`] on a worker.
pub(crate) fn bind_group(
    name: &str,
    addr: SocketAddr,
    workers: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), StartError> {
    bind_group_with(name, addr, workers, false)
}

/// [`bind_group`]; with `v6_only`, an IPv6 socket takes IPv6 connections only (so that
/// `[::]:P` can sit beside `0.0.0.0:P`).
pub(crate) fn bind_group_with(
    name: &str,
    addr: SocketAddr,
    workers: usize,
    v6_only: bool,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), StartError> {
    let fail = |source| StartError::Bind {
        listener: name.to_owned(),
        addr,
        source,
    };
    if workers <= 1 {
        let socket = new_socket(addr, false, v6_only).map_err(fail)?;
        socket.bind(addr).map_err(fail)?;
        let listener = socket.listen(BACKLOG).map_err(fail)?;
        let bound = listener.local_addr().map_err(fail)?;
        return Ok((bound, vec![listener.into_std().map_err(fail)?]));
    }
    // The probe: fails like a plain bind would if anything listens on the address, also
    // another process's SO_REUSEPORT group. It is not listening and has SO_REUSEADDR, so the
    // group below can bind beside it; it is dropped once the group listens.
    let probe = new_socket(addr, false, v6_only).map_err(fail)?;
    probe.bind(addr).map_err(fail)?;
    let bound = probe.local_addr().map_err(fail)?;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = new_socket(bound, true, v6_only).map_err(fail)?;
        socket.bind(bound).map_err(fail)?;
        let listener = socket.listen(BACKLOG).map_err(fail)?;
        sockets.push(listener.into_std().map_err(fail)?);
    }
    drop(probe);
    Ok((bound, sockets))
}

fn new_socket(addr: SocketAddr, reuse_port: bool, v6_only: bool) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if v6_only && addr.is_ipv6() {
        socket2::SockRef::from(&socket).set_only_v6(true)?;
    }
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    Ok(socket)
}

/// The running worker threads. Dropping it closes every listener and every connection the
/// workers hold, and waits for the threads to end.
pub(crate) struct Workers {
    threads: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    exit: watch::Sender<bool>,
    /// Closed once every worker's accept loops have ended (their sockets are closed).
    accepting: Option<mpsc::Receiver<()>>,
}

impl Workers {
    /// Starts one thread per entry of each group's `sockets` (all groups have the same
    /// number). Returns once every worker has registered its sockets with its runtime.
    pub(crate) async fn start(
        shared: Arc<Shared>,
        groups: Vec<ListenerGroup>,
        workers: usize,
    ) -> Result<Self, StartError> {
        let (stop, stop_rx) = watch::channel(false);
        let (exit, exit_rx) = watch::channel(false);
        let (accepting_tx, accepting) = mpsc::channel::<()>(1);
        // Deal the sockets out: worker i gets the i-th socket of every listener.
        let mut per_worker: Vec<Vec<WorkerListener>> = (0..workers).map(|_| Vec::new()).collect();
        for group in groups {
            for (i, socket) in group.sockets.into_iter().enumerate() {
                per_worker[i % workers].push((
                    socket,
                    group.direction,
                    group.name.clone(),
                    group.handshake_limit,
                    group.serve.clone(),
                ));
            }
        }
        let mut this = Self {
            threads: Vec::with_capacity(workers),
            stop,
            exit,
            accepting: Some(accepting),
        };
        for (index, listeners) in per_worker.into_iter().enumerate() {
            let (ready_tx, ready_rx) = oneshot::channel();
            let worker = Worker {
                shared: shared.clone(),
                stop: stop_rx.clone(),
                exit: exit_rx.clone(),
                accepting: accepting_tx.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("warden-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(Some(index)));
                    worker.run(listeners, ready_tx)
                })
                .map_err(|e| StartError::Worker(e.to_string()))?;
            this.threads.push(thread);
            match ready_rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StartError::Worker(e)),
                Err(_) => {
                    return Err(StartError::Worker(
                        "a worker thread ended during start-up".into(),
                    ));
                }
            }
        }
        Ok(this)
    }

    pub(crate) fn count(&self) -> usize {
        self.threads.len()
    }

    /// Stops accepting on every worker and waits until every accept socket is closed; open
    /// connections keep running.
    pub(crate) async fn stop_accepting(&mut self) {
        let _ = self.stop.send(true);
        if let Some(mut rx) = self.accepting.take() {
            // Every worker holds a sender until its accept loops have returned.
            while rx.recv().await.is_some() {}
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = self.exit.send(true);
        for thread in self.threads.drain(..) {
            // A worker leaves its loop as soon as it sees `exit`; dropping its runtime then
            // drops its connection tasks, which closes their sockets.
            let _ = thread.join();
        }
    }
}

/// What a worker thread owns.
struct Worker {
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    exit: watch::Receiver<bool>,
    accepting: mpsc::Sender<()>,
}

type WorkerListener = (std::net::TcpListener, Direction, Arc<str>, bool, Serve);

impl Worker {
    fn run(self, listeners: Vec<WorkerListener>, ready: oneshot::Sender<Result<(), String>>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot start a worker runtime: {e}")));
                return;
            }
        };
        let Worker {
            shared,
            stop,
            mut exit,
            accepting,
        } = self;
        runtime.block_on(async move {
            let mut loops = JoinSet::new();
            for (socket, direction, name, handshake_limit, serve) in listeners {
                let tcp = match TcpListener::from_std(socket) {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        let _ = ready.send(Err(format!("listener {name:?}: {e}")));
                        return;
                    }
                };
                loops.spawn(accept_loop(
                    tcp,
                    stop.clone(),
                    shared.clone(),
                    (direction, name),
                    handshake_limit,
                    move |stream, addr, permits| serve(stream, addr, permits),
                ));
            }
            let _ = ready.send(Ok(()));
            let accept_loops = async {
                while loops.join_next().await.is_some() {}
                drop(accepting);
                std::future::pending::<()>().await
            };
            tokio::select! {
                _ = exit.wait_for(|exit| *exit) => {}
                () = accept_loops => {}
            }
        });
        // Dropping the runtime drops the connection tasks (closing their sockets) but would
        // also wait, without limit, for blocking work such as a DNS lookup of an outbound
        // `connect` name; `Workers::drop` joins this thread, so bound that wait.
        runtime.shutdown_timeout(SHUTDOWN_BLOCKING_WAIT);
    }
}

/// Accepts until told to stop. Accept errors (out of file descriptors, most often) back off
/// instead of spinning, and the loop recovers by itself once resources free up.
///
/// A connection over `limits.max_connections`, or (inbound, `handshake_limit`) over
/// `limits.max_pending_handshakes`, is closed at once: it never costs a task or a handshake.
async fn accept_loop(
    tcp: TcpListener,
    mut stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
    (direction, listener): (warden_policy::Direction, Arc<str>),
    handshake_limit: bool,
    serve: impl Fn(tokio::net::TcpStream, SocketAddr, Permits),
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = tcp.accept() => match accepted {
                Ok((stream, addr)) => {
                    backoff = Duration::from_millis(5);
                    let Ok(connection) = shared.permits.clone().try_acquire_owned() else {
                        refuse(&shared, direction, &listener, addr, "limits.max_connections");
                        continue;
                    };
                    let handshake = if handshake_limit {
                        match shared.handshakes.clone().try_acquire_owned() {
                            Ok(p) => Some(p),
                            Err(_) => {
                                refuse(&shared, direction, &listener, addr, "limits.max_pending_handshakes");
                                continue;
                            }
                        }
                    } else {
                        None
                    };
                    serve(stream, addr, Permits { _connection: connection, handshake });
                }
                Err(e) => {
                    tracing::error!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                    // A stop during the back-off ends the loop at once.
                    tokio::select! {
                        _ = stop.changed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// Counts and audits a connection refused at a limit; the caller drops the socket.
fn refuse(
    shared: &Shared,
    direction: warden_policy::Direction,
    listener: &Arc<str>,
    addr: SocketAddr,
    limit: &'static str,
) {
    // Debug, not warn: under a flood this runs per connection, and the metric plus the
    // rate-limited audit record already say it; a log line each would be a disk DoS.
    tracing::debug!(%addr, limit, "connection refused at a limit");
    shared
        .telemetry
        .refused_at_limit(direction, listener, addr, None, limit);
}
