//! Certificates made at test time with rcgen: one CA per trust domain, SVIDs with knobs for
//! every way a certificate can be wrong.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::Path;
use std::sync::Arc;
use time::{Duration, OffsetDateTime};
use warden_identity::{Bundle, BundleSet, Identity, TrustDomain};

pub struct Ca {
    pub trust_domain: String,
    params: CertificateParams,
    key: KeyPair,
    pub cert: CertificateDer<'static>,
    /// For an intermediate: itself and the intermediates above it (the root excluded), as
    /// an SVID it issues presents them after the leaf.
    above: Vec<CertificateDer<'static>>,
}

/// How to make a leaf; `Default` is a valid SVID.
#[derive(Clone)]
pub struct LeafSpec {
    pub uris: Vec<String>,
    pub is_ca: bool,
    pub expired: bool,
    pub key_usage: Vec<KeyUsagePurpose>,
    pub eku: Vec<ExtendedKeyUsagePurpose>,
    pub lifetime: Duration,
}

impl LeafSpec {
    pub fn id(id: &str) -> Self {
        Self {
            uris: vec![id.to_owned()],
            is_ca: false,
            expired: false,
            key_usage: vec![KeyUsagePurpose::DigitalSignature],
            eku: vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            lifetime: Duration::hours(1),
        }
    }
}

pub struct Svid {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl Svid {
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

impl Ca {
    pub fn new(trust_domain: &str) -> Self {
        Self::root_with_key_usage(
            trust_domain,
            vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ],
        )
    }

    /// A root CA (cA=true) with the given keyUsage bits (empty: no keyUsage extension).
    pub fn root_with_key_usage(trust_domain: &str, key_usages: Vec<KeyUsagePurpose>) -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = key_usages;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{trust_domain} test CA"));
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}").try_into().expect("uri"),
        )];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(1);
        let cert = params.self_signed(&key).expect("self-sign CA");
        Self {
            trust_domain: trust_domain.to_owned(),
            cert: cert.der().clone(),
            params,
            key,
            above: Vec::new(),
        }
    }

    /// An intermediate CA (cA=true) issued by this CA, with the given keyUsage bits (empty:
    /// no keyUsage extension). SVIDs it issues carry it in their chain; bundles still take
    /// the root.
    pub fn intermediate(&self, name: &str, key_usages: Vec<KeyUsagePurpose>) -> Self {
        let key = KeyPair::generate().expect("generate intermediate key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = key_usages;
        params.use_authority_key_identifier_extension = true;
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{}", self.trust_domain)
                .try_into()
                .expect("uri"),
        )];
        params.not_before = OffsetDateTime::now_utc() - Duration::hours(1);
        params.not_after = OffsetDateTime::now_utc() + Duration::days(1);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign intermediate");
        let mut above = vec![cert.der().clone()];
        above.extend(self.above.iter().cloned());
        Self {
            trust_domain: self.trust_domain.clone(),
            cert: cert.der().clone(),
            params,
            key,
            above,
        }
    }

    pub fn issue(&self, spec: &LeafSpec) -> Svid {
        let key = KeyPair::generate().expect("generate leaf key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = spec
            .uris
            .iter()
            .map(|u| SanType::URI(u.clone().try_into().expect("uri")))
            .collect();
        params.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            // basicConstraints cA=false, present as SPIRE writes it (some clients, the
            // `spiffe` crate among them, refuse a leaf without it).
            IsCa::ExplicitNoCa
        };
        params.key_usages = spec.key_usage.clone();
        params.extended_key_usages = spec.eku.clone();
        params.use_authority_key_identifier_extension = true;
        if spec.expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2020, 1, 2);
        } else {
            params.not_before = OffsetDateTime::now_utc() - Duration::minutes(5);
            params.not_after = OffsetDateTime::now_utc() + spec.lifetime;
        }
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.above.iter().cloned());
        Svid {
            chain,
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    pub fn svid(&self, id: &str) -> Svid {
        self.issue(&LeafSpec::id(id))
    }

    pub fn bundles(cas: &[&Ca]) -> BundleSet {
        BundleSet::new(cas.iter().map(|ca| {
            let td = TrustDomain::new(&ca.trust_domain).expect("td");
            let bundle = Bundle::new(&td, vec![ca.cert.clone()]).expect("bundle");
            (td, bundle)
        }))
    }

    /// A full identity for `id`, trusting this CA (and `also`).
    pub fn identity(&self, id: &str, also: &[&Ca]) -> Arc<Identity> {
        let svid = self.svid(id);
        let mut cas = vec![self];
        cas.extend_from_slice(also);
        Arc::new(
            Identity::from_der(svid.chain.clone(), svid.key_der(), Self::bundles(&cas))
                .expect("identity"),
        )
    }

    /// Writes `tls.crt`, `tls.key` (0600) and `ca.crt` into `dir`, replacing them atomically.
    pub fn write_files(&self, svid: &Svid, dir: &Path) {
        let pem = |label: &str, der: &[u8]| pem_encode(label, der);
        let chain: String = svid.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
        write_atomic(&dir.join("tls.crt"), chain.as_bytes());
        write_atomic(
            &dir.join("tls.key"),
            pem("PRIVATE KEY", self_key(svid)).as_bytes(),
        );
        write_atomic(
            &dir.join("ca.crt"),
            pem("CERTIFICATE", &self.cert).as_bytes(),
        );
    }
}

fn self_key(svid: &Svid) -> &[u8] {
    svid.key.secret_pkcs8_der()
}

fn write_atomic(path: &Path, data: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .expect("open tmp");
    std::io::Write::write_all(&mut f, data).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

pub fn pem_encode(label: &str, der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(TABLE[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
