//! Serves the current SVID to rustls on every handshake, from the [`IdentityStore`].
//!
//! Because the store is read per handshake, a rotation takes effect for the very next
//! handshake; connections already established are unaffected. An expired or absent SVID
//! yields no certificate, so handshakes fail closed instead of presenting stale credentials.

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::identity::IdentityStore;

#[derive(Debug)]
pub struct SvidResolver {
    store: Arc<IdentityStore>,
}

impl SvidResolver {
    pub fn new(store: Arc<IdentityStore>) -> Self {
        Self { store }
    }

    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.store.usable().map(|id| id.certified_key().clone())
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
