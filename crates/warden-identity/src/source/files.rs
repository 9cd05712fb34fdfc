//! SVIDs from PEM files, in the layout cert-manager's csi-driver-spiffe writes:
//! `tls.crt` (chain, leaf first), `tls.key` (PKCS#8), `ca.crt` (bundle of our trust domain).
//!
//! Files are polled rather than watched with inotify: Kubernetes swaps mounted files through
//! symlink renames that inotify watchers routinely miss, and three small reads a second cost
//! nothing. A change is detected by content, so a file rewritten in place is seen too.
//! Material that does not parse or validate (a half-written file) is rejected and retried
//! when the content changes again; the last good identity stays in force meanwhile.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::{SourceEvent, SourceHandle, SvidSource};
use crate::bundle::{Bundle, BundleSet};
use crate::identity::Identity;
use crate::svid::spiffe_id_of;

/// Reloads SVID files when they change.
#[derive(Debug, Clone)]
pub struct FilesSource {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub bundle: PathBuf,
    pub poll_interval: Duration,
}

impl FilesSource {
    pub fn new(cert: PathBuf, key: PathBuf, bundle: PathBuf) -> Self {
        Self {
            cert,
            key,
            bundle,
            poll_interval: Duration::from_secs(1),
        }
    }

    /// Reads and validates the three files once.
    pub fn load(&self) -> Result<Identity, String> {
        let files = self.read().map_err(|e| e.to_string())?;
        build_identity(&files)
    }

    fn read(&self) -> std::io::Result<Files> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
        };
        Ok(Files {
            cert: read(&self.cert)?,
            key: Zeroizing::new(read(&self.key)?),
            bundle: read(&self.bundle)?,
        })
    }
}

struct Files {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    bundle: Vec<u8>,
}

impl Files {
    fn fingerprint(&self) -> u64 {
        // Change detection only, never stored or logged: a non-cryptographic hash is enough.
        let mut h = DefaultHasher::new();
        self.cert.hash(&mut h);
        self.key.hash(&mut h);
        self.bundle.hash(&mut h);
        h.finish()
    }
}

fn certs_from_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what}: no certificate in the file"));
    }
    Ok(certs)
}

fn build_identity(files: &Files) -> Result<Identity, String> {
    let chain = certs_from_pem("cert", &files.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|e| format!("key: not a PEM private key: {e}"))?;
    let bundle_certs = certs_from_pem("bundle", &files.bundle)?;
    let id = spiffe_id_of(&chain[0]).map_err(|e| format!("cert: {e}"))?;
    let td = id.trust_domain();
    let bundle = Bundle::new(&td, bundle_certs).map_err(|e| format!("bundle: {e}"))?;
    Identity::from_der(chain, key, BundleSet::new([(td, bundle)])).map_err(|e| e.to_string())
}

impl SvidSource for FilesSource {
    fn name(&self) -> &'static str {
        "files"
    }

    fn start(self: Box<Self>) -> SourceHandle {
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(async move { self.poll(tx).await });
        SourceHandle::new(rx, task)
    }
}

impl FilesSource {
    async fn poll(self: Box<Self>, tx: mpsc::Sender<SourceEvent>) {
        let mut last: Option<u64> = None;
        let mut last_error: Option<String> = None;
        let mut tick = tokio::time::interval(self.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let this = self.clone();
            // File reads and certificate parsing are blocking work; keep them off the
            // runtime threads that relay traffic.
            let outcome = tokio::task::spawn_blocking(move || {
                let files = this.read().map_err(|e| e.to_string())?;
                let fp = files.fingerprint();
                Ok::<_, String>((fp, files))
            })
            .await;
            let event = match outcome {
                Ok(Ok((fp, _))) if last == Some(fp) => continue,
                Ok(Ok((fp, files))) => {
                    last = Some(fp);
                    match build_identity(&files) {
                        Ok(identity) => {
                            last_error = None;
                            SourceEvent::Updated(Arc::new(identity))
                        }
                        Err(reason) => SourceEvent::Rejected { reason },
                    }
                }
                Ok(Err(reason)) => {
                    if last_error.as_deref() == Some(reason.as_str()) {
                        continue;
                    }
                    last_error = Some(reason.clone());
                    SourceEvent::Unavailable { reason }
                }
                Err(join) => SourceEvent::Unavailable {
                    reason: join.to_string(),
                },
            };
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}
