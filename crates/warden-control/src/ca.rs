//! The built-in certificate authority, for clusters without SPIRE: one self-signed ECDSA P-256
//! root per trust domain, kept in `data_dir/ca/` and reused across restarts, which issues
//! X509-SVIDs (one URI SAN, critical keyUsage digitalSignature, serverAuth + clientAuth, not a
//! CA) to the Workload API, to the control plane itself and to the admin CLI.
//!
//! It must never issue an SVID outside its own trust domain or one `warden-identity` would
//! reject, never write key material except through a 0600 file renamed into place (a reader
//! sees the old file or the new one, never half of one), never silently replace an existing
//! root (every SVID in the cluster chains to it), and never log key bytes.
//!
//! Rotating the root itself is out of scope; the trust state is published through a watch
//! channel so that a future rotation (old + new root in one bundle) or federation reaches every
//! open Workload API stream without a restart.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use thiserror::Error;
use tokio::sync::watch;
use warden_identity::{
    Bundle, BundleError, BundleSet, Identity, IdentityError, SpiffeId, SvidError, TrustDomain,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

/// Lifetime of a newly created root. Long, because the root is not rotated yet: an expired
/// root takes every workload down at once, a long-lived one only needs its key kept safe.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Subdirectory of `data_dir` holding `ca.crt` and `ca.key` (0700; it appears complete or not
/// at all, because it is built under a temporary name and renamed).
pub const CA_DIR: &str = "ca";
/// Subdirectory of `data_dir` holding the admin CLI's credential.
pub const ADMIN_DIR: &str = "admin";
/// Lifetime of the admin CLI's credential: long, because a person uses it; it is re-issued
/// at start once past half of it.
pub const ADMIN_CREDENTIAL_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the CA files are unusable ({reason}); restore them from a backup, or move the \
         directory aside to create a new root (every issued SVID then stops being trusted)"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: the CA belongs to trust domain {found:?}, but the config says {expected:?}")]
    WrongTrustDomain {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "{path}: the CA certificate has expired; move the directory aside to create a new root"
    )]
    Expired { path: PathBuf },
    #[error("{id} is not a workload ID of trust domain {trust_domain}; the CA will not issue it")]
    ForeignId { id: String, trust_domain: String },
    #[error("an SVID lifetime must be at least one second")]
    TtlTooShort,
    #[error("federated bundle for {0}: the CA's own trust domain cannot be federated")]
    FederateSelf(String),
    #[error("could not create a certificate or key: {0}")]
    Sign(String),
    #[error("trust bundle: {0}")]
    Bundle(#[from] BundleError),
    #[error("issued SVID does not validate: {0}")]
    Svid(#[from] SvidError),
    #[error("issued SVID cannot be used: {0}")]
    Identity(#[from] IdentityError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

fn sign_err(e: rcgen::Error) -> CaError {
    CaError::Sign(e.to_string())
}

/// What the CA trusts and hands out: its own root(s) and the bundles of federated domains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundles {
    pub trust_domain: TrustDomain,
    /// The CA certificates of our own trust domain (today: the one root).
    pub own: Vec<CertificateDer<'static>>,
    pub federated: BTreeMap<TrustDomain, Vec<CertificateDer<'static>>>,
}

impl TrustBundles {
    /// All bundles, own trust domain included, as `warden-identity` validates against them.
    pub fn bundle_set(&self) -> Result<BundleSet, BundleError> {
        let mut set = vec![(
            self.trust_domain.clone(),
            Bundle::new(&self.trust_domain, self.own.clone())?,
        )];
        for (td, certs) in &self.federated {
            set.push((td.clone(), Bundle::new(td, certs.clone())?));
        }
        Ok(BundleSet::new(set))
    }
}

mod admin;
mod files;
mod jwt;

pub use admin::AdminCredentialStatus;
pub use files::write_private;
use files::{create_private_dir, sync_dir};
pub use jwt::{JWT_DIR, JwtAuthority, JwtKeyError, JwtSvid};

/// An SVID fresh from the CA. `Debug` omits the key.
pub struct IssuedSvid {
    pub spiffe_id: SpiffeId,
    /// Leaf first; the root is not included (it is in the bundle).
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 DER, wiped from memory on drop.
    pub key: Zeroizing<Vec<u8>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for IssuedSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedSvid")
            .field("spiffe_id", &self.spiffe_id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl IssuedSvid {
    /// When a holder should have its replacement: 45% into the lifetime, so the new SVID is
    /// in place before half-life (SPIRE's rule) even when the renewal is a little late.
    pub fn refresh_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime.mul_f64(0.45)
    }

    /// The key as rustls takes it (a copy: rustls' key type does not zeroize).
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.to_vec()))
    }
}

