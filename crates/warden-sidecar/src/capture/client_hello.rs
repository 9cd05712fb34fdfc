//! Reads the server name (SNI) out of a TLS ClientHello without terminating TLS: egress
//! passes the bytes through untouched, so this only looks at them.
//!
//! Bounded: the hello may span several records (post-quantum key shares make it larger
//! than one TCP segment), but never more than [`MAX_HELLO`] bytes are buffered.

/// The most a ClientHello may take, records included. A real one is 0.5 to 2 KiB.
pub(crate) const MAX_HELLO: usize = 16 * 1024;

const RECORD_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST: u8 = 0;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Hello {
    /// A complete ClientHello is not there yet; read more.
    Incomplete,
    /// A ClientHello, with its SNI host name (lower case, no trailing dot), if it has one.
    Parsed { sni: Option<String> },
    /// Not a TLS ClientHello, or one that breaks the format.
    Invalid(&'static str),
}

/// Parses the start of a TLS connection.
pub(crate) fn parse(buf: &[u8]) -> Hello {
    // Reassemble the handshake message from the records' fragments.
    let mut message = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < 5 {
            return incomplete(buf);
        }
        if rest[0] != RECORD_HANDSHAKE {
            return Hello::Invalid("not a TLS handshake record");
        }
        if rest[1] != 3 {
            return Hello::Invalid("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16 * 1024 {
            return Hello::Invalid("a TLS record of an impossible length");
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return incomplete(buf);
        };
        message.extend_from_slice(fragment);
        rest = &rest[5 + len..];
        if message.len() >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Hello::Invalid("the first handshake message is not a ClientHello");
            }
            let body_len = u32::from_be_bytes([0, message[1], message[2], message[3]]) as usize;
            if 4 + body_len > MAX_HELLO {
                return Hello::Invalid("a ClientHello larger than 16 KiB");
            }
            if message.len() >= 4 + body_len {
                return match client_hello(&message[4..4 + body_len]) {
                    Ok(sni) => Hello::Parsed { sni },
                    Err(why) => Hello::Invalid(why),
                };
            }
        }
    }
}

fn incomplete(buf: &[u8]) -> Hello {
    if buf.len() >= MAX_HELLO {
        Hello::Invalid("no complete ClientHello within 16 KiB")
    } else {
        Hello::Incomplete
    }
}

/// A cursor over a ClientHello body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err("a truncated ClientHello");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Result<&'a [u8], &'static str> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

fn client_hello(body: &[u8]) -> Result<Option<String>, &'static str> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    r.vec8()?; // legacy_session_id
    r.vec16()?; // cipher_suites
    r.vec8()?; // legacy_compression_methods
    if r.0.is_empty() {
        return Ok(None); // no extensions at all (TLS 1.2 and older may omit them)
    }
    let mut extensions = Reader(r.vec16()?);
    let mut sni = None;
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind != EXTENSION_SERVER_NAME {
            continue;
        }
        if sni.is_some() {
            return Err("two server_name extensions");
        }
        sni = Some(server_name(data)?);
    }
    Ok(sni.flatten())
}

fn server_name(data: &[u8]) -> Result<Option<String>, &'static str> {
    let mut outer = Reader(data);
    let mut list = Reader(outer.vec16()?);
    let mut host = None;
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind != NAME_TYPE_HOST {
            continue;
        }
        if host.is_some() {
            return Err("two host names in server_name");
        }
        let text = std::str::from_utf8(name).map_err(|_| "a server name that is not ASCII")?;
        let text = text.strip_suffix('.').unwrap_or(text);
        if text.is_empty()
            || !text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err("a server name that is not a DNS name");
        }
        host = Some(text.to_ascii_lowercase());
    }
    Ok(host)
}

/// Whether `sni` is one of `hosts` (exact, or `*.suffix` for exactly one more label).
pub(crate) fn host_matches(hosts: &[String], sni: &str) -> Option<usize> {
    hosts.iter().position(|h| match h.strip_prefix("*.") {
        Some(suffix) => sni
            .strip_suffix(suffix)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => h == sni,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a client library writes it, with the given SNI.
    fn hello_bytes(sni: Option<&str>) -> Vec<u8> {
        use std::sync::Arc;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = match sni {
            Some(s) => rustls::pki_types::ServerName::try_from(s.to_owned()).expect("name"),
            None => rustls::pki_types::ServerName::IpAddress(
                std::net::Ipv4Addr::new(198, 18, 0, 4).into(),
            ),
        };
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn reads_the_sni_of_a_real_client_hello() {
        let bytes = hello_bytes(Some("API.llm.example"));
        assert_eq!(
            parse(&bytes),
            Hello::Parsed {
                sni: Some("api.llm.example".into())
            }
        );
        assert_eq!(parse(&hello_bytes(None)), Hello::Parsed { sni: None });
    }

    #[test]
    fn every_prefix_is_incomplete_never_a_wrong_answer() {
        let bytes = hello_bytes(Some("api.llm.example"));
        for n in 0..bytes.len() {
            assert_eq!(parse(&bytes[..n]), Hello::Incomplete, "prefix of {n} bytes");
        }
    }

    #[test]
    fn a_hello_split_over_records_is_reassembled() {
        let bytes = hello_bytes(Some("api.llm.example"));
        let body = &bytes[5..];
        let (a, b) = body.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        assert_eq!(
            parse(&split),
            Hello::Parsed {
                sni: Some("api.llm.example".into())
            }
        );
    }

    #[test]
    fn plaintext_and_garbage_are_invalid() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Hello::Invalid(_)
        ));
        assert!(matches!(parse(&[22, 3, 1, 0, 0]), Hello::Invalid(_)));
        // A record that claims a ClientHello longer than the cap.
        assert!(matches!(
            parse(&[22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]),
            Hello::Invalid(_)
        ));
        // Bytes cut inside the body are reported, never a panic.
        // A hello whose record and handshake lengths agree, cut short inside its extensions.
        let mut broken = hello_bytes(Some("a.example"));
        broken.truncate(broken.len() - 10);
        let record = (broken.len() - 5) as u16;
        broken[3..5].copy_from_slice(&record.to_be_bytes());
        let body = (broken.len() - 9) as u32;
        broken[6..9].copy_from_slice(&body.to_be_bytes()[1..]);
        assert_eq!(parse(&broken), Hello::Invalid("a truncated ClientHello"));
    }

    #[test]
    fn wildcards_match_one_label() {
        let hosts = vec!["api.llm.example".to_owned(), "*.cdn.example".to_owned()];
        assert_eq!(host_matches(&hosts, "api.llm.example"), Some(0));
        assert_eq!(host_matches(&hosts, "x.cdn.example"), Some(1));
        assert_eq!(host_matches(&hosts, "cdn.example"), None);
        assert_eq!(host_matches(&hosts, "a.b.cdn.example"), None);
        assert_eq!(host_matches(&hosts, "xcdn.example"), None);
        assert_eq!(host_matches(&hosts, "evil-api.llm.example"), None);
    }
}
