//! Moves bytes both ways between the TLS side and the plaintext side.
//!
//! Half-close is propagated: when one side sends EOF (FIN, or TLS close_notify) the other
//! side's write half is shut down and the opposite direction keeps flowing until it ends too.
//! The relay also ends on an idle timeout and on a close signal from the registry.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::registry::{CloseReason, ConnStats};

/// Per-direction copy buffer. 16 KiB matches one TLS record, so a full read encrypts into
/// one record; two of them per connection keep an idle connection's cost small.
const BUF_SIZE: usize = 16 * 1024;

/// Counts bytes read through it and notes when anything last moved.
struct Metered<'a, S> {
    inner: S,
    read_counter: &'a AtomicU64,
    write_counter: &'a AtomicU64,
    last_activity: &'a AtomicU64,
    epoch: Instant,
}

impl<S> Metered<'_, S> {
    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_activity.store(ms, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.read_counter.fetch_add(n as u64, Ordering::Relaxed);
            self.touch();
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = res
            && n > 0
        {
            self.write_counter.fetch_add(n as u64, Ordering::Relaxed);
            self.touch();
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
    let last_activity = AtomicU64::new(0);
    let epoch = Instant::now();
    let unused = AtomicU64::new(0);
    let mut peer = Metered {
        inner: peer_side,
        read_counter: &stats.rx,
        write_counter: &stats.tx,
        last_activity: &last_activity,
        epoch,
    };
    let mut local = Metered {
        inner: local_side,
        read_counter: &unused,
        write_counter: &unused,
        last_activity: &last_activity,
        epoch,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut peer, &mut local, BUF_SIZE, BUF_SIZE);
    tokio::pin!(copy);
    // The idle check wakes at most once per `idle / 4`, not per byte.
    let tick = (idle / 4).max(Duration::from_millis(10));
    let mut deadline = epoch + idle;
    loop {
        tokio::select! {
            res = &mut copy => return match res {
                Ok(_) => CloseReason::Eof,
                Err(_) => CloseReason::Error,
            },
            reason = &mut *closed => return reason.unwrap_or(CloseReason::Drain),
            () = tokio::time::sleep_until(deadline.min(Instant::now() + tick)) => {
                let last = epoch + Duration::from_millis(last_activity.load(Ordering::Relaxed));
                deadline = last + idle;
                if Instant::now() >= deadline {
                    return CloseReason::Idle;
                }
            }
        }
    }
}
