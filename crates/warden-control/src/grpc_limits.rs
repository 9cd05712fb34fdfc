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
//!   per SPIFFE ID are capped with `warden_identity::peer_share::PeerCounts`, and so are
//!   the request-message bytes the policy API holds for it ([`MessageShares`]).
//! - Log lines a caller can trigger ([`LogBudget`]): 20 a second per kind, with counts of
//!   what was left out and a summary line when a flood stops.
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

use crate::audit::{AuditEvent, Decision};

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

/// The callers' message shares, and how a connection's peer names its caller.
type SharesOf<T> = (Arc<MessageShares>, fn(&T) -> String);

/// The tower layer: counts calls per connection, applies the gate and the message limits.
#[derive(Clone)]
pub struct GuardLayer<T> {
    gate: Gate<T>,
    limits: MethodLimits,
    shares: Option<SharesOf<T>>,
}

impl<T> GuardLayer<T> {
    pub fn new(gate: Gate<T>, limits: MethodLimits) -> Self {
        Self {
            gate,
            limits,
            shares: None,
        }
    }

    /// Holds each caller (named by `key` from the connection's peer) to its share of
    /// request-message bytes in flight ([`MessageShares`]).
    pub fn with_message_shares(
        mut self,
        shares: Arc<MessageShares>,
        key: fn(&T) -> String,
    ) -> Self {
        self.shares = Some((shares, key));
        self
    }
}

