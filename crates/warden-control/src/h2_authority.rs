//! Makes the Workload API answer gRPC clients that put the socket path in `:authority`.
//!
//! Over a Unix socket, gRPC C-core (Python, C++, Ruby, PHP clients) sends the percent-encoded
//! socket path as the HTTP/2 `:authority` (`%2Frun%2Fspire%2Fagent.sock`) and grpc-java the
//! raw path. Neither is a URI authority, and the h2 server under tonic answers such a request
//! with RST_STREAM PROTOCOL_ERROR before tonic sees it (h2 `server::Peer::convert_poll_message`;
//! no builder option relaxes it; hyperium/h2#487 is open, and h2's maintainers ask clients to
//! send `localhost` instead, as grpc-go now does). SPIRE's agent, on grpc-go, accepts them, so
//! Python and Java workloads expect Warden's built-in CA to as well.
//!
//! On a Unix socket the authority carries nothing the server uses. So, rather than fork h2,
//! the read side of each Workload API connection passes through [`AuthorityFix`]: every
//! client header block is decoded (HPACK, mirroring the client's dynamic table), an
//! `:authority` that is not a valid authority becomes `localhost`, and the block is re-encoded
//! as literals without indexing. h2's own decoder table therefore stays empty and can never
//! disagree with the client's. Every other frame passes through as it came (its payload is
//! not buffered), and the write side is untouched.
//!
//! It must never buffer without bound (a header block is at most [`MAX_BLOCK`] bytes encoded
//! and [`MAX_DECODED`] decoded, so an HPACK bomb ends the connection), and never change
//! anything but an invalid `:authority` (header names, values and order are kept).

use std::borrow::Cow;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

