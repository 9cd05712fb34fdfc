//! A raw HTTP/2 client, frame by frame, for tests that must send what no well-behaved client
//! library would: a socket path as `:authority`, DATA that contradicts `content-length`,
//! message prefixes that announce more than is sent. Header blocks are written as HPACK
//! literals (no Huffman); the server's are decoded with a real HPACK decoder.
//!
//! Included with `#[path = "support/h2raw.rs"] mod h2raw;`.
#![allow(dead_code)]

use std::borrow::Cow;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

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
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.write_all(bytes).await
    }

    /// The next frame that is not connection housekeeping: SETTINGS are acknowledged and
    /// PINGs answered here. `None` once the server has closed the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
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
                    let _ = self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                PING if f.flags & ACK == 0 => {
                    let _ = self.send(&frame(PING, ACK, 0, &f.payload)).await;
                }
                SETTINGS | PING | WINDOW_UPDATE => {}
                HEADERS => {
                    // Decoded in order, so the server's dynamic table stays in step.
                    return Some(f);
                }
                _ => return Some(f),
            }
        }
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
