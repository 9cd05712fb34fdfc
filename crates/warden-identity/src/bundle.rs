//! Trust bundles, one per trust domain (federation from day one).
//!
//! An empty bundle trusts nothing; a trust domain with no bundle is unknown and its peers
//! are rejected. Trust anchors are derived once when a bundle is built, not per handshake.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, TrustAnchor};
use thiserror::Error;

use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe_id::TrustDomain;
use crate::svid::{SignerDefect, signer_defect};

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("bundle certificate {index} of {trust_domain} is not a usable trust anchor: {detail}")]
    BadAnchor {
        trust_domain: String,
        index: usize,
        detail: String,
    },
}

/// The CA certificates of one trust domain.
#[derive(Debug, Clone)]
pub struct Bundle {
    certs: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
    /// Per anchor (same index): why it may not sign certificates, with its subject. Such an
    /// anchor stays in the bundle (refusing the whole bundle would take every peer down for
    /// one bad entry) but no path through it validates.
    anchor_defects: Vec<Option<(String, SignerDefect)>>,
}

impl Bundle {
    pub fn new(
        trust_domain: &TrustDomain,
        certs: Vec<CertificateDer<'static>>,
    ) -> Result<Self, BundleError> {
        let anchors = certs
            .iter()
            .enumerate()
            .map(|(index, c)| {
                webpki::anchor_from_trusted_cert(c)
                    .map(|a| a.to_owned())
                    .map_err(|e| BundleError::BadAnchor {
                        trust_domain: trust_domain.to_string(),
                        index,
                        detail: format!("{e:?}"),
                    })
            })
            .collect::<Result<_, _>>()?;
        let anchor_defects = certs
            .iter()
            .map(|c| {
                // The anchor parsed above, so x509-parser reads it too; if it somehow does
                // not, the anchor is unusable rather than trusted unchecked.
                let (_, cert) = match X509Certificate::from_der(c) {
                    Ok(parsed) => parsed,
                    Err(_) => return Some((String::new(), SignerDefect::NotACa)),
                };
                signer_defect(&cert, true).map(|d| (cert.subject().to_string(), d))
            })
            .collect();
        Ok(Self {
            certs,
            anchors,
            anchor_defects,
        })
    }

    /// Why `anchor` (one of [`Bundle::trust_anchors`]) may not sign certificates, if it may
    /// not: its subject and the defect.
    pub(crate) fn anchor_defect(&self, anchor: &TrustAnchor<'_>) -> Option<(&str, SignerDefect)> {
        let index = self
            .anchors
            .iter()
            .position(|a| std::ptr::eq(a, anchor) || a == anchor)?;
        self.anchor_defects[index]
            .as_ref()
            .map(|(subject, defect)| (subject.as_str(), *defect))
    }

    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    pub fn trust_anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }
}

/// Bundles keyed by trust domain. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct BundleSet {
    bundles: Arc<HashMap<TrustDomain, Bundle>>,
}

impl BundleSet {
    pub fn new(bundles: impl IntoIterator<Item = (TrustDomain, Bundle)>) -> Self {
        Self {
            bundles: Arc::new(bundles.into_iter().collect()),
        }
    }

    /// The bundle of a trust domain, by its name (`example.org`).
    pub fn get(&self, trust_domain: &str) -> Option<&Bundle> {
        self.bundles.get(trust_domain)
    }

    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.bundles.keys()
    }

    pub fn len(&self) -> usize {
        self.bundles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bundles.is_empty()
    }
}
