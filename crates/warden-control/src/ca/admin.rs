//! The admin CLI's credential in `data_dir/admin/`: `tls.crt`, `tls.key`, `ca.crt` for the
//! first configured admin, long-lived, re-issued at start once past half-life.
//!
//! It must never leave a key file readable by others, nor keep a credential that no longer
//! validates against the CA or names another admin.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use warden_identity::SpiffeId;
use warden_identity::svid::{self, Usage};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use super::files::{create_private_dir, write_private};
use super::{
    ADMIN_CREDENTIAL_TTL, ADMIN_DIR, BuiltinCa, CaError, IssuedSvid, io_err, to_system_time,
};

/// Whether [`BuiltinCa::ensure_admin_credential`] had to write anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCredentialStatus {
    Created,
    Reused,
    Reissued { reason: String },
}

impl BuiltinCa {
    /// Writes `tls.crt` (PEM chain), `tls.key` (PEM PKCS#8) and `ca.crt` (PEM bundle) for `id`
    /// into `dir`, valid for [`ADMIN_CREDENTIAL_TTL`], every file 0600 and renamed into place.
    /// Unconditional; at start-up [`Self::ensure_admin_credential`] is usually what is wanted.
    pub fn write_admin_credential(&self, dir: &Path, id: &SpiffeId) -> Result<IssuedSvid, CaError> {
        self.write_credential(dir, id, ADMIN_CREDENTIAL_TTL)
    }

    fn write_credential(
        &self,
        dir: &Path,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedSvid, CaError> {
        let (svid, cert, key) = self.sign_leaf(id, ttl)?;
        create_private_dir(dir)?;
        write_private(&dir.join("ca.crt"), self.cert_pem.as_bytes())?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        write_private(&dir.join("tls.key"), key_pem.as_bytes())?;
        write_private(&dir.join("tls.crt"), cert.pem().as_bytes())?;
        tracing::info!(spiffe_id = %id, dir = %dir.display(), expires = %humantime::format_rfc3339_seconds(svid.not_after), "admin credential written");
        Ok(svid)
    }

    /// Keeps the admin credential in `data_dir/admin/` usable: writes it when absent, and
    /// re-issues it when it is for another ID, does not validate against this CA, or is past
    /// half of its lifetime (so the CLI never starts with a credential about to expire).
    pub fn ensure_admin_credential(
        &self,
        data_dir: &Path,
        id: &SpiffeId,
    ) -> Result<AdminCredentialStatus, CaError> {
        let dir = data_dir.join(ADMIN_DIR);
        let cert_path = dir.join("tls.crt");
        let status = match std::fs::read(&cert_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => AdminCredentialStatus::Created,
            Err(e) => return Err(io_err(&cert_path)(e)),
            Ok(pem) => match self.admin_credential_problem(&dir, &pem, id) {
                None => return Ok(AdminCredentialStatus::Reused),
                Some(reason) => AdminCredentialStatus::Reissued { reason },
            },
        };
        self.write_admin_credential(&dir, id)?;
        Ok(status)
    }

    /// Why the existing admin credential must be replaced, if it must.
    fn admin_credential_problem(&self, dir: &Path, pem: &[u8], id: &SpiffeId) -> Option<String> {
        let chain = match CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>() {
            Ok(chain) if !chain.is_empty() => chain,
            _ => return Some("tls.crt holds no PEM certificate".into()),
        };
        if !dir.join("tls.key").exists() {
            return Some("tls.key is missing".into());
        }
        let bundles = match self.trust().bundle_set() {
            Ok(b) => b,
            Err(e) => return Some(e.to_string()),
        };
        match svid::validate(
            &chain[0],
            &chain[1..],
            &bundles,
            UnixTime::now(),
            Usage::Client,
        ) {
            Ok(found) if &found == id => {}
            Ok(found) => return Some(format!("it is for {found}, not {id}")),
            Err(e) => return Some(format!("it does not validate: {e}")),
        }
        let (_, x509) = X509Certificate::from_der(&chain[0]).ok()?;
        let nb = to_system_time(x509.validity().not_before);
        let na = to_system_time(x509.validity().not_after);
        let half = nb + na.duration_since(nb).unwrap_or_default() / 2;
        (SystemTime::now() >= half).then(|| "past half of its lifetime".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{id, mode, td};
    use super::*;

    #[test]
    fn admin_credential_is_written_reused_and_reissued() {
        let dir = tempfile::tempdir().expect("tmp");
        let ca = BuiltinCa::load_or_create(dir.path(), &td()).expect("ca");
        let admin = id("/warden/admin");
        assert_eq!(
            ca.ensure_admin_credential(dir.path(), &admin)
                .expect("create"),
            AdminCredentialStatus::Created
        );
        let admin_dir = dir.path().join(ADMIN_DIR);
        for f in ["tls.crt", "tls.key", "ca.crt"] {
            assert_eq!(mode(&admin_dir.join(f)), 0o600, "{f}");
        }
        let files = warden_identity::FilesSource::new(
            admin_dir.join("tls.crt"),
            admin_dir.join("tls.key"),
            admin_dir.join("ca.crt"),
        );
        assert_eq!(files.load().expect("valid files").spiffe_id(), &admin);
        assert_eq!(
            ca.ensure_admin_credential(dir.path(), &admin)
                .expect("reuse"),
            AdminCredentialStatus::Reused
        );
        // Another admin ID configured: re-issued for the new one.
        let status = ca
            .ensure_admin_credential(dir.path(), &id("/warden/ops"))
            .expect("reissue");
        assert!(matches!(status, AdminCredentialStatus::Reissued { .. }));
        // Past half-life: a 2 s credential is already past it once 1 s (+ backdate) passed;
        // the backdate alone puts a fresh one at 1/3 of its lifetime.
        ca.write_credential(&admin_dir, &admin, Duration::from_secs(2))
            .expect("short");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match ca
                .ensure_admin_credential(dir.path(), &admin)
                .expect("ensure")
            {
                AdminCredentialStatus::Reissued { .. } => break,
                AdminCredentialStatus::Reused => {
                    assert!(std::time::Instant::now() < deadline, "never re-issued");
                    std::thread::sleep(Duration::from_millis(50));
                }
                AdminCredentialStatus::Created => panic!("credential vanished"),
            }
        }
    }
}
