//! `proxy_protocol = "v2"` on a tcp listener: the app receives a PROXY v2 header (parsed
//! here by the spec, independently of the sidecar's writer) before the peer's first byte,
//! with the peer's address and its SPIFFE ID in the configured TLV.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::pki::Ca;
use common::{TD, id, injected_identity};

const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A parsed header: source address (as text) and TLVs.
struct Header {
    source: std::net::SocketAddr,
    tlvs: Vec<(u8, Vec<u8>)>,
}

async fn read_header(s: &mut tokio::net::TcpStream) -> Header {
    let mut fixed = [0u8; 16];
    s.read_exact(&mut fixed).await.expect("fixed part");
    assert_eq!(fixed[..12], SIGNATURE, "not a PROXY v2 signature");
    assert_eq!(fixed[12], 0x21, "version 2, command PROXY");
    let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
    let mut rest = vec![0u8; len];
    s.read_exact(&mut rest).await.expect("addresses and TLVs");
    let (source, mut tlvs_at) = match fixed[13] {
        0x11 => {
            let ip = std::net::Ipv4Addr::new(rest[0], rest[1], rest[2], rest[3]);
            let port = u16::from_be_bytes([rest[8], rest[9]]);
            (std::net::SocketAddr::from((ip, port)), 12)
        }
        0x21 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&rest[..16]);
            let port = u16::from_be_bytes([rest[32], rest[33]]);
            (
                std::net::SocketAddr::from((std::net::Ipv6Addr::from(o), port)),
                36,
            )
        }
        other => panic!("family {other:#x}"),
    };
    let mut tlvs = Vec::new();
    while tlvs_at + 3 <= rest.len() {
        let kind = rest[tlvs_at];
        let n = u16::from_be_bytes([rest[tlvs_at + 1], rest[tlvs_at + 2]]) as usize;
        tlvs.push((kind, rest[tlvs_at + 3..tlvs_at + 3 + n].to_vec()));
        tlvs_at += 3 + n;
    }
    assert_eq!(tlvs_at, rest.len(), "TLVs fill the header exactly");
    Header { source, tlvs }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_learns_the_peer_spiffe_id_from_a_proxy_v2_header() {
    let ca = Ca::new(TD);
    let app = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let app_addr = app.local_addr().expect("addr");
    let toml = format!(
        r#"
{identity}
[[inbound]]
name = "db"
listen = "127.0.0.1:0"
forward = "{app_addr}"
allow = ["{peer}"]
proxy_protocol = "v2"
proxy_protocol_tlv = 0xE7
"#,
        identity = injected_identity(),
        peer = id("/ns/rag/sa/retriever")
    );
    let sidecar = common::sidecar(&toml, ca.identity(&id("/ns/rag/sa/vectordb"), &[])).await;
    let addr = sidecar.inbound_addr("db").expect("listener");
    let served = tokio::spawn(async move {
        let (mut s, _) = app.accept().await.expect("accept");
        let header = read_header(&mut s).await;
        let mut first = [0u8; 4];
        s.read_exact(&mut first)
            .await
            .expect("the peer's bytes follow");
        s.write_all(&first).await.expect("echo");
        (header, first)
    });
    let svid = ca.svid(&id("/ns/rag/sa/retriever"));
    let echoed = common::tls_exchange(
        addr,
        common::raw_client_config(
            Some((&svid.chain, svid.key_der())),
            &[&rustls::version::TLS13],
        ),
        b"ping",
    )
    .await
    .expect("exchange");
    assert_eq!(echoed, b"ping");
    let (header, first) = tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("the app was reached")
        .expect("app task");
    assert_eq!(
        &first, b"ping",
        "the header came first, then the peer's bytes"
    );
    assert!(header.source.ip().is_loopback(), "{}", header.source);
    assert_eq!(
        header.tlvs,
        vec![(0xE7, id("/ns/rag/sa/retriever").into_bytes())]
    );
}
