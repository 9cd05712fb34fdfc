//! rustls configurations for SPIFFE mTLS: TLS 1.3 only, SVIDs from an [`IdentityStore`],
//! the SPIFFE verifiers. Shared by the data plane (inbound and outbound listeners), the
//! control plane's API and its clients. Built once; identity rotation needs no rebuild
//! because the resolver and verifiers read the store on every handshake.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::version::TLS13;
use rustls::{ClientConfig, ServerConfig};

use crate::{
    IdentityStore, SpiffeId, SvidClientVerifier, SvidResolver, SvidServerVerifier, provider,
};

/// The server side: a client SVID is mandatory.
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

/// The client side: the server must present exactly `server_id`.
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
