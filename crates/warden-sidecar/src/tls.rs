//! The data plane's TLS handshakes: timed, and classified for metrics and audit when they
//! fail. The rustls configurations themselves are `warden_identity::tls`'s (re-exported).

pub use warden_identity::tls::{client_config, server_config, server_name};

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