impl<S, T> tower::Layer<S> for GuardLayer<T> {
    type Service = Guard<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            gate: self.gate.clone(),
            limits: self.limits.clone(),
            shares: self.shares.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S, T> {
    inner: S,
    gate: Gate<T>,
    limits: MethodLimits,
    shares: Option<SharesOf<T>>,
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
        let share = match (&conn, &self.shares) {
            (Some(conn), Some((shares, key))) => Some(Share {
                shares: shares.clone(),
                key: key(&conn.peer),
                held: 0,
            }),
            _ => None,
        };
        let call = conn.map(|c| c.activity.begin());
        let limit = self.limits.limit(&path);
        let req = req.map(|body| Body::new(MessageLimit::new(body, limit, path, share)));
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

/// Bytes of request messages each caller may have a server hold at once, over all its
/// calls. tonic reserves a message's whole announced length when its prefix arrives and
/// keeps that buffer for the rest of the call, so a call counts the largest message it has
/// announced, from its prefix until the call's request body is dropped. Without it one
/// caller could hold its streams' worth of method limits (1,024 watches x 256 KiB).
#[derive(Debug)]
pub struct MessageShares {
    max: usize,
    held: Mutex<HashMap<String, usize>>,
}

impl MessageShares {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// What `key` holds now.
    pub fn held(&self, key: &str) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }

    /// `by` more bytes for `key`, unless that would take it over `max`.
    fn grow(&self, key: &str, by: usize) -> bool {
        let mut held = self.lock();
        let now = held.get(key).copied().unwrap_or(0);
        if now.saturating_add(by) > self.max {
            return false;
        }
        held.insert(key.to_owned(), now + by);
        true
    }

    fn shrink(&self, key: &str, by: usize) {
        let mut held = self.lock();
        if let Some(n) = held.get_mut(key) {
            *n = n.saturating_sub(by);
            if *n == 0 {
                held.remove(key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Each critical section is one map update; a poisoned map is still consistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One call's part of its caller's [`MessageShares`], given back when dropped.
struct Share {
    shares: Arc<MessageShares>,
    key: String,
    /// The largest message this call has announced.
    held: usize,
}

impl Drop for Share {
    fn drop(&mut self) {
        self.shares.shrink(&self.key, self.held);
    }
}

/// Calls ended for their caller's share of message bytes: logged per call, a flood
/// summarized.
static SHARE_LOG: LogBudget = LogBudget::new(AuditEvent::Api.as_str(), 20);

/// A request body that fails with RESOURCE_EXHAUSTED as soon as a gRPC message's length
/// prefix announces more than `limit` bytes, or more than its caller's share of message
/// bytes in flight allows, before the message is buffered by tonic.
struct MessageLimit {
    inner: Body,
    limit: usize,
    method: String,
    share: Option<Share>,
    /// Bytes of the current 5-byte message prefix seen so far, and the prefix.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Payload bytes of the current message still to come.
    remaining: usize,
}

impl MessageLimit {
    fn new(inner: Body, limit: usize, method: String, share: Option<Share>) -> Self {
        Self {
            inner,
            limit,
            method,
            share,
            prefix: [0; 5],
            prefix_len: 0,
            remaining: 0,
        }
    }

    /// Counts a message of `len` bytes against the caller's share, if this call has not
    /// announced one as large before.
    fn take_share(&mut self, len: usize) -> Result<(), Status> {
        let Some(share) = &mut self.share else {
            return Ok(());
        };
        if len <= share.held {
            return Ok(());
        }
        if !share.shares.grow(&share.key, len - share.held) {
            let max = share.shares.max();
            if let Some(suppressed) = SHARE_LOG.admit() {
                tracing::warn!(target: "warden::audit", event = AuditEvent::Api.as_str(), method = %self.method, caller = %share.key, decision = Decision::Deny.as_str(), limit = "limits.max_message_bytes_per_peer", max, suppressed, "control-plane call ended: the caller's request messages in flight would exceed its share");
            }
            return Err(Status::resource_exhausted(format!(
                "{}: a request message of {len} bytes would take {} over its share of request messages in flight ({max} bytes)",
                self.method, share.key
            )));
        }
        share.held = len;
        Ok(())
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
                self.take_share(len)?;
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
/// line let through carries the count (`suppressed`), and a window that closes with lines
/// still uncounted writes one summary line (`event="log_summary"`) with the count, so a
/// flood that stops is still summarized.
#[derive(Debug)]
pub struct LogBudget {
    /// The `event` of the lines it bounds, named in the summary line.
    kind: &'static str,
    per_second: u32,
    window: Mutex<Option<Window>>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    used: u32,
    suppressed: u64,
    /// A summary is scheduled for the end of this window.
    flush_scheduled: bool,
}

const LOG_WINDOW: Duration = Duration::from_secs(1);

impl LogBudget {
    pub const fn new(kind: &'static str, per_second: u32) -> Self {
        Self {
            kind,
            per_second,
            window: Mutex::new(None),
        }
    }

    /// `Some(lines suppressed since the last one written)` when this line may be written,
    /// `None` when it is over budget (and counted). The first line suppressed in a window
    /// schedules the window's summary (when called within a Tokio runtime).
    pub fn admit(&'static self) -> Option<u64> {
        let (admitted, flush_at) = self.admit_at(Instant::now());
        if let Some(at) = flush_at
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                tokio::time::sleep_until((at + Duration::from_millis(1)).into()).await;
                self.flush();
            });
        }
        admitted
    }

    /// Writes the summary line of a closed window, if it has lines not yet counted.
    pub fn flush(&self) {
        if let Some(suppressed) = self.summary_at(Instant::now()) {
            tracing::warn!(target: "warden::audit", event = AuditEvent::LogSummary.as_str(), kind = self.kind, suppressed, per_second = self.per_second, "rate-bounded log lines suppressed");
        }
    }

    /// [`LogBudget::admit`] at `now`: whether the line may be written (with the count it
    /// carries), and when to write the window's summary if this line starts the need for
    /// one.
    fn admit_at(&self, now: Instant) -> (Option<u64>, Option<Instant>) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let w = window.get_or_insert(Window {
            start: now,
            used: 0,
            suppressed: 0,
            flush_scheduled: false,
        });
        if now.duration_since(w.start) >= LOG_WINDOW {
            w.start = now;
            w.used = 0;
            w.flush_scheduled = false;
        }
        if w.used >= self.per_second {
            w.suppressed += 1;
            let flush_at = (!w.flush_scheduled).then(|| {
                w.flush_scheduled = true;
                w.start + LOG_WINDOW
            });
            return (None, flush_at);
        }
        w.used += 1;
        (Some(std::mem::take(&mut w.suppressed)), None)
    }

    /// The count a summary at `now` carries: what is still uncounted once its window has
    /// closed (a line written since has carried it already).
    fn summary_at(&self, now: Instant) -> Option<u64> {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let w = window.as_mut()?;
        if now.duration_since(w.start) < LOG_WINDOW || w.suppressed == 0 {
            return None;
        }
        Some(std::mem::take(&mut w.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_limit_follows_the_framing_across_chunks() {
        let mut m = MessageLimit::new(Body::empty(), 10, "/m".into(), None);
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
    fn a_caller_holds_its_largest_message_per_call_within_its_share() {
        let shares = MessageShares::new(100);
        let call = |key: &str| {
            let share = Share {
                shares: shares.clone(),
                key: key.into(),
                held: 0,
            };
            MessageLimit::new(Body::empty(), 80, "/m".into(), Some(share))
        };
        let prefix = |len: u32| {
            let mut p = vec![0];
            p.extend(len.to_be_bytes());
            p
        };
        let mut a = call("a");
        // 60 announced, then sent: held 60. A smaller message later takes nothing more.
        assert!(a.check(&prefix(60)).is_ok());
        assert!(a.check(&[0; 60]).is_ok());
        assert!(a.check(&prefix(10)).is_ok());
        assert!(a.check(&[0; 10]).is_ok());
        assert_eq!(shares.held("a"), 60);
        // A second call of the same caller: 40 fits, 41 would not.
        let mut b = call("a");
        let err = b.check(&prefix(41)).expect_err("over the share");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        let mut b = call("a");
        assert!(b.check(&prefix(40)).is_ok());
        assert_eq!(shares.held("a"), 100);
        // Another caller has its own share.
        let mut c = call("c");
        assert!(c.check(&prefix(80)).is_ok());
        // Given back when the calls end.
        drop((a, b));
        assert_eq!(shares.held("a"), 0);
        assert_eq!(shares.held("c"), 80);
        drop(c);
        assert!(shares.lock().is_empty());
    }

    #[test]
    fn the_log_budget_counts_what_it_suppresses() {
        let budget = LogBudget::new("test", 3);
        let t0 = Instant::now();
        let admitted: Vec<_> = (0..10).map(|_| budget.admit_at(t0).0).collect();
        assert_eq!(admitted[..3], [Some(0), Some(0), Some(0)]);
        assert!(admitted[3..].iter().all(Option::is_none));
        // The next line let through, in the next window, carries the count.
        let next = t0 + LOG_WINDOW;
        assert_eq!(budget.admit_at(next).0, Some(7));
        assert_eq!(budget.admit_at(next).0, Some(0), "counted once");
        // Nothing is left for a summary.
        assert_eq!(budget.summary_at(next + LOG_WINDOW), None);
    }

    #[test]
    fn a_flood_that_stops_is_summarized_when_its_window_closes() {
        let budget = LogBudget::new("test", 2);
        let t0 = Instant::now();
        let mut flush_at = Vec::new();
        for _ in 0..25 {
            let (_, at) = budget.admit_at(t0);
            flush_at.extend(at);
        }
        // One summary scheduled, at the window's end.
        assert_eq!(flush_at, [t0 + LOG_WINDOW]);
        // Not before the window has closed...
        assert_eq!(budget.summary_at(t0 + Duration::from_millis(500)), None);
        // ...then once, with every line suppressed.
        assert_eq!(budget.summary_at(t0 + LOG_WINDOW), Some(23));
        assert_eq!(budget.summary_at(t0 + LOG_WINDOW), None);
        // A line after the summary carries nothing: no line is counted twice.
        assert_eq!(budget.admit_at(t0 + 2 * LOG_WINDOW).0, Some(0));
        // A new window's flood schedules its own summary.
        let t1 = t0 + 3 * LOG_WINDOW;
        let scheduled: Vec<_> = (0..5).filter_map(|_| budget.admit_at(t1).1).collect();
        assert_eq!(scheduled, [t1 + LOG_WINDOW]);
        assert_eq!(budget.summary_at(t1 + LOG_WINDOW), Some(3));
    }
}
