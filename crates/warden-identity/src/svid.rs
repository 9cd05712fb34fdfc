//! X509-SVID validation per the SPIFFE X509-SVID standard.
//!
//! The order matters: the peer's trust domain is read from the leaf's URI SAN first, because
//! the chain must be validated against the bundle of *that* trust domain and no other.
//! A certificate from trust domain A that happens to chain to B's CA is rejected.

use rustls::pki_types::{CertificateDer, UnixTime};
use std::cell::RefCell;
use thiserror::Error;

use webpki::{EndEntityCert, KeyUsage, VerifiedPath};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::bundle::BundleSet;
use crate::spiffe_id::SpiffeId;
use crate::workload_id::{WorkloadId, WorkloadIdError};

/// id-kp-serverAuth (1.3.6.1.5.5.7.3.1), DER content octets.
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// id-kp-clientAuth (1.3.6.1.5.5.7.3.2), DER content octets.
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// Which side of a handshake the certificate is presented for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// The peer is a TLS client (we are the inbound server).
    Client,
    /// The peer is a TLS server (we are the outbound client).
    Server,
}

/// Why a certificate is not an acceptable X509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SvidError {
    #[error("certificate is not valid DER X.509: {0}")]
    Malformed(String),
    #[error("leaf certificate has no URI SAN (an X509-SVID carries its SPIFFE ID there)")]
    NoUriSan,
    #[error("leaf certificate has {0} URI SANs; an X509-SVID has exactly one")]
    MultipleUriSans(usize),
    #[error("URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    InvalidSpiffeId { uri: String, reason: String },
    #[error("SPIFFE ID {0} has no path; a workload SVID needs one")]
    NotAWorkloadId(String),
    #[error("leaf certificate is a CA (basicConstraints cA=true)")]
    LeafIsCa,
    #[error("leaf certificate has no keyUsage extension")]
    NoKeyUsage,
    #[error("leaf certificate's keyUsage extension is not critical")]
    KeyUsageNotCritical,
    #[error("leaf certificate's keyUsage lacks digitalSignature")]
    NoDigitalSignature,
    #[error("leaf certificate's keyUsage has keyCertSign or cRLSign")]
    LeafCanSign,
    #[error("leaf certificate's extendedKeyUsage lacks serverAuth or clientAuth")]
    ExtendedKeyUsage,
    #[error("signing certificate in the chain carries a SPIFFE ID with a path ({0})")]
    SigningCertWithPath(String),
    /// A certificate in the validated path signs another but may not sign certificates
    /// (RFC 5280 6.1.4 (k) and (n); X509-SVID 4.3). rustls-webpki does not check this.
    #[error("certificate {subject:?} signs another certificate in the chain but {defect}")]
    IssuerCannotSign {
        subject: String,
        defect: SignerDefect,
    },
    #[error("no trust bundle for trust domain {0:?}")]
    UnknownTrustDomain(String),
    #[error("certificate chain does not lead to the trust bundle of {trust_domain:?}: {detail}")]
    Untrusted {
        trust_domain: String,
        detail: String,
    },
    #[error("certificate expired")]
    Expired,
    #[error("certificate is not valid yet")]
    NotYetValid,
    #[error("peer presented {presented}, expected {expected}")]
    IdentityMismatch { expected: String, presented: String },
}

impl SvidError {
    /// The handshake-failure class this error is counted under in metrics.
    pub fn failure(&self) -> crate::HandshakeFailure {
        use crate::HandshakeFailure as F;
        match self {
            SvidError::UnknownTrustDomain(_) | SvidError::Untrusted { .. } => F::Untrusted,
            SvidError::IssuerCannotSign { .. } => F::IssuerCannotSign,
            SvidError::Expired | SvidError::NotYetValid => F::Expired,
            SvidError::IdentityMismatch { .. } => F::IdentityMismatch,
            _ => F::BadSvid,
        }
    }
}

/// Reads the SPIFFE ID of a certificate that has already been validated.
///
/// Used after a handshake to name the peer; it repeats only the SAN extraction, not the
/// checks, and so must never be used to *decide* whether a certificate is acceptable.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    let (_, x509) =
        X509Certificate::from_der(cert).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let id = single_spiffe_uri(&x509)?;
    SpiffeId::parse(id).map_err(|e| SvidError::InvalidSpiffeId {
        uri: id.to_owned(),
        reason: e.to_string(),
    })
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    Ok(san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn single_spiffe_uri<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a str, SvidError> {
    let uris = uri_sans(cert)?;
    match uris.as_slice() {
        [] => Err(SvidError::NoUriSan),
        [one] => Ok(one),
        many => Err(SvidError::MultipleUriSans(many.len())),
    }
}

/// Checks the leaf-certificate rules of the X509-SVID standard (not the chain).
pub fn check_leaf(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let uri = single_spiffe_uri(cert)?;
    let id = WorkloadId::parse(uri)
        .map_err(|e| match e {
            WorkloadIdError::Invalid(e) => SvidError::InvalidSpiffeId {
                uri: uri.to_owned(),
                reason: e.to_string(),
            },
            WorkloadIdError::NoPath(id) => SvidError::NotAWorkloadId(id),
        })?
        .into_spiffe_id();
    let bc = cert
        .basic_constraints()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::LeafIsCa);
    }
    let ku = cert
        .key_usage()
        .map_err(|e| SvidError::Malformed(e.to_string()))?
        .ok_or(SvidError::NoKeyUsage)?;
    if !ku.critical {
        return Err(SvidError::KeyUsageNotCritical);
    }
    if !ku.value.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::LeafCanSign);
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    if let Some(eku) = eku
        && !(eku.value.any || (eku.value.server_auth && eku.value.client_auth))
    {
        return Err(SvidError::ExtendedKeyUsage);
    }
    Ok(id)
}

