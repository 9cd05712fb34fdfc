//! A gRPC channel to the control plane over mTLS 1.3: we present our SVID, and the control
//! plane must present exactly `control_plane_id`. Used by the sidecar's watch loop and by
//! the `warden policy` CLI.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};
use warden_config::error_chain;
use warden_identity::{IdentityStore, SpiffeId};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("control plane URL {0:?}: expected https://host:port")]
    BadUrl(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot reach the control plane at {url}: {detail}")]
    Unreachable { url: String, detail: String },
}

/// Splits `https://host:port` into `host:port` and host.
pub(crate) fn parse_url(url: &str) -> Result<(String, String), ClientError> {
    let bad = || ClientError::BadUrl(url.to_owned());
    let rest = url.strip_prefix("https://").ok_or_else(bad)?;
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') || authority.contains('@') {
        return Err(bad());
    }
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok((
        authority.to_owned(),
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    ))
}

/// Connects (eagerly, within `timeout`) to the control plane at `url`.
pub async fn connect(
    url: &str,
    identity: &Arc<IdentityStore>,
    control_plane_id: &SpiffeId,
    timeout: Duration,
) -> Result<Channel, ClientError> {
    let (authority, host) = parse_url(url)?;
    let mut config = (*crate::tls::client_config(identity, control_plane_id)?).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(config));
    let server_name = crate::tls::server_name(&format!("{host}:0"));
    // TLS is done by our connector; tonic sees a plain h2 endpoint (its own TLS is not built).
    let endpoint = Endpoint::from_shared(format!("http://{authority}"))
        .map_err(|_| ClientError::BadUrl(url.to_owned()))?
        .connect_timeout(timeout)
        .timeout(Duration::from_secs(30))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let dial = authority.clone();
    let service = tower::service_fn(move |_uri| {
        let connector = connector.clone();
        let server_name = server_name.clone();
        let dial = dial.clone();
        async move {
            let tcp = TcpStream::connect(&dial).await?;
            let _ = tcp.set_nodelay(true);
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    match tokio::time::timeout(timeout, endpoint.connect_with_connector(service)).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(ClientError::Unreachable {
            url: url.to_owned(),
            detail: error_chain(&e),
        }),
        Err(_) => Err(ClientError::Unreachable {
            url: url.to_owned(),
            detail: format!("no connection within {timeout:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://cp.example:7443").expect("ok").0,
            "cp.example:7443"
        );
        assert_eq!(parse_url("https://[::1]:7443/").expect("ok").1, "::1");
        for bad in [
            "http://cp:7443",
            "https://cp",
            "https://:7443",
            "https://cp:x",
            "https://cp:1/path",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
