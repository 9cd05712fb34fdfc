//! Which `[[outbound]]` claims a captured connection's original destination.
//!
//! `destinations` are `host:port`s. Addresses are claimed as written; names are resolved
//! at start, again every [`REFRESH`], and when a captured connection goes to an address
//! nobody claims: that connection waits for a resolution that started after it arrived, so
//! a service whose pods moved is found on the first connection after the move. Concurrent
//! misses share one resolution, and resolutions are at least [`MISS_SPACING`] apart, so an
//! app dialling unknown addresses in a loop costs the resolver at most a few queries a
//! second. A name that fails to resolve keeps the addresses it had: a DNS hiccup must not
//! turn a known service into an unknown one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::pki_types::ServerName;

/// How often names are resolved again.
pub(crate) const REFRESH: Duration = Duration::from_secs(5);
/// The least time between the starts of two resolutions.
const MISS_SPACING: Duration = Duration::from_millis(200);
/// How long one resolution of every name may take before the old addresses are kept.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The `[[outbound]]` (by index) a destination belongs to, and the name to send as SNI.
#[derive(Debug)]
pub(crate) struct Claim {
    pub listener: usize,
    pub server_name: ServerName<'static>,
}

struct Entry {
    listener: usize,
    host_port: String,
    claim: Arc<Claim>,
    /// Literal address, or the addresses the name last resolved to.
    addrs: Vec<SocketAddr>,
    literal: bool,
}

pub(crate) struct Destinations {
    /// Held for a whole resolution, so resolutions never overlap.
    entries: tokio::sync::Mutex<Vec<Entry>>,
    table: ArcSwap<HashMap<SocketAddr, Arc<Claim>>>,
    /// When the last resolution started.
    last_started: Mutex<Option<Instant>>,
    /// Whether any destination is a name (else there is nothing to resolve).
    has_names: bool,
}

impl Destinations {
    /// `claims`: for each outbound listener index, its `destinations`.
    pub(crate) fn new<'a>(claims: impl IntoIterator<Item = (usize, &'a [String])>) -> Self {
        let mut entries = Vec::new();
        for (listener, destinations) in claims {
            for d in destinations {
                let literal = d.parse::<SocketAddr>().ok();
                entries.push(Entry {
                    listener,
                    host_port: d.clone(),
                    claim: Arc::new(Claim {
                        listener,
                        server_name: crate::tls::server_name(d),
                    }),
                    addrs: literal.into_iter().collect(),
                    literal: literal.is_some(),
                });
            }
        }
        let table = build(&entries);
        let has_names = entries.iter().any(|e| !e.literal);
        Self {
            has_names,
            entries: tokio::sync::Mutex::new(entries),
            table: ArcSwap::from_pointee(table),
            last_started: Mutex::new(None),
        }
    }

    pub(crate) fn has_names(&self) -> bool {
        self.has_names
    }

    /// The claim on `dst`, if any.
    pub(crate) fn lookup(&self, dst: SocketAddr) -> Option<Arc<Claim>> {
        self.table.load().get(&canonical(dst)).cloned()
    }

    /// [`Self::lookup`]; when `dst` is unclaimed, after a resolution of the names that
    /// started once this call had begun.
    pub(crate) async fn lookup_or_resolve(&self, dst: SocketAddr) -> Option<Arc<Claim>> {
        if let Some(claim) = self.lookup(dst) {
            return Some(claim);
        }
        if !self.has_names {
            return None;
        }
        self.resolve_since(Instant::now()).await;
        self.lookup(dst)
    }

    fn last_started(&self) -> Option<Instant> {
        *self.last_started.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Resolves every name and installs the new table.
    pub(crate) async fn resolve(&self) {
        self.resolve_since(Instant::now()).await;
    }

    /// Makes sure a resolution started at or after `asked` has finished: waits for one in
    /// progress to end, and starts one unless a resolution that started after `asked`
    /// already ran. Starts are [`MISS_SPACING`] apart at least.
    async fn resolve_since(&self, asked: Instant) {
        let mut entries = self.entries.lock().await;
        if self.last_started().is_some_and(|t| t >= asked) {
            return; // resolved by another caller while this one waited for the lock
        }
        if let Some(next) = self.last_started().map(|t| t + MISS_SPACING)
            && next > Instant::now()
        {
            tokio::time::sleep_until(next.into()).await;
        }
        *self.last_started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        for entry in entries.iter_mut().filter(|e| !e.literal) {
            let lookup = tokio::net::lookup_host(entry.host_port.as_str());
            match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                Ok(Ok(addrs)) => {
                    let mut addrs: Vec<SocketAddr> = addrs.map(canonical).collect();
                    addrs.sort();
                    addrs.dedup();
                    if addrs != entry.addrs {
                        tracing::info!(destination = %entry.host_port, listener = entry.listener, ?addrs, "outbound destination resolved");
                        entry.addrs = addrs;
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(destination = %entry.host_port, error = %e, "cannot resolve an outbound destination; keeping its last addresses");
                }
                Err(_) => {
                    tracing::warn!(destination = %entry.host_port, "resolving an outbound destination timed out; keeping its last addresses");
                }
            }
        }
        self.table.store(Arc::new(build(&entries)));
    }
}

/// Resolves the names now and every [`REFRESH`], until the task is aborted (with the
/// sidecar).
pub(crate) async fn refresh_loop(destinations: Arc<Destinations>) {
    let mut every = tokio::time::interval(REFRESH);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        destinations.resolve().await;
    }
}

/// Address -> claim. Literal addresses first, then names in config order: the first claim
/// on an address wins (the config rejects two literal claims on one address).
fn build(entries: &[Entry]) -> HashMap<SocketAddr, Arc<Claim>> {
    let mut table = HashMap::new();
    let ordered = entries
        .iter()
        .filter(|e| e.literal)
        .chain(entries.iter().filter(|e| !e.literal));
    for entry in ordered {
        for addr in &entry.addrs {
            table.entry(*addr).or_insert_with(|| entry.claim.clone());
        }
    }
    table
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) compare as IPv4.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literal_addresses_and_resolved_names_are_claimed() {
        let a = vec!["198.18.0.3:8080".to_owned()];
        let b = vec!["localhost:9090".to_owned()];
        let d = Destinations::new([(0, a.as_slice()), (1, b.as_slice())]);
        let v4 = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(d.lookup(v4("198.18.0.3:8080")).map(|c| c.listener), Some(0));
        assert!(d.lookup(v4("198.18.0.3:8081")).is_none());
        assert!(d.lookup(v4("127.0.0.1:9090")).is_none(), "not resolved yet");
        // An unclaimed destination resolves the names before it is refused.
        assert_eq!(
            d.lookup_or_resolve(v4("127.0.0.1:9090"))
                .await
                .map(|c| c.listener),
            Some(1)
        );
        let mapped: SocketAddr = "[::ffff:198.18.0.3]:8080".parse().expect("addr");
        assert_eq!(d.lookup(mapped).map(|c| c.listener), Some(0));
    }
}