/// The client connection preface (RFC 9113 3.4).
const PREFACE_LEN: usize = 24;
const FRAME_HEAD: usize = 9;
/// SETTINGS_MAX_FRAME_SIZE of the server (h2's default, which tonic keeps): no client frame
/// is larger, and no re-encoded one may be.
const MAX_FRAME: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE of the server (h2's default): the most the client's encoder
/// table may hold.
const TABLE_SIZE: usize = 4_096;
/// An encoded header block (HEADERS plus CONTINUATIONs) larger than this ends the connection.
const MAX_BLOCK: usize = 64 * 1024;
/// Decoded header list size (RFC 7541 4.1: name + value + 32 per field) beyond which the
/// connection ends; h2 would refuse such a list anyway (its default is 16 KiB).
const MAX_DECODED: usize = 64 * 1024;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// A header block being collected (HEADERS, then CONTINUATIONs up to END_HEADERS).
struct Block {
    stream: u32,
    /// END_STREAM and PRIORITY as the client sent them.
    flags: u8,
    priority: Option<[u8; 5]>,
    encoded: Vec<u8>,
}

/// A stream whose client header blocks are rewritten as described in the module docs.
pub struct AuthorityFix<S> {
    inner: S,
    /// Read from the client, not yet processed.
    raw: BytesMut,
    /// Processed, for h2 to read.
    out: BytesMut,
    /// Bytes of the preface, or of a non-header frame's payload, still to pass through.
    passthrough: usize,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            inner,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            passthrough: PREFACE_LEN,
            block: None,
            decoder,
            eof: false,
        }
    }

    /// Moves everything complete in `raw` to `out`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            if self.passthrough > 0 {
                let n = self.passthrough.min(self.raw.len());
                if n == 0 {
                    return Ok(());
                }
                self.out.extend_from_slice(&self.raw.split_to(n));
                self.passthrough -= n;
                continue;
            }
            if self.raw.len() < FRAME_HEAD {
                return Ok(());
            }
            let head = &self.raw[..FRAME_HEAD];
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let in_block = kind == HEADERS || kind == CONTINUATION;
            if !in_block {
                if self.block.is_some() {
                    // RFC 9113 6.10: a header block is contiguous.
                    return Err(invalid("frame inside a header block"));
                }
                self.out.extend_from_slice(&self.raw.split_to(FRAME_HEAD));
                self.passthrough = len;
                continue;
            }
            if len > MAX_FRAME {
                return Err(invalid("header frame larger than SETTINGS_MAX_FRAME_SIZE"));
            }
            if self.raw.len() < FRAME_HEAD + len {
                return Ok(());
            }
            self.raw.advance(FRAME_HEAD);
            let payload = self.raw.split_to(len);
            let block = self.collect(kind, flags, stream, payload)?;
            if block.encoded.len() > MAX_BLOCK {
                return Err(invalid("header block too large"));
            }
            if flags & END_HEADERS != 0
                && let Some(block) = self.block.take()
            {
                self.emit(block)?;
            }
        }
    }

    /// Adds a HEADERS or CONTINUATION payload to the block being collected.
    fn collect(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        mut payload: BytesMut,
    ) -> io::Result<&mut Block> {
        if kind == CONTINUATION {
            let block = self
                .block
                .as_mut()
                .ok_or_else(|| invalid("CONTINUATION without HEADERS"))?;
            if block.stream != stream {
                return Err(invalid("CONTINUATION on another stream"));
            }
            block.encoded.extend_from_slice(&payload);
            return Ok(block);
        }
        if self.block.is_some() {
            return Err(invalid("HEADERS inside a header block"));
        }
        if flags & PADDED != 0 {
            let pad = usize::from(*payload.first().ok_or_else(|| invalid("bad padding"))?);
            payload.advance(1);
            if pad > payload.len() {
                return Err(invalid("bad padding"));
            }
            payload.truncate(payload.len() - pad);
        }
        let priority = if flags & PRIORITY != 0 {
            if payload.len() < 5 {
                return Err(invalid("bad priority"));
            }
            let p = payload.split_to(5);
            Some([p[0], p[1], p[2], p[3], p[4]])
        } else {
            None
        };
        Ok(self.block.insert(Block {
            stream,
            flags: flags & (END_STREAM | PRIORITY),
            priority,
            encoded: payload.to_vec(),
        }))
    }

    /// Decodes a complete block, repairs `:authority`, and writes it out re-encoded as
    /// HEADERS (+ CONTINUATION) frames.
    fn emit(&mut self, block: Block) -> io::Result<()> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded = 0usize;
        self.decoder
            .decode_with_cb(&block.encoded, |name: Cow<[u8]>, value: Cow<[u8]>| {
                decoded = decoded.saturating_add(name.len() + value.len() + 32);
                if decoded <= MAX_DECODED {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| invalid(&format!("HPACK: {e:?}")))?;
        if decoded > MAX_DECODED {
            return Err(invalid("decoded header list too large"));
        }
        let mut encoded = Vec::with_capacity(block.encoded.len() * 2);
        for (name, value) in &fields {
            let value: &[u8] = if name == b":authority"
                && http::uri::Authority::try_from(value.as_slice()).is_err()
            {
                b"localhost"
            } else {
                value
            };
            // Literal header field without indexing, new name (RFC 7541 6.2.2).
            encoded.push(0x00);
            put_string(&mut encoded, name);
            put_string(&mut encoded, value);
        }
        let mut rest = encoded.as_slice();
        let mut first = true;
        loop {
            let priority = if first { block.priority } else { None };
            let room = MAX_FRAME - if priority.is_some() { 5 } else { 0 };
            let (chunk, tail) = rest.split_at(room.min(rest.len()));
            rest = tail;
            let mut flags = if rest.is_empty() { END_HEADERS } else { 0 };
            if first {
                flags |= block.flags;
            }
            let len = chunk.len() + if priority.is_some() { 5 } else { 0 };
            // `len` <= MAX_FRAME < 2^24, so three bytes hold it.
            self.out.put_slice(&(len as u32).to_be_bytes()[1..]);
            self.out.put_u8(if first { HEADERS } else { CONTINUATION });
            self.out.put_u8(flags);
            self.out.put_u32(block.stream);
            if let Some(p) = priority {
                self.out.put_slice(&p);
            }
            self.out.put_slice(chunk);
            first = false;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }
}

/// An HPACK string literal without Huffman coding (RFC 7541 5.2), its length a 7-bit-prefix
/// integer (5.1).
fn put_string(dst: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        dst.push(n as u8);
    } else {
        dst.push(127);
        n -= 127;
        while n >= 128 {
            dst.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        dst.push(n as u8);
    }
    dst.extend_from_slice(s);
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 header block: {what}"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A partial frame left at EOF goes to h2, which reports it.
                let n = this.raw.len().min(buf.remaining());
                buf.put_slice(&this.raw.split_to(n));
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
            } else {
                this.raw.extend_from_slice(read.filled());
                this.process()?;
            }
        }
    }
}

delegate_async_write!(AuthorityFix<S>, inner);

impl tonic::transport::server::Connected for AuthorityFix<tokio::net::UnixStream> {
    type ConnectInfo = tonic::transport::server::UdsConnectInfo;

