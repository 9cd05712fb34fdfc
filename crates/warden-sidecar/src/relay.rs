//! Moves bytes both ways between the TLS side and the plaintext side.
//!
//! Half-close is propagated: when one side sends EOF (FIN, or TLS close_notify) the other
//! side's write half is shut down and the opposite direction keeps flowing until it ends too.
//! The relay also ends on an idle timeout and on a close signal from the registry.
//!
//! Buffers adapt to the traffic instead of being sized for the worst case: each direction
//! starts with [`INITIAL_BUF`] bytes and grows (x4, up to [`MAX_BUF`]) only when a read fills
//! its buffer, i.e. when the peer is streaming. An idle or chatty connection therefore costs
//! two small buffers, while a bulk transfer gets large reads (fewer syscalls, full TLS
//! records). Per read, the relay does a couple of relaxed atomic stores and no allocation.
//!
//! A small buffer is handed back to a per-thread pool whenever its direction has nothing
//! buffered and nothing to read, so an idle connection holds no buffer at all, and taking one
//! again is a pop from that pool rather than an allocation.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::pool::{Pool, Slots};
use crate::registry::{CloseReason, ConnStats};

/// First buffer size per direction: enough for a typical request or response header.
pub const INITIAL_BUF: usize = 2 * 1024;
/// Largest buffer per direction, reached only by streams that keep filling it.
pub const MAX_BUF: usize = 64 * 1024;

thread_local! {
    static SLOTS: Slots = const { RefCell::new(Vec::new()) };
}

/// Small relay buffers parked per worker thread.
const POOL: Pool = Pool {
    slots: &SLOTS,
    size: INITIAL_BUF,
    max: 256,
};

/// One direction of the copy.
struct Half {
    buf: Vec<u8>,
    /// Bytes `buf[pos..filled]` are read but not yet written.
    pos: usize,
    filled: usize,
    read_done: bool,
    done: bool,
    need_flush: bool,
}

