//! Limits every gRPC server of the control plane applies: the policy API (reachable by any
//! workload holding a valid SVID) and the Workload API (reachable by any local process that
//! can open its socket). Zero trust assumes any of those may be compromised, so none of them
//! may starve the server or the other callers.
//!
//! - HTTP/2 ([`server_builder`]): the local-reset guard against client-provoked resets
//!   ("MadeYouReset", CVE-2025-8671; tonic passes no value and so switches h2's guard off),
//!   a cap on concurrent streams per connection, a header list limit, and keep-alive pings.
//! - Per request ([`GuardLayer`]): a method may be refused before its body is read (the
//!   policy API's admin-only methods, for a caller that is not an admin), and each gRPC
//!   message is held to its method's size limit as its length prefix arrives, so nothing
//!   larger than the limit is ever buffered. Oversized messages end the call with
//!   RESOURCE_EXHAUSTED.
//! - Per connection ([`IdleClose`]): a connection with no call in flight for `idle_timeout`
//!   is closed. A sidecar's watch stream is a call in flight, so watching never idles.
//! - Per caller: connections (`transport.rs`) and calls in flight (the policy API's gate)
//!   per SPIFFE ID are capped with `warden_identity::peer_share::PeerCounts`.
//!
//! It must never refuse a call that the handler would authorize (the gate is a pure
//! function of the method and the caller's certificate identity), and never let a refused
//! or oversized request reach a handler.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::Connected;