/// The CA: its signing key (never leaves this struct) and the published trust state.
pub struct BuiltinCa {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
    not_after: SystemTime,
    trust: watch::Sender<Arc<TrustBundles>>,
}

impl std::fmt::Debug for BuiltinCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuiltinCa")
            .field("trust_domain", &self.trust_domain)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn to_system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    u64::try_from(t.timestamp())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or(UNIX_EPOCH)
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Clock-skew allowance: peers on other nodes may run slightly behind. Small against short
/// test TTLs so that "half-life" still means roughly half of the requested TTL.
fn backdate(ttl: Duration) -> Duration {
    (ttl / 4).min(Duration::from_secs(10))
}

impl BuiltinCa {
    /// Loads the CA from `data_dir/ca/`, creating it on first start. An existing but broken
    /// CA is an error, never a reason to mint a new root.
    pub fn load_or_create(data_dir: &Path, trust_domain: &TrustDomain) -> Result<Self, CaError> {
        let dir = data_dir.join(CA_DIR);
        if !dir.exists() {
            create_ca_dir(data_dir, &dir, trust_domain)?;
        }
        Self::load(&dir, trust_domain)
    }

    fn load(dir: &Path, trust_domain: &TrustDomain) -> Result<Self, CaError> {
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem =
            Zeroizing::new(std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?);
        if let Ok(meta) = std::fs::metadata(&key_path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %key_path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "CA key is readable by other users; it should be 0600");
        }
        let ca = Self::from_pem(cert_pem, &key_pem, trust_domain, &cert_path, &key_path)?;
        tracing::info!(trust_domain = %trust_domain, dir = %dir.display(), not_after = %humantime::format_rfc3339_seconds(ca.not_after), "built-in CA loaded");
        Ok(ca)
    }

    /// The CA from its root certificate and key (PEM), checked as [`Self::load_or_create`]
    /// checks files: a CA certificate of `trust_domain`, unexpired, with its own key.
    /// `cert_at` and `key_at` say where they came from, for errors (a file, or a key in the
    /// shared store).
    pub fn from_pem(
        cert_pem: String,
        key_pem: &str,
        trust_domain: &TrustDomain,
        cert_at: &Path,
        key_at: &Path,
    ) -> Result<Self, CaError> {
        let (cert_path, key_path) = (cert_at.to_owned(), key_at.to_owned());
        let corrupt = |path: &Path, reason: String| CaError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| corrupt(&cert_path, format!("not a PEM certificate: {e}")))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| corrupt(&key_path, format!("not a PEM private key: {e}")))?;
        let (_, x509) = X509Certificate::from_der(&cert)
            .map_err(|e| corrupt(&cert_path, format!("not X.509: {e}")))?;
        if !x509.is_ca() {
            return Err(corrupt(&cert_path, "not a CA certificate".into()));
        }
        let expected = trust_domain.id_string();
        let found = uri_sans(&x509);
        if found != [expected.as_str()] {
            return Err(CaError::WrongTrustDomain {
                path: cert_path,
                found: found.join(", "),
                expected: trust_domain.to_string(),
            });
        }
        let not_after = to_system_time(x509.validity().not_after);
        if SystemTime::now() >= not_after {
            return Err(CaError::Expired { path: cert_path });
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| corrupt(&cert_path, format!("cannot sign with it: {e}")))?;
        let trust = TrustBundles {
            trust_domain: trust_domain.clone(),
            own: vec![cert.clone()],
            federated: BTreeMap::new(),
        };
        let ca = Self {
            trust_domain: trust_domain.clone(),
            issuer,
            cert,
            cert_pem,
            not_after,
            trust: watch::Sender::new(Arc::new(trust)),
        };
        // A key that does not belong to the certificate would sign SVIDs nobody can verify;
        // find out now with one probe SVID rather than at the first handshake.
        let probe = SpiffeId::parse(&format!("{expected}/warden/ca-self-check"))
            .map_err(|e| corrupt(&cert_path, e.to_string()))?;
        ca.identity_for(&probe, Duration::from_secs(60))
            .map_err(|e| corrupt(&key_path, format!("key and certificate do not match: {e}")))?;
        Ok(ca)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The CA certificates of our own trust domain, as the Workload API's `bundle` carries.
    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        self.trust.borrow().own.clone()
    }

    /// The current trust state (own bundle + federated bundles).
    pub fn trust(&self) -> Arc<TrustBundles> {
        self.trust.borrow().clone()
    }

    /// Notified whenever the trust state changes; Workload API streams push it to workloads.
    pub fn watch_trust(&self) -> watch::Receiver<Arc<TrustBundles>> {
        self.trust.subscribe()
    }

    /// Replaces the bundles of federated trust domains (the complete set: a domain missing
    /// here is withdrawn). Each certificate must be a usable trust anchor.
    pub fn set_federated_bundles(
        &self,
        federated: BTreeMap<TrustDomain, Vec<CertificateDer<'static>>>,
    ) -> Result<(), CaError> {
        for (td, certs) in &federated {
            if td == &self.trust_domain {
                return Err(CaError::FederateSelf(td.to_string()));
            }
            Bundle::new(td, certs.clone())?;
        }
        self.trust.send_modify(|t| {
            let mut next = TrustBundles::clone(t);
            next.federated = federated;
            *t = Arc::new(next);
        });
        Ok(())
    }

    /// Issues an X509-SVID for `id`, valid for `ttl` (cut to the root's own expiry), with a
    /// fresh P-256 key.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedSvid, CaError> {
        let (svid, _, _) = self.sign_leaf(id, ttl)?;
        crate::metrics::METRICS.svid_issued(crate::audit::SvidKind::X509);
        Ok(svid)
    }

    /// Issues an SVID and builds the validated [`Identity`] (SVID + all bundles) from it.
    pub fn identity_for(&self, id: &SpiffeId, ttl: Duration) -> Result<Identity, CaError> {
        let svid = self.issue(id, ttl)?;
        let bundles = self.trust().bundle_set()?;
        Ok(Identity::from_der(
            svid.chain.clone(),
            svid.private_key_der(),
            bundles,
        )?)
    }

    /// Signs a leaf for `id`: the SVID, and its certificate and key for a caller that also
    /// writes them out as PEM.
    fn sign_leaf(
        &self,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<(IssuedSvid, rcgen::Certificate, KeyPair), CaError> {
        if id.trust_domain_name() != self.trust_domain.as_str() || !id.is_workload() {
            return Err(CaError::ForeignId {
                id: id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        if ttl < Duration::from_secs(1) {
            return Err(CaError::TtlTooShort);
        }
        let now = SystemTime::now();
        let not_before = now - backdate(ttl);
        let not_after = (now + ttl).min(self.not_after);
        // Whole seconds: X.509 times have no fractions, and the returned times must be the
        // certificate's own.
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let not_before = UNIX_EPOCH + Duration::from_secs(secs(not_before));
        let not_after = UNIX_EPOCH + Duration::from_secs(secs(not_after));
        let key = KeyPair::generate().map_err(sign_err)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Warden");
        let uri = id
            .as_str()
            .to_owned()
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Sign(format!("{id}: {e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        // ExplicitNoCa writes basicConstraints cA=false; the spiffe crate requires the
        // extension to be present on a leaf.
        params.is_ca = IsCa::ExplicitNoCa;
        // rcgen always marks keyUsage critical, as the X509-SVID standard requires.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = time::OffsetDateTime::from(not_before);
        params.not_after = time::OffsetDateTime::from(not_after);
        let cert = params.signed_by(&key, &self.issuer).map_err(sign_err)?;
        let svid = IssuedSvid {
            spiffe_id: id.clone(),
            chain: vec![cert.der().clone()],
            key: Zeroizing::new(key.serialize_der()),
            not_before,
            not_after,
        };
        Ok((svid, cert, key))
    }
}

/// A new self-signed root for `trust_domain`: certificate and key, PEM.
pub fn new_root_pem(trust_domain: &TrustDomain) -> Result<(String, Zeroizing<String>), CaError> {
    let key = KeyPair::generate().map_err(sign_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Warden");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("Warden CA {trust_domain}"));
    let uri = trust_domain
        .id_string()
        .try_into()
        .map_err(|e: rcgen::Error| CaError::Sign(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    // Path length 0: this root signs workload SVIDs directly, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = time::OffsetDateTime::from(now - Duration::from_secs(60));
    params.not_after = time::OffsetDateTime::from(now + CA_LIFETIME);
    let cert = params.self_signed(&key).map_err(sign_err)?;
    Ok((cert.pem(), Zeroizing::new(key.serialize_pem())))
}

/// Creates the root under a temporary directory and renames it to `dir`, so a crash leaves
/// either no CA or a complete one. Losing a race with another process is fine: its CA wins.
fn create_ca_dir(data_dir: &Path, dir: &Path, trust_domain: &TrustDomain) -> Result<(), CaError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .map_err(io_err(data_dir))?;
    let tmp = data_dir.join(format!(".{CA_DIR}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    create_private_dir(&tmp)?;
    let (cert_pem, key_pem) = new_root_pem(trust_domain)?;
    write_private(&tmp.join("ca.key"), key_pem.as_bytes())?;
    write_private(&tmp.join("ca.crt"), cert_pem.as_bytes())?;
    match std::fs::rename(&tmp, dir) {
        Ok(()) => {
            sync_dir(data_dir);
            tracing::info!(trust_domain = %trust_domain, dir = %dir.display(), "built-in CA created");
            Ok(())
        }
        Err(_) if dir.join("ca.crt").exists() => {
            // Another process created it first; use theirs.
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => Err(io_err(dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::UnixTime;
    use warden_identity::svid::{self, Usage};

    use super::*;

    // Fixtures of the CA's tests, its submodules' (`jwt`, `admin`) included.

    pub(super) fn td() -> TrustDomain {
        TrustDomain::new("example.org").expect("td")
    }

    pub(super) fn id(path: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://example.org{path}")).expect("id")
    }

    /// The permission bits of a file or directory.
    pub(super) fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn issued_svids_follow_the_x509_svid_standard() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = BuiltinCa::load_or_create(dir.path(), &td()).expect("ca");
        let svid = ca
            .issue(&id("/ns/a/sa/b"), Duration::from_secs(3600))
            .expect("issue");
        let bundles = ca.trust().bundle_set().expect("bundles");
        for usage in [Usage::Client, Usage::Server] {
            let got = svid::validate(&svid.chain[0], &[], &bundles, UnixTime::now(), usage)
                .expect("valid SVID");
            assert_eq!(got, id("/ns/a/sa/b"));
        }
        let (_, x509) = X509Certificate::from_der(&svid.chain[0]).expect("x509");
        assert_eq!(uri_sans(&x509), ["spiffe://example.org/ns/a/sa/b"]);
        let ku = x509.key_usage().expect("ku").expect("present");
        assert!(ku.critical && ku.value.digital_signature());
        assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
        let eku = x509.extended_key_usage().expect("eku").expect("present");
        assert!(eku.value.server_auth && eku.value.client_auth);
        let bc = x509.basic_constraints().expect("bc").expect("present");
        assert!(!bc.value.ca);
        assert!(svid.not_after > SystemTime::now());
        assert!(svid.refresh_at() < svid.not_after);
    }

    #[test]
    fn refuses_foreign_ids_and_zero_ttl() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = BuiltinCa::load_or_create(dir.path(), &td()).expect("ca");
        let other = SpiffeId::parse("spiffe://other.org/a").expect("id");
        assert!(matches!(
            ca.issue(&other, Duration::from_secs(60)),
            Err(CaError::ForeignId { .. })
        ));
        let root = SpiffeId::parse("spiffe://example.org").expect("id");
        assert!(matches!(
            ca.issue(&root, Duration::from_secs(60)),
            Err(CaError::ForeignId { .. })
        ));
        assert!(matches!(
            ca.issue(&id("/a"), Duration::ZERO),
            Err(CaError::TtlTooShort)
        ));
    }

    #[test]
    fn survives_restart_and_keeps_files_private() {
        let dir = tempfile::tempdir().expect("tmp");
        let first = BuiltinCa::load_or_create(dir.path(), &td()).expect("ca");
        let svid = first
            .issue(&id("/w"), Duration::from_secs(600))
            .expect("issue");
        drop(first);
        let second = BuiltinCa::load_or_create(dir.path(), &td()).expect("reload");
        let bundles = second.trust().bundle_set().expect("bundles");
        svid::validate(
            &svid.chain[0],
            &[],
            &bundles,
            UnixTime::now(),
            Usage::Client,
        )
        .expect("SVID from before the restart still validates");
        assert_eq!(mode(&dir.path().join("ca/ca.key")), 0o600);
        assert_eq!(mode(&dir.path().join("ca")), 0o700);
        let other = TrustDomain::new("other.org").expect("td");
        assert!(matches!(
            BuiltinCa::load_or_create(dir.path(), &other),
            Err(CaError::WrongTrustDomain { .. })
        ));
    }

    #[test]
    fn a_damaged_ca_is_an_error_not_a_new_root() {
        let dir = tempfile::tempdir().expect("tmp");
        BuiltinCa::load_or_create(dir.path(), &td()).expect("ca");
        // A key that does not belong to the certificate.
        let stranger = KeyPair::generate().expect("key");
        write_private(
            &dir.path().join("ca/ca.key"),
            stranger.serialize_pem().as_bytes(),
        )
        .expect("write");
        let err = BuiltinCa::load_or_create(dir.path(), &td()).expect_err("mismatch");
        assert!(matches!(err, CaError::Corrupt { .. }), "{err}");
        std::fs::remove_file(dir.path().join("ca/ca.crt")).expect("rm");
        let err = BuiltinCa::load_or_create(dir.path(), &td()).expect_err("missing cert");
        assert!(matches!(err, CaError::Io { .. }), "{err}");
    }

    #[test]
    fn federated_bundles_are_published_and_own_domain_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = BuiltinCa::load_or_create(dir.path(), &td()).expect("ca");
        let other_dir = tempfile::tempdir().expect("tmp");
        let other_td = TrustDomain::new("partner.org").expect("td");
        let other = BuiltinCa::load_or_create(other_dir.path(), &other_td).expect("ca");
        let mut rx = ca.watch_trust();
        let mut map = BTreeMap::new();
        map.insert(other_td.clone(), other.bundle());
        ca.set_federated_bundles(map).expect("federate");
        assert!(rx.has_changed().expect("open"));
        let trust = rx.borrow_and_update().clone();
        assert_eq!(trust.federated.get(&other_td), Some(&other.bundle()));
        let mut own = BTreeMap::new();
        own.insert(td(), other.bundle());
        assert!(matches!(
            ca.set_federated_bundles(own),
            Err(CaError::FederateSelf(_))
        ));
    }
}
