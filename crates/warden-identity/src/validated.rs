//! Peer chains that already passed [`svid::validate`] against one bundle set.
//!
//! A sidecar sees the same few peer SVIDs over and over (one per calling workload, renewed
//! every half hour or so), and validating one costs an ECDSA verification plus two X.509
//! parses: about a fifth of a sidecar's CPU per new connection. This cache remembers, per
//! exact chain, that the chain is a valid X509-SVID chaining to the bundle, and for which
//! SPIFFE ID, and over which time window that holds.
//!
//! What is *not* cached, because it must hold for every handshake:
//! - proof of possession: rustls verifies the peer's `CertificateVerify` signature with the
//!   leaf's key on every handshake, cached chain or not;
//! - time: a cached chain is used only while `now` is inside the validity of every
//!   certificate of the chain (leaf and intermediates, as path validation checks them);
//!   outside it the full validation runs again and returns its precise error;
//! - trust: the cache belongs to one [`crate::Identity`], i.e. to one bundle set. A bundle
//!   update or an SVID rotation installs a new identity with an empty cache.
//!
//! Entries are keyed by a SHA-256 over the usage and the leaf's DER; each entry also holds a
//! SHA-256 of the intermediates presented with it, and a lookup hits only when both match,
//! so only the byte-identical chain can hit. One entry per leaf: a peer that varies the
//! intermediates it sends (junk ones are ignored by path building) replaces its own entry
//! and cannot push other peers out; growing the map takes distinct valid SVIDs. Only
//! successes are cached; failures always take the full path (and their exact reason). The
//! cache is bounded and simply cleared when full.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::digest;
use rustls::pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::bundle::BundleSet;
use crate::spiffe_id::SpiffeId;
use crate::svid::{self, SvidError, Usage};

/// Distinct peer chains remembered per identity. Beyond it the map is cleared: a peer set
/// this large is rare for one sidecar, and clearing keeps the cost bounded and simple.
const CAPACITY: usize = 4096;

#[derive(Debug, Clone)]
struct Valid {
    /// SHA-256 of the intermediates presented with the leaf (see `intermediates_hash`).
    intermediates: [u8; 32],
    id: SpiffeId,
    /// The latest `notBefore` and earliest `notAfter` of the chain, in Unix seconds.
    not_before: u64,
    not_after: u64,
}

#[derive(Debug, Default)]
pub(crate) struct ValidatedChains {
    map: Mutex<HashMap<[u8; 32], Valid>>,
    /// Lookups answered from the cache (for tests and debugging).
    hits: AtomicU64,
}

impl ValidatedChains {
    /// [`svid::validate`], answered from the cache when this exact chain was already found
    /// valid for `usage` against `bundles` and `now` is within its validity window.
    /// `bundles` must be the set this cache belongs to.
    pub(crate) fn validate(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        bundles: &BundleSet,
        now: UnixTime,
        usage: Usage,
    ) -> Result<SpiffeId, SvidError> {
        let key = leaf_key(usage, leaf);
        let chain = intermediates_hash(intermediates);
        let secs = now.as_secs();
        if let Some(valid) = self.lock().get(&key)
            && valid.intermediates == chain
            && valid.not_before <= secs
            && secs <= valid.not_after
        {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(valid.id.clone());
        }
        let id = svid::validate(leaf, intermediates, bundles, now, usage)?;
        // The chain parsed during validation, so the window can be read; if it somehow
        // cannot, the chain is just not cached.
        if let Some((not_before, not_after)) = validity_window(leaf, intermediates) {
            let mut map = self.lock();
            if map.len() >= CAPACITY {
                map.clear();
            }
            map.insert(
                key,
                Valid {
                    intermediates: chain,
                    id: id.clone(),
                    not_before,
                    not_after,
                },
            );
        }
        Ok(id)
    }

    /// Chains currently remembered.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Lookups answered from memory so far.
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Valid>> {
        // Single inserts and lookups cannot leave the map inconsistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn leaf_key(usage: Usage, leaf: &CertificateDer<'_>) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&[match usage {
        Usage::Client => 1,
        Usage::Server => 2,
    }]);
    ctx.update(leaf);
    finish(ctx)
}

fn intermediates_hash(intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for der in intermediates {
        // Length-prefixed, so the boundaries between certificates are part of the hash.
        ctx.update(&(der.len() as u64).to_be_bytes());
        ctx.update(der);
    }
    finish(ctx)
}

fn finish(ctx: digest::Context) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The intersection of the validity periods of the leaf and the intermediates.
fn validity_window(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Option<(u64, u64)> {
    let mut window = (0u64, u64::MAX);
    for der in std::iter::once(leaf).chain(intermediates) {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let validity = cert.validity();
        let not_before = u64::try_from(validity.not_before.timestamp()).unwrap_or(0);
        let not_after = u64::try_from(validity.not_after.timestamp()).ok()?;
        window = (window.0.max(not_before), window.1.min(not_after));
    }
    Some(window)
}
