//! Validation of the listener sections: `[[inbound]]`, `[[outbound]]`, `[capture]` and
//! `[[egress]]`. A listener is explicit (`listen`), captured (`port` / `destinations`,
//! which need the matching `[capture]` listener), or both.

use std::net::SocketAddr;

use warden_policy::Pattern;

use super::{
    AppProtocol, CaptureConfig, ConfigError, EgressConfig, ForwardClientCert, InboundConfig,
    InboundProtocol, OutboundConfig, RawCapture, RawEgress, RawInbound, RawOutbound, Validator,
};

const LOOPBACK_ONLY: &str = "is not a loopback address: whoever reaches an outbound listener speaks with this workload's identity";

impl Validator<'_> {
    pub(super) fn capture(&self, raw: Option<RawCapture>) -> Result<CaptureConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(CaptureConfig::default());
        };
        let inbound = raw
            .inbound
            .as_deref()
            .map(|t| self.addr("capture.inbound".into(), t))
            .transpose()?;
        let outbound = raw
            .outbound
            .as_deref()
            .map(|t| self.addr("capture.outbound".into(), t))
            .transpose()?;
        if let Some(addr) = outbound
            && !addr.ip().is_loopback()
        {
            return Err(self.e("capture.outbound", format!("{addr} {LOOPBACK_ONLY}")));
        }
        if inbound.is_none() && outbound.is_none() {
            return Err(self.e(
                "capture",
                "names neither an inbound nor an outbound listener (omit [capture] to turn capture off)",
            ));
        }
        if let (Some(i), Some(o)) = (inbound, outbound)
            && i.port() != 0
            && i.port() == o.port()
        {
            return Err(self.e(
                "capture.outbound",
                format!("port {} is also capture.inbound's", o.port()),
            ));
        }
        Ok(CaptureConfig { inbound, outbound })
    }

    pub(super) fn inbound(
        &self,
        raw: Vec<RawInbound>,
        capture: &CaptureConfig,
    ) -> Result<Vec<InboundConfig>, ConfigError> {
        let mut names = Vec::new();
        let mut ports: Vec<u16> = Vec::new();
        let mut inbound = Vec::new();
        for (i, l) in raw.into_iter().enumerate() {
            let k = |f: &str| format!("inbound[{i}].{f}");
            self.name(k("name"), &l.name, &mut names)?;
            let mut allow = Vec::new();
            for (j, p) in l.allow.iter().enumerate() {
                allow.push(Pattern::parse(p).map_err(|e| {
                    self.e(format!("inbound[{i}].allow[{j}]"), format!("{p:?}: {e}"))
                })?);
            }
            let listen = l
                .listen
                .as_deref()
                .map(|t| self.addr(k("listen"), t))
                .transpose()?;
            if let Some(port) = l.port {
                if port == 0 {
                    return Err(self.e(k("port"), "must be the app's port (1-65535)"));
                }
                if capture.inbound.is_none() {
                    return Err(self.e(
                        k("port"),
                        "picks captured connections, but [capture] has no inbound listener",
                    ));
                }
                if ports.contains(&port) {
                    return Err(self.e(
                        k("port"),
                        format!("{port} is claimed by another [[inbound]]"),
                    ));
                }
                ports.push(port);
            }
            if listen.is_none() && l.port.is_none() {
                return Err(self.e(
                    k("listen"),
                    "is missing: an [[inbound]] needs `listen` (explicit) or `port` (capture)",
                ));
            }
            let forward = match (&l.forward, l.port) {
                (Some(f), _) => self.host_port(k("forward"), f)?,
                (None, Some(port)) => format!("127.0.0.1:{port}"),
                (None, None) => {
                    return Err(self.e(
                        k("forward"),
                        "is missing: where the app listens, like \"127.0.0.1:8080\"",
                    ));
                }
            };
            let protocol = self.inbound_protocol(i, &l)?;
            inbound.push(InboundConfig {
                listen,
                port: l.port,
                forward,
                name: l.name,
                allow,
                protocol,
            });
        }
        Ok(inbound)
    }

    fn inbound_protocol(&self, i: usize, l: &RawInbound) -> Result<InboundProtocol, ConfigError> {
        let k = |f: &str| format!("inbound[{i}].{f}");
        let only = |key: &str, protocol: &str| {
            self.e(
                k(key),
                format!("applies only to protocol = \"{protocol}\" listeners"),
            )
        };
        match l.protocol.as_deref().unwrap_or("tcp") {
            "tcp" => {
                if l.forward_client_cert.is_some() {
                    return Err(only("forward_client_cert", "http"));
                }
                if l.app_protocol.is_some() {
                    return Err(only("app_protocol", "http"));
                }
                let proxy_protocol_tlv = match (l.proxy_protocol.as_deref(), l.proxy_protocol_tlv) {
                    (None, None) => None,
                    (None, Some(_)) => {
                        return Err(
                            self.e(k("proxy_protocol_tlv"), "needs proxy_protocol = \"v2\"")
                        );
                    }
                    (Some("v2"), tlv) => {
                        Some(match tlv {
                            None => 0xE0,
                            Some(t @ 0xE0..=0xEF) => t as u8,
                            Some(t) => {
                                return Err(self.e(
                                k("proxy_protocol_tlv"),
                                format!("{t:#x} is outside the custom TLV range 0xE0-0xEF of PROXY v2"),
                            ));
                            }
                        })
                    }
                    (Some(other), _) => {
                        return Err(self.e(
                            k("proxy_protocol"),
                            format!("{other:?}: only \"v2\" is supported"),
                        ));
                    }
                };
                Ok(InboundProtocol::Tcp { proxy_protocol_tlv })
            }
            "http" => {
                if l.proxy_protocol.is_some() {
                    return Err(only("proxy_protocol", "tcp"));
                }
                if l.proxy_protocol_tlv.is_some() {
                    return Err(only("proxy_protocol_tlv", "tcp"));
                }
                let forward_client_cert = match l.forward_client_cert.as_deref() {
                    None | Some("sanitize") => ForwardClientCert::Sanitize,
                    Some("sanitize_set") => ForwardClientCert::SanitizeSet,
                    Some(other) => {
                        return Err(self.e(
                            k("forward_client_cert"),
                            format!("{other:?}: expected \"sanitize\" or \"sanitize_set\""),
                        ));
                    }
                };
                let app_protocol = match l.app_protocol.as_deref() {
                    None | Some("http1") => AppProtocol::Http1,
                    Some("h2c") => AppProtocol::H2c,
                    Some(other) => {
                        return Err(self.e(
                            k("app_protocol"),
                            format!("{other:?}: expected \"http1\" or \"h2c\""),
                        ));
                    }
                };
                Ok(InboundProtocol::Http {
                    forward_client_cert,
                    app_protocol,
                })
            }
            other => Err(self.e(
                k("protocol"),
                format!("{other:?}: expected \"tcp\" or \"http\""),
            )),
        }
    }

    pub(super) fn outbound(
        &self,
        raw: Vec<RawOutbound>,
        capture: &CaptureConfig,
    ) -> Result<Vec<OutboundConfig>, ConfigError> {
        let mut names = Vec::new();
        let mut literal: Vec<SocketAddr> = Vec::new();
        let mut outbound = Vec::new();
        for (i, l) in raw.into_iter().enumerate() {
            let k = |f: &str| format!("outbound[{i}].{f}");
            self.name(k("name"), &l.name, &mut names)?;
            let listen = l
                .listen
                .as_deref()
                .map(|t| self.addr(k("listen"), t))
                .transpose()?;
            if let Some(addr) = listen
                && !addr.ip().is_loopback()
            {
                return Err(self.e(k("listen"), format!("{addr} {LOOPBACK_ONLY}")));
            }
            let connect = l
                .connect
                .as_deref()
                .map(|t| self.host_port(k("connect"), t))
                .transpose()?;
            match (listen, &connect) {
                (Some(_), None) => {
                    return Err(self.e(
                        k("connect"),
                        "is missing: where the explicit listener connects, like \"llm.rag.svc:8443\"",
                    ));
                }
                (None, Some(_)) => {
                    return Err(self.e(
                        k("listen"),
                        "is missing: `connect` is the explicit listener's upstream (captured connections go to their original destination)",
                    ));
                }
                _ => {}
            }
            let mut destinations = Vec::new();
            if let Some(list) = l.destinations {
                if capture.outbound.is_none() {
                    return Err(self.e(
                        k("destinations"),
                        "claims captured connections, but [capture] has no outbound listener",
                    ));
                }
                if list.is_empty() {
                    return Err(self.e(k("destinations"), "is empty"));
                }
                for (j, d) in list.iter().enumerate() {
                    let key = format!("outbound[{i}].destinations[{j}]");
                    let d = self.host_port(key.clone(), d)?;
                    if let Ok(addr) = d.parse::<SocketAddr>() {
                        if literal.contains(&addr) {
                            return Err(
                                self.e(key, format!("{addr} is claimed by another [[outbound]]"))
                            );
                        }
                        literal.push(addr);
                    }
                    destinations.push(d);
                }
            }
            if listen.is_none() && destinations.is_empty() {
                return Err(self.e(
                    k("listen"),
                    "is missing: an [[outbound]] needs `listen` and `connect` (explicit) or `destinations` (capture)",
                ));
            }
            outbound.push(OutboundConfig {
                listen,
                connect,
                destinations,
                server_id: self.spiffe_id(k("server_id"), &l.server_id)?,
                name: l.name,
            });
        }
        Ok(outbound)
    }

    pub(super) fn egress(
        &self,
        raw: Vec<RawEgress>,
        capture: &CaptureConfig,
    ) -> Result<Vec<EgressConfig>, ConfigError> {
        let mut names = Vec::new();
        let mut egress = Vec::new();
        for (i, e) in raw.into_iter().enumerate() {
            let k = |f: &str| format!("egress[{i}].{f}");
            self.name(k("name"), &e.name, &mut names)?;
            if capture.outbound.is_none() {
                return Err(self.e(
                    k("name"),
                    "egress applies to captured connections, but [capture] has no outbound listener",
                ));
            }
            if e.hosts.is_empty() {
                return Err(self.e(k("hosts"), "is empty: list the SNI names to let through"));
            }
            let mut hosts = Vec::new();
            for (j, h) in e.hosts.iter().enumerate() {
                let host = h.to_ascii_lowercase();
                if !sni_pattern_ok(&host) {
                    return Err(self.e(
                        format!("egress[{i}].hosts[{j}]"),
                        format!("{h:?} is not a DNS name (or `*.` and a DNS name)"),
                    ));
                }
                hosts.push(host);
            }
            if e.ports.is_empty() {
                return Err(self.e(
                    k("ports"),
                    "is empty: list the destination ports, like [443]",
                ));
            }
            if let Some(j) = e.ports.iter().position(|p| *p == 0) {
                return Err(self.e(format!("egress[{i}].ports[{j}]"), "must be 1-65535"));
            }
            egress.push(EgressConfig {
                name: e.name,
                hosts,
                ports: e.ports,
            });
        }
        Ok(egress)
    }
}