    /// The peer credentials (`SO_PEERCRED`) of the socket underneath.
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Literal with incremental indexing, new name.
    fn indexed_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = vec![0x40];
        put_string(&mut b, name);
        put_string(&mut b, value);
        b
    }

    async fn through(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        client.write_all(&input).await?;
        client.shutdown().await?;
        let mut fixed = AuthorityFix::new(server);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await?;
        Ok(out)
    }

    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    /// Each frame after the preface as (type, flags, stream, decoded fields of HEADERS).
    fn decode_blocks(bytes: &[u8]) -> Vec<(u8, u8, u32, Fields)> {
        let mut decoder = loona_hpack::Decoder::new();
        let mut rest = &bytes[PREFACE_LEN..];
        let mut out = Vec::new();
        while rest.len() >= FRAME_HEAD {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            let payload = &rest[FRAME_HEAD..FRAME_HEAD + len];
            if kind == HEADERS {
                let payload = if flags & PRIORITY != 0 {
                    &payload[5..]
                } else {
                    payload
                };
                let mut fields = Vec::new();
                decoder
                    .decode_with_cb(payload, |n: Cow<[u8]>, v: Cow<[u8]>| {
                        fields.push((n.into_owned(), v.into_owned()))
                    })
                    .expect("re-encoded block decodes");
                out.push((kind, flags, stream, fields));
            } else {
                out.push((kind, flags, stream, Vec::new()));
            }
            rest = &rest[FRAME_HEAD + len..];
        }
        out
    }

    #[tokio::test]
    async fn invalid_authorities_become_localhost_and_the_rest_is_kept() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        // Stream 1: C-core's percent-encoded path, added to the client's dynamic table.
        let mut block = indexed_literal(b":authority", b"%2Ftmp%2Fagent.sock");
        block.extend(indexed_literal(b"workload.spiffe.io", b"true"));
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA passes through
        // Stream 3: both fields by dynamic-table index only (63 = :authority, the older
        // entry; 62 = workload.spiffe.io, the newest).
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &[0xbf, 0xbe]));
        // Stream 5: the raw path, padded, with priority, split over a CONTINUATION.
        let block = indexed_literal(b":authority", b"/tmp/agent.sock");
        let mut first = vec![2u8, 0, 0, 0, 0, 16];
        first.extend_from_slice(&block[..4]);
        first.extend_from_slice(&[0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 5, &first));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, &block[4..]));
        // Stream 7: a valid authority is left alone.
        let block = indexed_literal(b":authority", b"example.org:1234");
        input.extend(frame(HEADERS, END_HEADERS, 7, &block));

        let out = through(input).await.expect("passes");
        let frames = decode_blocks(&out);
        let headers: Vec<_> = frames.iter().filter(|f| f.0 == HEADERS).collect();
        assert_eq!(headers.len(), 4);
        let authority = |i: usize| {
            headers[i]
                .3
                .iter()
                .find(|(n, _)| n == b":authority")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(authority(0).as_deref(), Some(&b"localhost"[..]));
        assert_eq!(authority(1).as_deref(), Some(&b"localhost"[..]));
        assert_eq!(authority(2).as_deref(), Some(&b"localhost"[..]));
        assert_eq!(authority(3).as_deref(), Some(&b"example.org:1234"[..]));
        assert_eq!(
            headers[1].3,
            vec![
                (b":authority".to_vec(), b"localhost".to_vec()),
                (b"workload.spiffe.io".to_vec(), b"true".to_vec()),
            ],
            "indexed references resolve through the mirrored table, order kept"
        );
        assert_eq!(headers[1].1, END_HEADERS | END_STREAM);
        assert_eq!(headers[2].1, END_HEADERS | PRIORITY);
        assert!(
            frames
                .iter()
                .any(|f| f.0 == 0x0 && f.1 == END_STREAM && f.2 == 1),
            "DATA frame passed through"
        );
    }

    #[tokio::test]
    async fn an_hpack_bomb_or_an_endless_block_ends_the_connection() {
        // One 4000-byte entry in the table, then thousands of one-byte references to it.
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        let mut block = indexed_literal(b"x-big", &[b'a'; 4000]);
        block.extend(std::iter::repeat_n(0xbe, 20_000));
        input.extend(frame(HEADERS, 0, 1, &block[..MAX_FRAME]));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &block[MAX_FRAME..]));
        let err = through(input).await.expect_err("bomb refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);

        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0u8; 1000]));
        for _ in 0..80 {
            input.extend(frame(CONTINUATION, 0, 1, &[0u8; 1000]));
        }
        let err = through(input).await.expect_err("endless block refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
