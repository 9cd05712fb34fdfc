//! Every open connection, so that a policy change can re-authorize each one and close
//! those no longer allowed (reason `revoked`), and so the admin API can list them.
//!
//! The registry is touched once when a connection opens and once when it closes, never per
//! byte; per-connection byte counters live in [`ConnStats`] atomics owned by the relay.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;
use warden_identity::SpiffeId;
use warden_policy::{Direction, PolicySnapshot};

/// Why a connection ended, as counted in `warden_connections_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    Eof,
    Error,
    Revoked,
    Idle,
    Drain,
    Limit,
}

impl CloseReason {
    pub fn as_label(self) -> &'static str {
        match self {
            Self::Eof => "eof",
            Self::Error => "error",
            Self::Revoked => "revoked",
            Self::Idle => "idle",
            Self::Drain => "drain",
            Self::Limit => "limit",
        }
    }
}

/// Byte counters of one connection, updated by the relay without locks.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Bytes received from the peer side (TLS side inbound; upstream side outbound).
    pub rx: AtomicU64,
    /// Bytes sent to the peer side.
    pub tx: AtomicU64,
}

impl ConnStats {
    pub fn rx(&self) -> u64 {
        self.rx.load(Ordering::Relaxed)
    }
    pub fn tx(&self) -> u64 {
        self.tx.load(Ordering::Relaxed)
    }
}

struct Entry {
    direction: Direction,
    listener: Arc<str>,
    peer: SpiffeId,
    peer_addr: SocketAddr,
    opened: Instant,
    worker: Option<usize>,
    stats: Arc<ConnStats>,
    close: Option<oneshot::Sender<CloseReason>>,
}

/// A read-only view of one open connection.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub id: u64,
    pub direction: Direction,
    pub listener: Arc<str>,
    pub peer: SpiffeId,
    pub peer_addr: SocketAddr,
    pub age_secs: f64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// The data-plane worker thread serving the connection (`None` outside a worker).
    pub worker: Option<usize>,
}

#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
    /// Set by [`Registry::close_all`]: a connection that registers afterwards (its handshake
    /// was still running at shutdown) is told to close at once instead of outliving it.
    closing: Mutex<Option<CloseReason>>,
}

/// Removes the connection from the registry when dropped, whatever path the task takes.
pub struct Registration {
    registry: Arc<Registry>,
    pub id: u64,
    pub stats: Arc<ConnStats>,
    pub closed: oneshot::Receiver<CloseReason>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding the lock cannot leave the map inconsistent (single inserts
        // and removes), so a poisoned lock is still safe to use.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn register(
        self: &Arc<Self>,
        id: u64,
        direction: Direction,
        listener: Arc<str>,
        peer: SpiffeId,
        peer_addr: SocketAddr,
    ) -> Registration {
        let (tx, rx) = oneshot::channel();
        let stats = Arc::new(ConnStats::default());
        let mut open = self.lock();
        // Checked under the map lock that `close_all` also takes, so no registration slips
        // between its walk and the flag.
        let closing = *self.closing.lock().unwrap_or_else(|p| p.into_inner());
        let close = match closing {
            Some(reason) => {
                let _ = tx.send(reason);
                None
            }
            None => Some(tx),
        };
        open.insert(
            id,
            Entry {
                direction,
                listener,
                peer,
                peer_addr,
                opened: Instant::now(),
                worker: crate::workers::current(),
                stats: stats.clone(),
                close,
            },
        );
        drop(open);
        Registration {
            registry: self.clone(),
            id,
            stats,
            closed: rx,
        }
    }

    /// Re-authorizes every open connection against `policy`; signals those now denied to
    /// close with `Revoked`. `check_outbound` is false when outbound is governed by
    /// `server_id` alone (no control plane). Returns how many were revoked.
    pub fn recheck(&self, policy: &PolicySnapshot) -> usize {
        let mut revoked = 0;
        for entry in self.lock().values_mut() {
            if !policy
                .decide(entry.direction, &entry.listener, &entry.peer)
                .allowed
                && let Some(close) = entry.close.take()
            {
                // The receiver is gone only if the connection is already closing.
                let _ = close.send(CloseReason::Revoked);
                revoked += 1;
            }
        }
        revoked
    }

    /// Asks every open connection to close with `reason` (shutdown after the grace period).
    /// Connections registering from now on are closed at once with the same reason.
    pub fn close_all(&self, reason: CloseReason) {
        let mut open = self.lock();
        *self.closing.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        for entry in open.values_mut() {
            if let Some(close) = entry.close.take() {
                let _ = close.send(reason);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn snapshot(&self) -> Vec<ConnectionInfo> {
        let now = Instant::now();
        let mut list: Vec<_> = self
            .lock()
            .iter()
            .map(|(id, e)| ConnectionInfo {
                id: *id,
                direction: e.direction,
                listener: e.listener.clone(),
                peer: e.peer.clone(),
                peer_addr: e.peer_addr,
                age_secs: now.duration_since(e.opened).as_secs_f64(),
                rx_bytes: e.stats.rx(),
                tx_bytes: e.stats.tx(),
                worker: e.worker,
            })
            .collect();
        list.sort_by_key(|c| c.id);
        list
    }
}