/// A lower-case DNS name of letters, digits and hyphens, or `*.` followed by one. IP
/// addresses are not names: a ClientHello never carries one as its SNI (RFC 6066).
fn sni_pattern_ok(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.parse::<std::net::IpAddr>().is_err()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use crate::config::SidecarConfig;

    const BASE: &str = "trust_domain = \"example.org\"\n[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\n";

    fn parse(extra: &str) -> Result<SidecarConfig, crate::config::ConfigError> {
        SidecarConfig::from_toml("f.toml", &format!("{BASE}{extra}"))
    }

    #[test]
    fn capture_listeners_parse_with_their_defaults() {
        let c = parse(
            "[capture]\ninbound = \"0.0.0.0:15006\"\noutbound = \"127.0.0.1:15001\"\n\
             [[inbound]]\nname = \"http\"\nport = 8080\n\
             [[outbound]]\nname = \"retriever\"\ndestinations = [\"retriever.rag.svc:8080\", \"198.18.0.3:8080\"]\nserver_id = \"spiffe://example.org/ns/rag/sa/retriever\"\n\
             [[egress]]\nname = \"llm-api\"\nhosts = [\"API.llm.example\", \"*.llm.example\"]\nports = [443]\n",
        )
        .expect("valid");
        assert_eq!(c.capture.inbound.map(|a| a.port()), Some(15006));
        assert_eq!(c.inbound[0].listen, None);
        assert_eq!(c.inbound[0].port, Some(8080));
        assert_eq!(c.inbound[0].forward, "127.0.0.1:8080");
        assert_eq!(c.outbound[0].listen, None);
        assert_eq!(c.outbound[0].connect, None);
        assert_eq!(c.outbound[0].destinations.len(), 2);
        assert_eq!(c.egress[0].hosts, ["api.llm.example", "*.llm.example"]);
    }

    #[test]
    fn capture_alone_is_a_valid_config() {
        let c = parse("[capture]\ninbound = \"0.0.0.0:15006\"\noutbound = \"127.0.0.1:15001\"\n")
            .expect("a pod that serves and calls nothing, but is captured");
        assert!(c.inbound.is_empty() && c.outbound.is_empty());
        let e = parse("").expect_err("nothing at all");
        assert_eq!(e.key, "inbound", "{e}");
    }

    #[test]
    fn capture_mistakes_name_their_key() {
        let cap = "[capture]\ninbound = \"0.0.0.0:15006\"\noutbound = \"127.0.0.1:15001\"\n";
        let cases = [
            (
                "[[inbound]]\nname = \"h\"\nport = 8080\n".to_owned(),
                "inbound[0].port",
            ),
            (format!("{cap}[[inbound]]\nname = \"h\"\n"), "inbound[0].listen"),
            (
                format!("{cap}[[inbound]]\nname = \"a\"\nport = 80\n[[inbound]]\nname = \"b\"\nport = 80\n"),
                "inbound[1].port",
            ),
            (
                format!("{cap}[[inbound]]\nname = \"a\"\nport = 0\n"),
                "inbound[0].port",
            ),
            (
                "[capture]\noutbound = \"0.0.0.0:15001\"\n".to_owned(),
                "capture.outbound",
            ),
            ("[capture]\n".to_owned(), "capture"),
            (
                "[[outbound]]\nname = \"o\"\ndestinations = [\"a:1\"]\nserver_id = \"spiffe://example.org/x\"\n".to_owned(),
                "outbound[0].destinations",
            ),
            (
                format!("{cap}[[outbound]]\nname = \"o\"\ndestinations = [\"a\"]\nserver_id = \"spiffe://example.org/x\"\n"),
                "outbound[0].destinations[0]",
            ),
            (
                format!("{cap}[[outbound]]\nname = \"o\"\nconnect = \"a:1\"\nserver_id = \"spiffe://example.org/x\"\n"),
                "outbound[0].listen",
            ),
            (
                format!("{cap}[[outbound]]\nname = \"o\"\nlisten = \"127.0.0.1:1\"\nserver_id = \"spiffe://example.org/x\"\n"),
                "outbound[0].connect",
            ),
            (
                format!("{cap}[[outbound]]\nname = \"a\"\ndestinations = [\"198.18.0.2:80\"]\nserver_id = \"spiffe://example.org/x\"\n[[outbound]]\nname = \"b\"\ndestinations = [\"198.18.0.2:80\"]\nserver_id = \"spiffe://example.org/y\"\n"),
                "outbound[1].destinations[0]",
            ),
            (
                format!("{cap}[[inbound]]\nname = \"h\"\nport = 1\n[[egress]]\nname = \"e\"\nhosts = [\"198.18.0.1\"]\nports = [443]\n"),
                "egress[0].hosts[0]",
            ),
            (
                format!("{cap}[[inbound]]\nname = \"h\"\nport = 1\n[[egress]]\nname = \"e\"\nhosts = [\"a.example\"]\nports = []\n"),
                "egress[0].ports",
            ),
            (
                "[capture]\ninbound = \"0.0.0.0:15006\"\n[[inbound]]\nname = \"h\"\nport = 1\n[[egress]]\nname = \"e\"\nhosts = [\"a.example\"]\nports = [443]\n".to_owned(),
                "egress[0].name",
            ),
        ];
        for (text, key) in cases {
            let e = parse(&text).expect_err(&text);
            assert_eq!(e.key, key, "{text}\n{e}");
        }
    }

    #[test]
    fn sni_patterns() {
        for ok in ["a.example", "*.example.com", "x-1.y"] {
            assert!(super::sni_pattern_ok(ok), "{ok}");
        }
        for bad in [
            "", "*.", "a..b", "-a.b", "a_b.c", "10.0.0.1", "*.*.a", "A.b",
        ] {
            assert!(!super::sni_pattern_ok(bad), "{bad}");
        }
    }
}
