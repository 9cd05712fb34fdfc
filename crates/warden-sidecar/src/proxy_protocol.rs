//! PROXY protocol v2 (HAProxy's spec, section 2.2): the header a `tcp` listener with
//! `proxy_protocol = "v2"` writes to the app before the peer's first byte, so the app
//! learns who called: the peer's address, and its SPIFFE ID in a TLV of the custom range
//! (type 0xE0 by default). The header is written only after the peer was authenticated
//! and allowed; nothing the peer sent is in it.

use std::net::{IpAddr, SocketAddr};

const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Version 2, command PROXY.
const V2_PROXY: u8 = 0x21;
const TCP_OVER_IPV4: u8 = 0x11;
const TCP_OVER_IPV6: u8 = 0x21;

/// The header for a connection from `source` to `destination`, carrying `spiffe_id` in a
/// TLV of type `tlv`. Mixed families are written as IPv6 (IPv4-mapped); an unknown
/// destination as the unspecified address of the source's family, port 0.
pub(crate) fn header(
    source: SocketAddr,
    destination: Option<SocketAddr>,
    tlv: u8,
    spiffe_id: &str,
) -> Vec<u8> {
    let destination = destination.unwrap_or_else(|| match source {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    });
    let mut addresses = Vec::with_capacity(36);
    let family = match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            addresses.extend_from_slice(&s.octets());
            addresses.extend_from_slice(&d.octets());
            TCP_OVER_IPV4
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            addresses.extend_from_slice(&v6(s).octets());
            addresses.extend_from_slice(&v6(d).octets());
            TCP_OVER_IPV6
        }
    };
    addresses.extend_from_slice(&source.port().to_be_bytes());
    addresses.extend_from_slice(&destination.port().to_be_bytes());
    // A SPIFFE ID is at most 2048 bytes (SPIFFE-ID spec), far below a TLV's u16 length.
    let id = &spiffe_id.as_bytes()[..spiffe_id.len().min(u16::MAX as usize)];
    let body_len = addresses.len() + 3 + id.len();
    let mut out = Vec::with_capacity(16 + body_len);
    out.extend_from_slice(&SIGNATURE);
    out.push(V2_PROXY);
    out.push(family);
    out.extend_from_slice(&(body_len as u16).to_be_bytes());
    out.extend_from_slice(&addresses);
    out.push(tlv);
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out.extend_from_slice(id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_with_the_spiffe_id_tlv() {
        let h = header(
            "198.18.0.1:40000".parse().expect("addr"),
            Some("198.18.0.2:8443".parse().expect("addr")),
            0xE0,
            "spiffe://example.org/app",
        );
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x11);
        let len = u16::from_be_bytes([h[14], h[15]]) as usize;
        assert_eq!(h.len(), 16 + len);
        assert_eq!(&h[16..20], &[198, 18, 0, 1]);
        assert_eq!(&h[20..24], &[198, 18, 0, 2]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 40000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 8443);
        assert_eq!(h[28], 0xE0);
        let tlv_len = u16::from_be_bytes([h[29], h[30]]) as usize;
        assert_eq!(&h[31..31 + tlv_len], b"spiffe://example.org/app");
    }

    #[test]
    fn mixed_families_are_written_as_ipv6() {
        let h = header(
            "[2001:2::1]:1".parse().expect("addr"),
            Some("198.18.0.2:2".parse().expect("addr")),
            0xE5,
            "spiffe://example.org/a",
        );
        assert_eq!(h[13], 0x21);
        assert_eq!(u16::from_be_bytes([h[14], h[15]]) as usize, 36 + 3 + 22);
    }
}
