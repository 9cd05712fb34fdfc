//! Just enough HTTP/1.1 for the demo's four services and its probes: one request per
//! connection, `Connection: close`, bodies delimited by the close. The services stand for
//! real applications (Warden's own HTTP listeners are in `warden-sidecar`'s `l7/`).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 16 * 1024;

/// A request as the services see it: the path with its query, and the end user's
/// `Authorization` header (forwarded by the app to the retriever).
pub struct Request {
    pub path: String,
    pub authorization: Option<String>,
}

impl Request {
    /// The value of query parameter `name`, %XX-decoded, `+` as space.
    pub fn query(&self, name: &str) -> Option<String> {
        let (_, query) = self.path.split_once('?')?;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| decode(v))
        })
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Serves `handler` on a fresh 127.0.0.1 port until the task is dropped.
pub async fn serve<F, Fut>(handler: F) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)>
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = (u16, String)> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = handle(stream, handler).await;
            });
        }
    });
    Ok((addr, task))
}

async fn handle<F, Fut>(mut stream: TcpStream, handler: F) -> std::io::Result<()>
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = (u16, String)>,
{
    let head = read_head(&mut stream).await?;
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (_method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or("/"),
    );
    let authorization = head.lines().skip(1).find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("authorization")
            .then(|| value.trim().to_owned())
    });
    let (status, body) = handler(Request {
        path: path.to_owned(),
        authorization,
    })
    .await;
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        403 => "Forbidden",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "incomplete request",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// GET `path` from `addr`; returns (status, body). A connection closed without a response
/// is an error: that is what a refused hop looks like from the caller's side.
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    get_as(addr, path, None).await
}

/// [`get`] with an `Authorization` header.
pub async fn get_as(
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> Result<(u16, String), String> {
    let work = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let auth = authorization
            .map(|a| format!("authorization: {a}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n{auth}connection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("connection reset ({e})"))?;
        if raw.is_empty() {
            return Err("connection closed without a response".to_owned());
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("malformed response")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("malformed status line")?;
        Ok((status, body.to_owned()))
    };
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(r) => r,
        Err(_) => Err("no answer within 10 s".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trip() {
        let q = "what is zero trust? (50% off)";
        let r = Request {
            path: format!("/ask?q={}", encode(q)),
            authorization: None,
        };
        assert_eq!(r.query("q").as_deref(), Some(q));
        assert_eq!(r.query("x"), None);
        assert_eq!(decode("%zz%4"), "%zz%4");
    }
}