/// Locally reset streams a connection may cause before it is sent GOAWAY (h2's default,
/// which tonic leaves unset and thereby disables).
const MAX_LOCAL_RESETS: usize = 1024;
/// Concurrent streams per connection. A sidecar needs one (its watch), a CLI call one; a
/// client multiplexing many watchers on one connection gets up to this many.
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Header list size per request (hyper's default is 16 KiB too; said here so it is ours).
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// An HTTP/2 server with the limits above and keep-alive pings (a dead peer is noticed).
pub fn server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .http2_max_local_error_reset_streams(Some(MAX_LOCAL_RESETS))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .http2_keepalive_interval(Some(Duration::from_secs(15)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

// ---------------------------------------------------------------------------------------
// Per connection: calls in flight and idle close.

/// Calls in flight on one connection, and when the last one ended.
#[derive(Debug)]
pub struct ConnActivity {
    calls: AtomicUsize,
    /// Milliseconds since `epoch` at which the connection last had no call, or started.
    idle_since_ms: AtomicU64,
    epoch: Instant,
}

impl ConnActivity {
    fn new() -> Self {
        Self {
            calls: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn begin(self: &Arc<Self>) -> CallGuard {
        self.calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    /// When the connection has been without a call long enough to be closed, if it has.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        (self.calls.load(Ordering::Acquire) == 0).then(|| {
            self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire)) + idle
        })
    }
}

/// One call in flight; dropped when its response has been sent (or abandoned).
pub struct CallGuard(Arc<ConnActivity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let now = self.0.epoch.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What tonic hands each request of a connection (as a request extension): the
/// transport's own connect info, and the connection's activity.
#[derive(Debug, Clone)]
pub struct ConnInfo<T> {
    pub peer: T,
    activity: Arc<ConnActivity>,
}

/// A server connection that ends (reads EOF) once it has had no call in flight for
/// `idle`. The check runs when the connection is read and on a timer, so an idle
/// connection is closed within about `idle` even if its peer stays silent.
pub struct IdleClose<IO> {
    inner: IO,
    activity: Arc<ConnActivity>,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl<IO> IdleClose<IO> {
    pub fn new(inner: IO, idle: Duration) -> Self {
        Self {
            inner,
            activity: Arc::new(ConnActivity::new()),
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl<IO: Connected> Connected for IdleClose<IO> {
    type ConnectInfo = ConnInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            peer: self.inner.connect_info(),
            activity: self.activity.clone(),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for IdleClose<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if read.is_ready() {
            return read;
        }
        // Re-arm until the timer fires with no call in flight; while calls are in flight it
        // re-checks once per `idle`.
        loop {
            let now = Instant::now();
            match this.activity.idle_deadline(this.idle) {
                Some(deadline) if deadline <= now => {
                    tracing::debug!("closing a gRPC connection with no call in flight");
                    return Poll::Ready(Ok(())); // EOF: hyper ends the connection
                }
                Some(deadline) => this.timer.as_mut().reset(deadline.into()),
                None => this.timer.as_mut().reset((now + this.idle).into()),
            }
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

delegate_async_write!(IdleClose<IO>, inner);

// ---------------------------------------------------------------------------------------
// Per request: the method gate and message limits.

/// Decides, from the method path and the connection's peer, whether a call may proceed
/// before its body is read. It may hand back a permit (a share of a per-caller cap), held
/// until the call's response has been sent.
pub type Gate<T> = Arc<dyn Fn(&str, &T) -> Result<Option<Permit>, Status> + Send + Sync>;

/// Whatever a [`Gate`] holds for the life of a call.
pub type Permit = Box<dyn Send + Sync>;

/// Per-method limits of one gRPC server.
#[derive(Clone)]
pub struct MethodLimits {
    /// Largest request message per method path (`/pkg.Service/Method`).
    per_method: Arc<HashMap<&'static str, usize>>,
    /// For any other path (health, reflection).
    default: usize,
}

impl MethodLimits {
    pub fn new(default: usize, per_method: &[(&'static str, usize)]) -> Self {
        Self {
            per_method: Arc::new(per_method.iter().copied().collect()),
            default,
        }
    }

    fn limit(&self, path: &str) -> usize {
        self.per_method.get(path).copied().unwrap_or(self.default)
    }
}

/// The tower layer: counts calls per connection, applies the gate and the message limits.
#[derive(Clone)]
pub struct GuardLayer<T> {
    gate: Gate<T>,
    limits: MethodLimits,
}

impl<T> GuardLayer<T> {
    pub fn new(gate: Gate<T>, limits: MethodLimits) -> Self {
        Self { gate, limits }
    }
}

impl<S, T> tower::Layer<S> for GuardLayer<T> {
    type Service = Guard<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            gate: self.gate.clone(),
            limits: self.limits.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S, T> {
    inner: S,
    gate: Gate<T>,
    limits: MethodLimits,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, T> tower::Service<http::Request<Body>> for Guard<S, T>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let conn = req.extensions().get::<ConnInfo<T>>().cloned();
        let path = req.uri().path().to_owned();
        let permit = match &conn {
            Some(conn) => match (self.gate)(&path, &conn.peer) {
                Ok(permit) => permit,
                Err(status) => {
                    // The request body is dropped unread: nothing the caller sent is buffered.
                    return Box::pin(std::future::ready(Ok(status.into_http())));
                }
            },
            None => None,
        };
        let call = conn.map(|c| c.activity.begin());
        let limit = self.limits.limit(&path);
        let req = req.map(|body| Body::new(MessageLimit::new(body, limit, path)));
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(Tracked {
                    inner: body,
                    _call: call,
                    _permit: permit,
                })
            }))
        })
    }
}

/// A response body that keeps its call counted, and its permit held, until it has been
/// sent or dropped.
struct Tracked {
    inner: Body,
    _call: Option<CallGuard>,
    _permit: Option<Permit>,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails with RESOURCE_EXHAUSTED as soon as a gRPC message's length
/// prefix announces more than `limit` bytes, before the message is buffered by tonic.
struct MessageLimit {
    inner: Body,
    limit: usize,
    method: String,
    /// Bytes of the current 5-byte message prefix seen so far, and the prefix.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Payload bytes of the current message still to come.
    remaining: usize,
}

impl MessageLimit {
    fn new(inner: Body, limit: usize, method: String) -> Self {
        Self {
            inner,
            limit,
            method,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
        }
    }

    /// Walks the message framing of `chunk`; the first message over the limit is an error.
    fn check(&mut self, mut chunk: &[u8]) -> Result<(), Status> {
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(chunk.len());
                self.remaining -= n;
                chunk.advance(n);
                continue;
            }
            let n = (5 - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&chunk[..n]);
            self.prefix_len += n;
            chunk.advance(n);
            if self.prefix_len == 5 {
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                if len > self.limit {
                    return Err(Status::resource_exhausted(format!(
                        "{}: a request message of {len} bytes is over this method's limit of {} bytes",
                        self.method, self.limit
                    )));
                }
                self.remaining = len;
                self.prefix_len = 0;
            }
        }
        Ok(())
    }
}

impl http_body::Body for MessageLimit {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(status) = self.check(data)
        {
            return Poll::Ready(Some(Err(status)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// ---------------------------------------------------------------------------------------
// Log lines a caller can cause, bounded.

/// A budget of log lines per second for one kind of event a caller can trigger at will
/// (a watch opened, a call refused). Over budget the line is skipped and counted; the next
/// line let through carries the count (`suppressed`), so the log still says how many.
#[derive(Debug)]
pub struct LogBudget {
    per_second: u32,
    window: Mutex<Option<Window>>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    pub const fn new(per_second: u32) -> Self {
        Self {
            per_second,
            window: Mutex::new(None),
        }
    }

    /// `Some(lines suppressed since the last one written)` when this line may be written,
    /// `None` when it is over budget (and counted).
    pub fn admit(&self) -> Option<u64> {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let w = window.get_or_insert(Window {
            start: now,
            used: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= Duration::from_secs(1) {
            w.start = now;
            w.used = 0;
        }
        if w.used >= self.per_second {
            w.suppressed += 1;
            return None;
        }
        w.used += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_limit_follows_the_framing_across_chunks() {
        let mut m = MessageLimit::new(Body::empty(), 10, "/m".into());
        // A 3-byte message, then a 10-byte one split across chunks: all within the limit.
        assert!(m.check(&[0, 0, 0, 0, 3, 1, 2]).is_ok());
        assert!(m.check(&[3, 0, 0, 0]).is_ok());
        assert!(m.check(&[0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_ok());
        // An 11-byte announcement is refused from its prefix alone.
        let err = m.check(&[0, 0, 0]).and_then(|()| m.check(&[0, 11]));
        assert_eq!(
            err.expect_err("over").code(),
            tonic::Code::ResourceExhausted
        );
    }

    #[test]
    fn the_log_budget_counts_what_it_suppresses() {
        let budget = LogBudget::new(3);
        let admitted: Vec<_> = (0..10).map(|_| budget.admit()).collect();
        assert_eq!(admitted[..3], [Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
    }
}
