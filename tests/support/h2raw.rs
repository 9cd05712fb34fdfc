//! A raw HTTP/2 client, frame by frame, for tests that must send what no well-behaved client
//! library would: a socket path as `:authority`, DATA that contradicts `content-length`,
//! message prefixes that announce more than is sent. Header blocks are written as HPACK
//! literals (no Huffman); the server's are decoded with a real HPACK decoder.
//!
//! Included with `#[path = "support/h2raw.rs"] mod h2raw;`.
#![allow(dead_code)]

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
/// RST_STREAM error code: the stream was refused before any processing (RFC 9113 7).
pub const REFUSED_STREAM: u32 = 0x7;
/// SETTINGS parameters (RFC 9113 6.5.2).
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
const DEFAULT_WINDOW: i64 = 65_535;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal without Huffman coding (RFC 7541 5.2).
fn string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// A literal header field with a new name: `prefix` 0x00 = without indexing, 0x40 = with
/// incremental indexing (it enters the server's copy of our dynamic table).
pub fn field(prefix: u8, name: &str, value: &[u8]) -> Vec<u8> {
    let mut out = vec![prefix];
    string(&mut out, name.as_bytes());
    string(&mut out, value);
    out
}

/// The request headers of a gRPC call to `path`, with `authority` already encoded and
/// `extra` fields appended.
pub fn grpc_request(path: &str, authority: Vec<u8>, extra: &[(&str, &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    block.extend(field(0, ":method", b"POST"));
    block.extend(field(0, ":scheme", b"http"));
    block.extend(field(0, ":path", path.as_bytes()));
    block.extend(authority);
    block.extend(field(0, "content-type", b"application/grpc"));
    block.extend(field(0, "te", b"trailers"));
    for (name, value) in extra {
        block.extend(field(0, name, value));
    }
    block
}

/// A gRPC message prefix announcing `len` bytes (uncompressed).
pub fn message_prefix(len: u32) -> Vec<u8> {
    let mut p = vec![0u8];
    p.extend_from_slice(&len.to_be_bytes());
    p
}

pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// One client connection over any byte stream (TLS or a Unix socket).
pub struct RawH2<S> {
    pub io: S,
    decoder: loona_hpack::Decoder<'static>,
    /// The server's flow control, as far as this client sends DATA: the connection's
    /// window, each stream's window, and the server's settings.
    conn_window: i64,
    stream_windows: HashMap<u32, i64>,
    initial_window: i64,
    max_frame: usize,
    /// The server's SETTINGS frame has been read (and acknowledged).
    pub settings_seen: bool,
}

/// What the server did with the streams of [`RawH2::send_bodies`].
#[derive(Debug, Default)]
pub struct Sent {
    /// Body bytes written per stream.
    pub bytes: HashMap<u32, usize>,
    /// `grpc-status` per stream, from a HEADERS frame that carried one.
    pub status: HashMap<u32, String>,
    /// `:status` per stream, from the response HEADERS.
    pub http_status: HashMap<u32, String>,
    /// RST_STREAM error code per stream.
    pub reset: HashMap<u32, u32>,
    /// Streams the server has ended (HEADERS with END_STREAM, or RST_STREAM).
    pub ended: HashSet<u32>,
    /// Streams on which the server sent DATA (a response message).
    pub data: HashSet<u32>,
    /// The error code of a GOAWAY, if one came.
    pub goaway: Option<u32>,
    /// The server closed the connection.
    pub closed: bool,
    /// PING acknowledgements read: the server had read every frame sent before the PING.
    pub ping_acks: u32,
}

impl Sent {
    /// Records one frame from the server (its HEADERS already decoded into `fields`).
    fn record(&mut self, f: &Frame, fields: Option<Vec<(String, String)>>) {
        match f.kind {
            HEADERS => {
                let fields = fields.unwrap_or_default();
                if let Some(s) = header(&fields, "grpc-status") {
                    self.status.insert(f.stream, s.to_owned());
                }
                if let Some(s) = header(&fields, ":status") {
                    self.http_status.insert(f.stream, s.to_owned());
                }
                if f.flags & END_STREAM != 0 {
                    self.ended.insert(f.stream);
                }
            }
            DATA => {
                if !f.payload.is_empty() {
                    self.data.insert(f.stream);
                }
                if f.flags & END_STREAM != 0 {
                    self.ended.insert(f.stream);
                }
            }
            RST_STREAM if f.payload.len() >= 4 => {
                let code =
                    u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]);
                self.reset.insert(f.stream, code);
                self.ended.insert(f.stream);
            }
            PING if f.flags & ACK != 0 => self.ping_acks += 1,
            GOAWAY if f.payload.len() >= 8 => {
                self.goaway = Some(u32::from_be_bytes([
                    f.payload[4],
                    f.payload[5],
                    f.payload[6],
                    f.payload[7],
                ]));
            }
            _ => {}
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawH2<S> {
    /// Sends the connection preface and an empty SETTINGS frame.
    pub async fn start(mut io: S) -> std::io::Result<Self> {
        let mut out = PREFACE.to_vec();
        out.extend(frame(SETTINGS, 0, 0, &[]));
        io.write_all(&out).await?;
        Ok(Self {
            io,
            decoder: loona_hpack::Decoder::new(),
            conn_window: DEFAULT_WINDOW,
            stream_windows: HashMap::new(),
            initial_window: DEFAULT_WINDOW,
            max_frame: 16_384,
            settings_seen: false,
        })
    }

    /// Reads until the server's SETTINGS frame has arrived (and been acknowledged), so
    /// its limits apply to what is sent next; `false` if it did not within `within`.
    pub async fn settle(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.settings_seen {
            match tokio::time::timeout_at(deadline, self.next_any()).await {
                Ok(Some(f)) if f.kind == HEADERS => {
                    let _ = self.decode(&f);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// The next frame that is not connection housekeeping: SETTINGS are acknowledged and
    /// PINGs answered here. `None` once the server has closed the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            let f = self.next_any().await?;
            match f.kind {
                SETTINGS | PING | WINDOW_UPDATE => {}
                _ => return Some(f),
            }
        }
    }

    /// The next frame of any kind. SETTINGS are acknowledged, PINGs answered, DATA
    /// credited back (WINDOW_UPDATE), and the server's windows and settings tracked.
    pub async fn next_any(&mut self) -> Option<Frame> {
        {
            let mut head = [0u8; 9];
            self.io.read_exact(&mut head).await.ok()?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            self.io.read_exact(&mut payload).await.ok()?;
            let f = Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            };
            // A failed answer (the server has closed its side) is ignored: what it sent
            // before closing is still to be read.
            match f.kind {
                SETTINGS if f.flags & ACK == 0 => {
                    for p in f.payload.chunks_exact(6) {
                        let id = u16::from_be_bytes([p[0], p[1]]);
                        let value = u32::from_be_bytes([p[2], p[3], p[4], p[5]]);
                        match id {
                            SETTINGS_INITIAL_WINDOW_SIZE => {
                                let delta = i64::from(value) - self.initial_window;
                                self.initial_window = i64::from(value);
                                for w in self.stream_windows.values_mut() {
                                    *w += delta;
                                }
                            }
                            SETTINGS_MAX_FRAME_SIZE => self.max_frame = value as usize,
                            _ => {}
                        }
                    }
                    self.settings_seen = true;
                    let _ = self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                PING if f.flags & ACK == 0 => {
                    let _ = self.send(&frame(PING, ACK, 0, &f.payload)).await;
                }
                WINDOW_UPDATE if f.payload.len() >= 4 => {
                    let inc = i64::from(
                        u32::from_be_bytes([
                            f.payload[0],
                            f.payload[1],
                            f.payload[2],
                            f.payload[3],
                        ]) & 0x7fff_ffff,
                    );
                    if f.stream == 0 {
                        self.conn_window += inc;
                    } else {
                        *self.window(f.stream) += inc;
                    }
                }
                DATA if !f.payload.is_empty() => {
                    let inc = (f.payload.len() as u32).to_be_bytes();
                    let mut out = frame(WINDOW_UPDATE, 0, 0, &inc);
                    out.extend(frame(WINDOW_UPDATE, 0, f.stream, &inc));
                    let _ = self.send(&out).await;
                }
                _ => {}
            }
            Some(f)
        }
    }

    fn window(&mut self, stream: u32) -> &mut i64 {
        let initial = self.initial_window;
        self.stream_windows.entry(stream).or_insert(initial)
    }

    /// Sends each stream's body (its HEADERS already sent) as DATA frames within the
    /// server's flow-control windows, as much as the server will take, reading its frames
    /// meanwhile. A stream is no longer sent once the server has ended it. `end_stream`:
    /// the last frame of each body ends its stream. Returns once every body is sent or its
    /// stream ended and `done` holds, or the server closes, or `within` passes.
    pub async fn send_bodies(
        &mut self,
        bodies: &[(u32, &[u8])],
        end_stream: bool,
        within: Duration,
        done: impl Fn(&Sent) -> bool,
    ) -> Sent {
        let deadline = tokio::time::Instant::now() + within;
        let mut sent = Sent::default();
        let mut offsets = vec![0usize; bodies.len()];
        loop {
            let mut out = Vec::new();
            for ((stream, body), offset) in bodies.iter().zip(offsets.iter_mut()) {
                while *offset < body.len() && !sent.ended.contains(stream) && out.len() < 1 << 20 {
                    let window = self.conn_window.min(*self.window(*stream));
                    if window <= 0 {
                        break;
                    }
                    let n = (window as usize)
                        .min(self.max_frame)
                        .min(body.len() - *offset);
                    let last = *offset + n == body.len();
                    let flags = if last && end_stream { END_STREAM } else { 0 };
                    out.extend(frame(DATA, flags, *stream, &body[*offset..*offset + n]));
                    self.conn_window -= n as i64;
                    *self.window(*stream) -= n as i64;
                    *offset += n;
                    *sent.bytes.entry(*stream).or_default() += n;
                }
            }
            if !out.is_empty() {
                match tokio::time::timeout_at(deadline, self.send(&out)).await {
                    Ok(Ok(())) => continue,
                    _ => {
                        sent.closed = true;
                        return sent;
                    }
                }
            }
            let finished = bodies.iter().zip(&offsets).all(|((stream, body), offset)| {
                *offset == body.len() || sent.ended.contains(stream)
            });
            if finished && done(&sent) {
                return sent;
            }
            match tokio::time::timeout_at(deadline, self.next_any()).await {
                Ok(Some(f)) => {
                    let fields = (f.kind == HEADERS).then(|| self.decode(&f));
                    sent.record(&f, fields);
                }
                Ok(None) => {
                    sent.closed = true;
                    return sent;
                }
                Err(_) => return sent,
            }
        }
    }

    /// Sends a PING and reads into `sent` until it is acknowledged: the server has read
    /// every frame sent before it. `false` if it was not within `within`.
    pub async fn ping(&mut self, sent: &mut Sent, within: Duration) -> bool {
        let before = sent.ping_acks;
        if self.send(&frame(PING, 0, 0, &[7; 8])).await.is_err() {
            return false;
        }
        self.read_into(sent, within, |s| s.ping_acks > before).await
    }

    /// Reads frames into `sent` until `done` holds, the server closes, or `within` passes;
    /// returns whether `done` was reached.
    pub async fn read_into(
        &mut self,
        sent: &mut Sent,
        within: Duration,
        done: impl Fn(&Sent) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !done(sent) {
            match tokio::time::timeout_at(deadline, self.next_any()).await {
                Ok(Some(f)) => {
                    let fields = (f.kind == HEADERS).then(|| self.decode(&f));
                    sent.record(&f, fields);
                }
                Ok(None) => {
                    sent.closed = true;
                    return done(sent);
                }
                Err(_) => return false,
            }
        }
        true
    }

    /// The fields of a HEADERS frame's block (no padding, priority or CONTINUATION: the
    /// servers under test send none to a client that asked for nothing).
    pub fn decode(&mut self, f: &Frame) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        let _ = self
            .decoder
            .decode_with_cb(&f.payload, |n: Cow<[u8]>, v: Cow<[u8]>| {
                fields.push((
                    String::from_utf8_lossy(&n).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            });
        fields
    }

    /// Reads until `done` says so, the server closes, or `within` passes; returns whether
    /// `done` was reached.
    pub async fn read_until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&mut Self, Frame) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let Ok(Some(f)) = tokio::time::timeout_at(deadline, self.next()).await else {
                return false;
            };
            if done(self, f) {
                return true;
            }
        }
    }
}

/// The value of `name` among decoded fields.
pub fn header<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}