fn check_signing_cert(der: &CertificateDer<'_>) -> Result<(), SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
    for uri in uri_sans(&cert)? {
        if let Ok(id) = SpiffeId::parse(uri)
            && id.is_workload()
        {
            return Err(SvidError::SigningCertWithPath(id.to_string()));
        }
    }
    Ok(())
}

/// Why a certificate may not sign other certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignerDefect {
    /// basicConstraints absent or cA=false.
    NotACa,
    /// No keyUsage extension (an intermediate must carry one, with keyCertSign).
    NoKeyUsage,
    /// keyUsage present without keyCertSign.
    NoKeyCertSign,
}

impl std::fmt::Display for SignerDefect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignerDefect::NotACa => "is not a CA (basicConstraints cA=false or absent)",
            SignerDefect::NoKeyUsage => "has no keyUsage extension (keyCertSign is required)",
            SignerDefect::NoKeyCertSign => "its keyUsage lacks keyCertSign",
        })
    }
}

/// Whether `cert` may sign certificates. `anchor` relaxes the rules for a trust-bundle
/// certificate, whose extensions RFC 5280 leaves out of path validation: an anchor without
/// basicConstraints or keyUsage is accepted, but one that says it is not a CA, or whose
/// keyUsage omits keyCertSign, is not (as BoringSSL and OpenSSL refuse it). An intermediate
/// must be a CA and carry keyUsage with keyCertSign (X509-SVID 4.3, RFC 5280 4.2.1.3).
pub(crate) fn signer_defect(cert: &X509Certificate<'_>, anchor: bool) -> Option<SignerDefect> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        Ok(None) if anchor => {}
        _ => return Some(SignerDefect::NotACa),
    }
    match cert.key_usage() {
        Ok(Some(ku)) if ku.value.key_cert_sign() => None,
        Ok(Some(_)) => Some(SignerDefect::NoKeyCertSign),
        Ok(None) if anchor => None,
        Ok(None) => Some(SignerDefect::NoKeyUsage),
        // Duplicate or undecodable extension: not a usable signer.
        Err(_) => Some(SignerDefect::NoKeyCertSign),
    }
}

fn intermediate_defect(der: &[u8]) -> Option<SvidError> {
    let cert = match X509Certificate::from_der(der) {
        Ok((_, cert)) => cert,
        Err(e) => return Some(SvidError::Malformed(e.to_string())),
    };
    signer_defect(&cert, false).map(|defect| SvidError::IssuerCannotSign {
        subject: cert.subject().to_string(),
        defect,
    })
}

/// Validates a peer's X509-SVID: leaf rules, then RFC 5280 path validation at `now` against
/// the bundle of the leaf's own trust domain. Returns the peer's SPIFFE ID.
pub fn validate(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &BundleSet,
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(leaf).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let id = check_leaf(&cert)?;
    for der in intermediates {
        check_signing_cert(der)?;
    }
    let bundle = bundles
        .get(id.trust_domain_name())
        .ok_or_else(|| SvidError::UnknownTrustDomain(id.trust_domain_name().to_owned()))?;
    let ee = EndEntityCert::try_from(leaf).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let eku = match usage {
        Usage::Client => KeyUsage::required_if_present(EKU_CLIENT_AUTH),
        Usage::Server => KeyUsage::required_if_present(EKU_SERVER_AUTH),
    };
    // webpki checks signatures, validity, basicConstraints and name constraints but not
    // keyUsage on the certificates that sign (see ARCHITECTURE.md, "Path validation"): every
    // candidate path is checked here, and one through a certificate that may not sign is
    // rejected, so path building goes on to try the others. The first such defect is kept
    // to name it if no path is left.
    let defect: RefCell<Option<SvidError>> = RefCell::new(None);
    let signers_may_sign = |path: &VerifiedPath<'_>| -> Result<(), webpki::Error> {
        let found = path
            .intermediate_certificates()
            .find_map(|c| intermediate_defect(c.der().as_ref()))
            .or_else(|| {
                bundle
                    .anchor_defect(path.anchor())
                    .map(|(subject, defect)| SvidError::IssuerCannotSign {
                        subject: subject.to_owned(),
                        defect,
                    })
            });
        match found {
            None => Ok(()),
            Some(e) => {
                defect.borrow_mut().get_or_insert(e);
                Err(webpki::Error::UnknownIssuer)
            }
        }
    };
    let verified = ee.verify_for_usage(
        crate::verifier::signature_algorithms().all,
        bundle.trust_anchors(),
        intermediates,
        now,
        eku,
        None,
        Some(&signers_may_sign),
    );
    if let Err(e) = verified {
        if let Some(defect) = defect.into_inner() {
            return Err(defect);
        }
        return Err(match e {
            webpki::Error::CertExpired { .. } => SvidError::Expired,
            webpki::Error::CertNotValidYet { .. } => SvidError::NotYetValid,
            webpki::Error::UnknownIssuer
            | webpki::Error::InvalidSignatureForPublicKey
            | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)
            | webpki::Error::CaUsedAsEndEntity
            | webpki::Error::EndEntityUsedAsCa => SvidError::Untrusted {
                trust_domain: id.trust_domain_name().to_owned(),
                detail: format!("{e:?}"),
            },
            other => SvidError::Malformed(format!("{other:?}")),
        });
    }
    Ok(id)
}
