//! Read-ahead under TLS. rustls asks its transport for at most 4 KiB per read, so a 16 KiB
//! record costs four `read` syscalls. [`ReadAhead`] answers those small reads from one larger
//! read of the socket, which cuts the syscalls of a bulk stream by about four.
//!
//! The buffer exists only while data is flowing: it comes from a per-thread pool when a
//! small read arrives and goes back once it is drained and the socket has nothing more, so
//! an idle connection holds none. Large reads bypass it. Writes pass straight through.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::pool::{Pool, Slots};

/// One read of the socket: two full TLS records.
const AHEAD: usize = 34 * 1024;
thread_local! {
    static SLOTS: Slots = const { RefCell::new(Vec::new()) };
}

/// Read-ahead buffers, 32 parked per worker thread.
const POOL: Pool = Pool {
    slots: &SLOTS,
    size: AHEAD,
    max: 32,
};

/// A transport that reads ahead for small reads.
pub struct ReadAhead<S> {
    inner: S,
    buf: Vec<u8>,
    pos: usize,
    filled: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
            filled: 0,
        }
    }

    fn release(&mut self) {
        if !self.buf.is_empty() {
            POOL.give(std::mem::take(&mut self.buf));
        }
        self.pos = 0;
        self.filled = 0;
    }
}

impl<S> Drop for ReadAhead<S> {
    fn drop(&mut self) {
        self.release();
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.filled {
            // Nothing buffered. A caller that can take a lot reads directly.
            if out.remaining() >= AHEAD {
                this.release();
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = POOL.take();
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    this.pos = 0;
                    this.filled = rb.filled().len();
                    if this.filled == 0 {
                        this.release();
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(e)) => {
                    this.release();
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    this.release();
                    return Poll::Pending;
                }
            }
        }
        let n = out.remaining().min(this.filled - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_and_bytes_are_exact() {
        let (mut w, r) = duplex(1 << 20);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        w.write_all(&data).await.expect("write");
        drop(w);
        let mut ra = ReadAhead::new(r);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = ra.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == data, "bytes differ");
        assert!(ra.buf.is_empty(), "buffer kept after EOF");
    }

    #[tokio::test]
    async fn an_idle_stream_holds_no_buffer() {
        let (mut w, r) = duplex(1024);
        let mut ra = ReadAhead::new(r);
        w.write_all(b"hello").await.expect("write");
        let mut chunk = [0u8; 16];
        assert_eq!(ra.read(&mut chunk).await.expect("read"), 5);
        // Drained; the next read finds nothing and must give the buffer back.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut rb = ReadBuf::new(&mut chunk);
        assert!(Pin::new(&mut ra).poll_read(&mut cx, &mut rb).is_pending());
        assert!(
            ra.buf.is_empty(),
            "idle stream still holds its read-ahead buffer"
        );
        w.write_all(b"again").await.expect("write");
        assert_eq!(ra.read(&mut chunk).await.expect("read"), 5);
        assert_eq!(&chunk[..5], b"again");
    }
}
