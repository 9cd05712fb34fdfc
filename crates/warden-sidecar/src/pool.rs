//! Per-thread pools of byte buffers. A worker thread owns its connections, so a buffer given
//! back on a thread is taken again on that thread without locks or allocation. Each pool is
//! bounded, so a burst of connections that all went idle cannot pin memory forever.

use std::cell::RefCell;
use std::thread::LocalKey;

pub(crate) type Slots = RefCell<Vec<Vec<u8>>>;

/// A pool of `size`-byte buffers, at most `max` parked per thread.
pub(crate) struct Pool {
    pub slots: &'static LocalKey<Slots>,
    pub size: usize,
    pub max: usize,
}

impl Pool {
    /// A parked buffer, or a new zeroed one of `size` bytes.
    pub(crate) fn take(&self) -> Vec<u8> {
        self.slots
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| vec![0; self.size])
    }

    /// Parks `buf` for the next [`Pool::take`] on this thread (dropped if the pool is full).
    pub(crate) fn give(&self, buf: Vec<u8>) {
        self.slots.with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < self.max {
                pool.push(buf);
            }
        });
    }
}
