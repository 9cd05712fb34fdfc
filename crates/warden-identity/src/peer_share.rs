//! A cap per peer on something peers hold (connections, streams): one peer may hold at most
//! its share, so a single allowed but misbehaving peer cannot take what the others need.
//! Used by the sidecar's inbound listeners (`limits.max_connections_per_peer`) and by the
//! control plane's API (connections and watches per caller).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Counts held per key (a peer's SPIFFE ID); a [`PeerSlot`] holds one until dropped.
#[derive(Debug)]
pub struct PeerCounts<K> {
    max: usize,
    held: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> PeerCounts<K> {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// One more for `key`, or `None` when it already holds `max`.
    pub fn acquire(self: &Arc<Self>, key: &K) -> Option<PeerSlot<K>> {
        let mut held = self.lock();
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: self.clone(),
            key: key.clone(),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        // Each critical section is one map update; a poisoned map is still consistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One unit of a peer's share, given back on drop. Keys with nothing held are removed, so
/// the map holds only peers that hold something.
#[derive(Debug)]
pub struct PeerSlot<K: Hash + Eq + Clone> {
    counts: Arc<PeerCounts<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Drop for PeerSlot<K> {
    fn drop(&mut self) {
        let mut held = self.counts.lock();
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_count_per_key_and_are_given_back_on_drop() {
        let counts = PeerCounts::new(2);
        let a1 = counts.acquire(&"a").expect("1");
        let _a2 = counts.acquire(&"a").expect("2");
        assert!(counts.acquire(&"a").is_none());
        let _b = counts.acquire(&"b").expect("b has its own share");
        drop(a1);
        assert!(counts.acquire(&"a").is_some());
        drop(_b);
        assert!(
            !counts.lock().contains_key(&"b"),
            "an empty share is forgotten"
        );
    }
}
