//! Trust bundles, one per trust domain (federation from day one).
//!
//! An empty bundle trusts nothing; a trust domain with no bundle is unknown and its peers
//! are rejected. Trust anchors are derived once when a bundle is built, not per handshake.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, TrustAnchor};
use thiserror::Error;

use crate::spiffe_id::TrustDomain;

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
        Ok(Self { certs, anchors })
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
