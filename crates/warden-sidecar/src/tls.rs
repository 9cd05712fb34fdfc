//! rustls configurations: TLS 1.3 only, SVIDs from the identity store, SPIFFE verifiers.
//! Built once at start-up (one server config, one client config per outbound listener);
//! identity rotation needs no rebuild because the resolver and verifiers read the store.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::version::TLS13;
use rustls::{ClientConfig, ServerConfig};
use warden_identity::{
    IdentityStore, SpiffeId, SvidClientVerifier, SvidResolver, SvidServerVerifier, provider,
};

/// Server side of inbound listeners: a client SVID is mandatory.
pub fn server_config(store: &Arc<IdentityStore>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])?
        .with_client_cert_verifier(Arc::new(SvidClientVerifier::new(store.clone())))
        .with_cert_resolver(Arc::new(SvidResolver::new(store.clone())));
    // Peers are other sidecars with fresh connections per hop; resumption tickets would
    // let a revoked or rotated client skip certificate checks, so none are issued.
    config.send_tls13_tickets = 0;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// Client side of one outbound listener: the upstream must present exactly `server_id`.
pub fn client_config(
    store: &Arc<IdentityStore>,
    server_id: &SpiffeId,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&TLS13])?
        .dangerous() // not dangerous: the custom verifier is stricter than WebPKI's (SPIFFE ID pinned)
        .with_custom_certificate_verifier(Arc::new(SvidServerVerifier::new(
            store.clone(),
            server_id.clone(),
        )))
        .with_client_cert_resolver(Arc::new(SvidResolver::new(store.clone())));
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The SNI name sent upstream: the host of `connect`. Identity is checked by SPIFFE ID, not
/// by this name, so an address that is not a valid DNS name falls back to a fixed one.
pub fn server_name(connect: &str) -> ServerName<'static> {
    let host = connect.rsplit_once(':').map(|(h, _)| h).unwrap_or(connect);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned())
        .unwrap_or_else(|_| ServerName::try_from("warden.invalid").expect("static name is valid"))
}

/// A failed handshake: its classification, a detail for the audit record, and the socket
/// when the handshake handed it back (not after a timeout), so that the caller records the
/// failure *before* closing it: whoever sees the close can already read the metric.
pub(crate) type HandshakeError<IO> = (warden_identity::HandshakeFailure, String, Option<IO>);

/// Runs a TLS handshake (a tokio-rustls `into_fallible()` future) under `limit`; a failure
/// comes back classified for metrics and audit, with a detail for the record.
pub(crate) async fn timed_handshake<T, IO>(
    limit: std::time::Duration,
    handshake: impl std::future::Future<Output = Result<T, (std::io::Error, IO)>>,
) -> Result<T, HandshakeError<IO>> {
    use warden_identity::HandshakeFailure;
    match tokio::time::timeout(limit, handshake).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err((e, io))) => Err((
            HandshakeFailure::classify_io(&e),
            HandshakeFailure::describe_io(&e),
            Some(io),
        )),
        Err(_) => Err((
            HandshakeFailure::Timeout,
            "no complete handshake within limits.handshake_timeout".to_owned(),
            None,
        )),
    }
}
