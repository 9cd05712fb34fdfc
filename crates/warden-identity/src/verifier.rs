//! rustls verifiers that accept only X509-SVIDs and report a typed reason on failure.
//!
//! The reason travels inside `rustls::Error::InvalidCertificate(CertificateError::Other)` as
//! an [`SvidError`]; [`HandshakeFailure::classify`] digs it out again after the handshake so
//! metrics and audit records can say *why* a peer was refused.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};

use crate::identity::IdentityStore;
use crate::spiffe_id::SpiffeId;
use crate::svid::{SvidError, Usage};

/// aws-lc-rs with AES-GCM first: it has hardware support on every server CPU we target.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::aws_lc_rs::{self, cipher_suite};
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    cipher_suite::TLS13_AES_128_GCM_SHA256,
                    cipher_suite::TLS13_AES_256_GCM_SHA384,
                    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                ],
                ..aws_lc_rs::default_provider()
            })
        })
        .clone()
}

pub fn signature_algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Why a TLS handshake failed, as counted in `warden_tls_handshakes_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    Untrusted,
    /// A certificate in the peer's chain signs another but may not sign certificates (a CA
    /// without keyCertSign): a forged intermediate, told apart from an unknown CA.
    IssuerCannotSign,
    Expired,
    BadSvid,
    IdentityMismatch,
    NoClientCert,
    Protocol,
    Timeout,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 8] = [
        Self::Untrusted,
        Self::IssuerCannotSign,
        Self::Expired,
        Self::BadSvid,
        Self::IdentityMismatch,
        Self::NoClientCert,
        Self::Protocol,
        Self::Timeout,
    ];

    pub fn as_label(self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted",
            Self::IssuerCannotSign => "issuer_cannot_sign",
            Self::Expired => "expired",
            Self::BadSvid => "bad_svid",
            Self::IdentityMismatch => "identity_mismatch",
            Self::NoClientCert => "no_client_cert",
            Self::Protocol => "protocol",
            Self::Timeout => "timeout",
        }
    }

    /// Classifies a rustls error raised during a handshake.
    pub fn classify(err: &rustls::Error) -> Self {
        match err {
            rustls::Error::NoCertificatesPresented => Self::NoClientCert,
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                match other.0.downcast_ref::<SvidError>() {
                    Some(e) => e.failure(),
                    None => Self::BadSvid,
                }
            }
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => Self::Expired,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Self::Untrusted,
            rustls::Error::InvalidCertificate(_) => Self::BadSvid,
            // The peer rejected *our* certificate: from our side that is a protocol failure.
            _ => Self::Protocol,
        }
    }

    /// A description of a failed handshake for people (audit records, logs): the X509-SVID
    /// defect in words when the peer's certificate was refused by Warden's checks, else the
    /// TLS error as rustls words it.
    pub fn describe_io(err: &std::io::Error) -> String {
        let svid = err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .and_then(|tls| match tls {
                rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                    other.0.downcast_ref::<SvidError>()
                }
                _ => None,
            });
        match svid {
            Some(e) => format!("peer certificate refused: {e}"),
            None => err.to_string(),
        }
    }

    /// Classifies the `io::Error` a tokio-rustls handshake returns.
    pub fn classify_io(err: &std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::TimedOut {
            return Self::Timeout;
        }
        match err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => Self::classify(tls),
            None => Self::Protocol,
        }
    }
}

fn reject(err: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

fn no_identity() -> SvidError {
    SvidError::UnknownTrustDomain("(no trust bundle loaded yet)".to_owned())
}

/// Inbound: requires a client X509-SVID that chains to its own trust domain's bundle.
/// Authorization (which IDs may connect) happens after the handshake, against the policy.
#[derive(Debug)]
pub struct SvidClientVerifier {
    store: Arc<IdentityStore>,
}

impl SvidClientVerifier {
    pub fn new(store: Arc<IdentityStore>) -> Self {
        Self { store }
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let identity = self.store.load().ok_or_else(|| reject(no_identity()))?;
        identity
            .validate_peer(end_entity, intermediates, now, Usage::Client)
            .map_err(reject)?;
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &signature_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}

/// Outbound: requires the upstream to present an X509-SVID for exactly `expected`.
/// The TLS server name is ignored: SPIFFE identity replaces DNS names.
#[derive(Debug)]
pub struct SvidServerVerifier {
    store: Arc<IdentityStore>,
    expected: SpiffeId,
}

impl SvidServerVerifier {
    pub fn new(store: Arc<IdentityStore>, expected: SpiffeId) -> Self {
        Self { store, expected }
    }
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let identity = self.store.load().ok_or_else(|| reject(no_identity()))?;
        let presented = identity
            .validate_peer(end_entity, intermediates, now, Usage::Server)
            .map_err(reject)?;
        if presented != self.expected {
            return Err(reject(SvidError::IdentityMismatch {
                expected: self.expected.to_string(),
                presented: presented.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &signature_algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &signature_algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signature_algorithms().supported_schemes()
    }
}
