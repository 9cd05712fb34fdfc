//! Read-ahead under TLS. rustls asks its transport for at most 4 KiB per read, so a 16 KiB
//! record costs four `read` syscalls. [`ReadAhead`] answers those small reads from one larger
//! read of the socket, which cuts the syscalls of a bulk stream by about four.
//!
//! Reading ahead pays off only while the socket holds more than the caller asks for. A chatty
//! connection (a request, an answer) has less than 4 KiB waiting, so there the extra buffer
//! would cost a copy of every byte and buy nothing. [`ReadAhead`] therefore decides per read,
//! from the read before: a direct read that filled the caller's buffer means more is waiting,
//! so the next one reads ahead; a read ahead that brought no more than the caller asked for
//! means the stream is chatty again, so the next one reads straight into the caller's buffer.
//!
//! The buffer exists only while data is flowing: it comes from a per-thread pool when a
//! read ahead is needed and goes back once it is drained and the socket has nothing more, so
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
    /// The last read showed more waiting than the caller asked for: read ahead next time.
    streaming: bool,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
            filled: 0,
            streaming: false,
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
            let wanted = out.remaining();
            if wanted >= AHEAD {
                this.release();
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if !this.streaming {
                // Chatty so far: read straight into the caller's buffer, no copy. Filling it
                // means more may be waiting.
                this.release();
                let before = out.filled().len();
                let res = Pin::new(&mut this.inner).poll_read(cx, out);
                this.streaming = wanted > 0 && out.filled().len() - before == wanted;
                return res;
            }
            if this.buf.is_empty() {
                this.buf = POOL.take();
            }
            let mut rb = ReadBuf::new(&mut this.buf);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    this.pos = 0;
                    this.filled = rb.filled().len();
                    // No more than the caller wanted: a direct read would have done.
                    this.streaming = this.filled > wanted;
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

    /// Counts the reads that reach the transport.
    struct Counted<S> {
        inner: S,
        reads: usize,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    #[tokio::test]
    async fn a_chatty_stream_is_read_straight_into_the_callers_buffer() {
        let (mut w, r) = duplex(1 << 20);
        let mut ra = ReadAhead::new(Counted { inner: r, reads: 0 });
        let mut chunk = [0u8; 4096];
        for i in 0..10u8 {
            let msg = [i; 1024];
            w.write_all(&msg).await.expect("write");
            assert_eq!(ra.read(&mut chunk).await.expect("read"), 1024);
            assert!(chunk[..1024] == msg, "bytes differ");
            assert!(ra.buf.is_empty(), "a 1 KiB message went through the buffer");
        }
        assert_eq!(ra.inner.reads, 10, "one transport read per message");
    }

    #[tokio::test]
    async fn a_read_that_fills_the_callers_buffer_switches_to_read_ahead_and_back() {
        let (mut w, r) = duplex(1 << 20);
        let mut ra = ReadAhead::new(Counted { inner: r, reads: 0 });
        let mut chunk = [0u8; 4096];
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).await.expect("write");
        let mut got = Vec::new();
        while got.len() < data.len() {
            let n = ra.read(&mut chunk).await.expect("read");
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == data, "bytes differ");
        // One direct read filled the 4 KiB, one read ahead took the other 15,904 bytes.
        assert_eq!(ra.inner.reads, 2, "20,000 bytes in 4 KiB reads");
        // A short message after the burst: the read ahead brings no more than was asked
        // for, so the one after it is direct again.
        for _ in 0..2 {
            w.write_all(b"short").await.expect("write");
            assert_eq!(ra.read(&mut chunk).await.expect("read"), 5);
        }
        assert!(ra.buf.is_empty(), "a chatty stream kept its buffer");
        assert!(!ra.streaming, "still reading ahead for 5-byte messages");
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
