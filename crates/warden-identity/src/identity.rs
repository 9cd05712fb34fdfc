//! The workload's own identity: its SVID (certificate chain + key) and the trust bundles
//! that came with it, swapped atomically as one unit when a source delivers an update.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::sign::CertifiedKey;
use thiserror::Error;
use tokio::sync::watch;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::bundle::BundleSet;
use crate::spiffe_id::SpiffeId;
use crate::svid::{self, SvidError, Usage};
use crate::validated::ValidatedChains;

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("the SVID certificate chain is empty")]
    EmptyChain,
    #[error("our own SVID is not valid: {0}")]
    Svid(#[from] SvidError),
    #[error("the private key cannot be used: {0}")]
    Key(String),
    #[error("the private key does not belong to the SVID certificate")]
    KeyMismatch,
}

/// One consistent identity: what we present, and whom we trust.
pub struct Identity {
    spiffe_id: SpiffeId,
    certified: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
    bundles: BundleSet,
    /// Peer chains already validated against `bundles` (see `validated.rs`); it lives and
    /// dies with this identity, so a bundle update starts from an empty cache.
    validated: ValidatedChains,
}

impl std::fmt::Debug for Identity {
    // Hand-written so that no derive can ever print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_after", &self.not_after)
            .field("trust_domains", &self.bundles.len())
            .finish_non_exhaustive()
    }
}

fn asn1_to_system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH
    }
}

impl Identity {
    /// Builds an identity from DER material, checking that the SVID is a valid X509-SVID
    /// that chains to its own trust domain's bundle right now and that the key matches it.
    /// The key DER is consumed and dropped here; only the provider's signing key survives.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        bundles: BundleSet,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::EmptyChain)?;
        let spiffe_id =
            svid::validate(leaf, &chain[1..], &bundles, UnixTime::now(), Usage::Server)?;
        let (_, cert) = X509Certificate::from_der(leaf)
            .map_err(|e| IdentityError::Svid(SvidError::Malformed(e.to_string())))?;
        let not_before = asn1_to_system_time(cert.validity().not_before);
        let not_after = asn1_to_system_time(cert.validity().not_after);
        let signing_key = crate::verifier::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified
            .keys_match()
            .map_err(|_| IdentityError::KeyMismatch)?;
        Ok(Self {
            spiffe_id,
            certified: Arc::new(certified),
            not_before,
            not_after,
            bundles,
            validated: ValidatedChains::default(),
        })
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.certified.cert.first()
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub fn bundles(&self) -> &BundleSet {
        &self.bundles
    }

    /// Validates a peer's chain against this identity's bundles ([`crate::svid::validate`]),
    /// remembering chains that passed so the next handshake of the same peer skips the chain
    /// signature check (never the handshake's own signature, nor the time check).
    pub fn validate_peer(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: Usage,
    ) -> Result<SpiffeId, SvidError> {
        self.validated
            .validate(leaf, intermediates, &self.bundles, now, usage)
    }

    /// Peer chains currently remembered by [`Identity::validate_peer`].
    pub fn validated_chains(&self) -> usize {
        self.validated.len()
    }

    /// How many [`Identity::validate_peer`] calls were answered from memory.
    pub fn validated_chain_hits(&self) -> u64 {
        self.validated.hits()
    }

    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// The current identity, read lock-free on every handshake and replaced atomically on
/// rotation. Connections already established keep the key they negotiated with.
#[derive(Debug)]
pub struct IdentityStore {
    current: ArcSwapOption<Identity>,
    generation: watch::Sender<u64>,
}

impl Default for IdentityStore {
    fn default() -> Self {
        Self {
            current: ArcSwapOption::empty(),
            generation: watch::Sender::new(0),
        }
    }
}

impl IdentityStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn load(&self) -> Option<Arc<Identity>> {
        self.current.load_full()
    }

    /// The identity if it is present and not expired: what a handshake may use.
    pub fn usable(&self) -> Option<Arc<Identity>> {
        self.load()
            .filter(|id| !id.is_expired_at(SystemTime::now()))
    }

    pub fn set(&self, identity: Arc<Identity>) {
        self.current.store(Some(identity));
        self.generation.send_modify(|g| *g += 1);
    }

    /// Notified after every `set`; the value counts updates.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// The crypto provider Warden uses everywhere, re-exported for sources that load keys.
pub fn default_provider() -> Arc<CryptoProvider> {
    crate::verifier::provider()
}