impl Half {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            filled: 0,
            read_done: false,
            done: false,
            need_flush: false,
        }
    }

    /// The whole buffer was filled by one read: the peer is streaming, so read bigger.
    fn grow_if_filled(&mut self) {
        if self.filled == self.buf.len() && self.buf.len() < MAX_BUF {
            let bigger = (self.buf.len() * 4).min(MAX_BUF);
            self.buf.resize(bigger, 0);
        }
    }

    /// Copies from `r` to `w` until `r` ends, then shuts `w` down (half-close).
    /// `count` receives the bytes read, `activity` the time of the last byte.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        count: &AtomicU64,
        activity: &Activity,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.pos == self.filled && !self.read_done {
                if self.buf.is_empty() {
                    self.buf = POOL.take();
                }
                let mut rb = ReadBuf::new(&mut self.buf);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read right now: push out what was written, and park
                        // a small buffer (a streaming connection keeps its large one).
                        if self.buf.len() == INITIAL_BUF {
                            POOL.give(std::mem::take(&mut self.buf));
                        }
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
                let n = rb.filled().len();
                if n == 0 {
                    self.read_done = true;
                } else {
                    self.pos = 0;
                    self.filled = n;
                    count.fetch_add(n as u64, Ordering::Relaxed);
                    activity.touch();
                }
            }
            while self.pos < self.filled {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.filled]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.need_flush = true;
            }
            self.grow_if_filled();
            if self.read_done {
                ready!(w.as_mut().poll_flush(cx))?;
                ready!(w.as_mut().poll_shutdown(cx))?;
                self.done = true;
                if self.buf.len() == INITIAL_BUF {
                    POOL.give(std::mem::take(&mut self.buf));
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// When anything last moved, in milliseconds since `epoch`.
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Both directions; resolves when both have ended (or either fails).
struct Bidirectional<'a, P, L> {
    peer: P,
    local: L,
    inward: Half,
    outward: Half,
    stats: &'a ConnStats,
    activity: &'a Activity,
}

impl<P, L> Future for Bidirectional<'_, P, L>
where
    P: AsyncRead + AsyncWrite + Unpin,
    L: AsyncRead + AsyncWrite + Unpin,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // peer -> local counts as rx, local -> peer as tx (the peer side's view).
        let inward = this.inward.poll_copy(
            cx,
            Pin::new(&mut this.peer),
            Pin::new(&mut this.local),
            &this.stats.rx,
            this.activity,
        )?;
        let outward = this.outward.poll_copy(
            cx,
            Pin::new(&mut this.local),
            Pin::new(&mut this.peer),
            &this.stats.tx,
            this.activity,
        )?;
        if inward.is_ready() && outward.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// Relays until both directions have ended, the connection idles for `idle`, or `closed`
/// fires. `peer_side` is the remote (mTLS) side; its bytes count as rx/tx in `stats`.
pub async fn relay<P, L>(
    peer_side: P,
    local_side: L,
    stats: Arc<ConnStats>,
    idle: Duration,
    closed: &mut oneshot::Receiver<CloseReason>,
) -> CloseReason
where
    P: AsyncRead + AsyncWrite + Unpin,
    L: AsyncRead + AsyncWrite + Unpin,
{
    let epoch = Instant::now();
    let activity = Activity {
        epoch,
        last_ms: AtomicU64::new(0),
    };
    let mut copy = Bidirectional {
        peer: peer_side,
        local: local_side,
        inward: Half::new(),
        outward: Half::new(),
        stats: &stats,
        activity: &activity,
    };
    // The idle check wakes at most once per `idle / 4`, not per byte.
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut deadline = epoch + idle;
    loop {
        tokio::select! {
            res = &mut copy => return match res {
                Ok(()) => CloseReason::Eof,
                Err(_) => CloseReason::Error,
            },
            reason = &mut *closed => return reason.unwrap_or(CloseReason::Drain),
            () = tokio::time::sleep_until(deadline.min(Instant::now() + tick)) => {
                deadline = activity.last() + idle;
                if Instant::now() >= deadline {
                    return CloseReason::Idle;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn copies_both_ways_propagates_half_close_and_counts() {
        let (peer_far, peer_near) = duplex(1 << 20);
        let (local_near, local_far) = duplex(1 << 20);
        let stats = Arc::new(ConnStats::default());
        let (_tx, mut rx) = oneshot::channel();
        let s = stats.clone();
        let task = tokio::spawn(async move {
            relay(peer_near, local_near, s, Duration::from_secs(60), &mut rx).await
        });
        let (mut peer_r, mut peer_w) = tokio::io::split(peer_far);
        let (mut local_r, mut local_w) = tokio::io::split(local_far);
        // 300 KiB one way forces the buffer to grow; the other way a short answer.
        let big: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
        peer_w.write_all(&big).await.expect("write");
        peer_w.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        local_r.read_to_end(&mut got).await.expect("read to EOF");
        assert!(got == big, "bytes differ");
        // The local side can still answer after the peer's half-close.
        local_w.write_all(b"answer").await.expect("write");
        local_w.shutdown().await.expect("close");
        let mut back = Vec::new();
        peer_r.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"answer");
        assert_eq!(task.await.expect("relay"), CloseReason::Eof);
        assert_eq!(stats.rx(), big.len() as u64);
        assert_eq!(stats.tx(), 6);
    }

    #[tokio::test]
    async fn ends_on_close_signal_and_on_idle() {
        let (_a, b) = duplex(1024);
        let (c, _d) = duplex(1024);
        let (tx, mut rx) = oneshot::channel();
        let stats = Arc::new(ConnStats::default());
        let relay_task =
            tokio::spawn(
                async move { relay(b, c, stats, Duration::from_secs(3600), &mut rx).await },
            );
        tx.send(CloseReason::Revoked).expect("send");
        assert_eq!(relay_task.await.expect("relay"), CloseReason::Revoked);

        let (_a, b) = duplex(1024);
        let (c, _d) = duplex(1024);
        let (_tx, mut rx) = oneshot::channel();
        let stats = Arc::new(ConnStats::default());
        let reason = relay(b, c, stats, Duration::from_millis(50), &mut rx).await;
        assert_eq!(reason, CloseReason::Idle);
    }

    #[tokio::test]
    async fn a_trickle_keeps_the_connection_and_silence_closes_it_no_sooner_than_the_timeout() {
        let (mut peer_far, peer_near) = duplex(1024);
        let (local_near, mut local_far) = duplex(1024);
        let idle = Duration::from_secs(1);
        let stats = Arc::new(ConnStats::default());
        let (_tx, mut rx) = oneshot::channel();
        let task =
            tokio::spawn(async move { relay(peer_near, local_near, stats, idle, &mut rx).await });
        // A byte every fifth of the timeout, for three timeouts: never idle that long.
        let mut byte = [0u8; 1];
        let mut last_byte = Instant::now();
        for _ in 0..15 {
            tokio::time::sleep(idle / 5).await;
            last_byte = Instant::now();
            peer_far.write_all(b"x").await.expect("write");
            local_far.read_exact(&mut byte).await.expect("relayed");
            assert!(!task.is_finished(), "closed while bytes were moving");
        }
        let reason = tokio::time::timeout(idle * 10, task)
            .await
            .expect("silence never closed the connection")
            .expect("relay");
        assert_eq!(reason, CloseReason::Idle);
        assert!(
            last_byte.elapsed() >= idle,
            "closed before the idle timeout"
        );
    }

    #[test]
    fn buffers_start_empty_and_grow_only_when_a_read_fills_them() {
        let mut h = Half::new();
        assert!(h.buf.is_empty(), "no buffer before the first poll");
        h.buf = vec![0; INITIAL_BUF];
        h.filled = 100;
        h.grow_if_filled();
        assert_eq!(
            h.buf.len(),
            INITIAL_BUF,
            "a short read must not grow the buffer"
        );
        let mut sizes = Vec::new();
        for _ in 0..5 {
            h.filled = h.buf.len();
            h.grow_if_filled();
            sizes.push(h.buf.len());
        }
        assert_eq!(sizes, vec![8 * 1024, 32 * 1024, MAX_BUF, MAX_BUF, MAX_BUF]);
    }
}
