//! Validation of the `[[jwt]]` sections: the issuers of end-user tokens (or of JWT-SVIDs)
//! this sidecar accepts, and where each one's keys come from. The validated form holds the
//! `warden_jwt::ValidatorConfig` the token checks run with, so nothing is re-interpreted
//! after this point.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use warden_jwt::{Algorithm, Issuer, ValidatorConfig};

use super::{ConfigError, IdentityConfig, Validator};

/// `jwks_refresh` unless configured.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);
/// A larger leeway would accept tokens expired that long ago.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);
/// `max_token_bytes` bounds: a real token is a few hundred bytes to a few KiB, and an HTTP
/// header larger than 64 KiB is refused before it gets here anyway.
pub const MIN_TOKEN_BYTES: usize = 512;
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
    name: String,
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    jwks_file: Option<PathBuf>,
    jwks_url: Option<String>,
    jwks_ca: Option<PathBuf>,
    jwks_refresh: Option<String>,
    spiffe: Option<bool>,
    algorithms: Option<Vec<String>>,
    leeway: Option<String>,
    max_token_bytes: Option<usize>,
}

/// One `[[jwt]]` issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// What routes name in `users = { jwt = "<name>" }`; the `issuer` metric label.
    pub name: String,
    /// The checks every token of this issuer must pass.
    pub validator: ValidatorConfig,
    pub keys: JwksSource,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `jwks_file`: read at start (unreadable or invalid = start-up error), re-read when it
    /// changes; an invalid new file keeps the keys in force.
    File(PathBuf),
    /// `jwks_url`: fetched over HTTPS, trusting only the CA certificates in `ca`; refreshed
    /// every `refresh` and, at most once per 30 s, when a token names an unknown `kid`.
    Url {
        url: String,
        ca: PathBuf,
        refresh: Duration,
    },
    /// `spiffe = true`: JWT-SVIDs, with each trust domain's keys from the Workload API's
    /// `FetchJWTBundles` stream on the same socket as the SVIDs.
    Spiffe,
}

impl Validator<'_> {
    pub(super) fn jwt(
        &self,
        raw: Vec<RawJwt>,
        identity: &IdentityConfig,
    ) -> Result<Vec<JwtConfig>, ConfigError> {
        let mut names: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for (i, j) in raw.into_iter().enumerate() {
            let k = |f: &str| format!("jwt[{i}].{f}");
            if let Err(e) = warden_policy::ListenerName::parse(&j.name) {
                return Err(self.e(k("name"), format!("{:?}: {e}", j.name)));
            }
            if names.contains(&j.name) {
                return Err(self.e(
                    k("name"),
                    format!("{:?} is used by another [[jwt]]", j.name),
                ));
            }
            names.push(j.name.clone());
            let spiffe = j.spiffe == Some(true);
            let keys = self.jwks_source(&j, spiffe, identity, &k)?;
            let issuer = match (&j.issuer, spiffe) {
                (Some(_), true) => {
                    return Err(self.e(
                        k("issuer"),
                        "is not used with spiffe = true: a JWT-SVID has no fixed issuer; its \
                         sub (a SPIFFE ID) picks the trust domain whose keys must have signed it",
                    ));
                }
                (None, true) => Issuer::JwtSvid,
                (Some(iss), false) if !iss.is_empty() => Issuer::Exact(iss.clone()),
                (Some(_), false) => return Err(self.e(k("issuer"), "must not be empty")),
                (None, false) => {
                    return Err(self.e(
                        k("issuer"),
                        "is missing: the exact `iss` of the tokens, like \"https://idp.example.com\"",
                    ));
                }
            };
            let audiences = self.audiences(j.audiences, &k)?;
            let algorithms = self.algorithms(j.algorithms, spiffe, &k)?;
            let leeway = match &j.leeway {
                None => ValidatorConfig::DEFAULT_LEEWAY,
                Some(text) => match warden_config::parse_duration(text) {
                    Ok(d) if d > MAX_LEEWAY => {
                        return Err(self.e(
                            k("leeway"),
                            "must be at most 5m: a token would be accepted that long after it expired",
                        ));
                    }
                    Ok(d) => d,
                    Err(p) => return Err(self.e(k("leeway"), p)),
                },
            };
            let max_token_bytes = match j.max_token_bytes {
                None => ValidatorConfig::DEFAULT_MAX_TOKEN_BYTES,
                Some(n) if (MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&n) => n,
                Some(n) => {
                    return Err(self.e(
                        k("max_token_bytes"),
                        format!("{n} is outside {MIN_TOKEN_BYTES}..={MAX_TOKEN_BYTES}"),
                    ));
                }
            };
            out.push(JwtConfig {
                name: j.name,
                validator: ValidatorConfig {
                    issuer,
                    audiences,
                    algorithms,
                    leeway,
                    max_token_bytes,
                },
                keys,
            });
        }
        Ok(out)
    }

    fn jwks_source(
        &self,
        j: &RawJwt,
        spiffe: bool,
        identity: &IdentityConfig,
        k: &dyn Fn(&str) -> String,
    ) -> Result<JwksSource, ConfigError> {
        let mut given: Vec<&str> = Vec::new();
        if j.jwks_file.is_some() {
            given.push("jwks_file");
        }
        if j.jwks_url.is_some() {
            given.push("jwks_url");
        }
        if spiffe {
            given.push("spiffe");
        }
        match given.as_slice() {
            [] => {
                return Err(self.e(
                    k("jwks_file"),
                    "is missing: set one of jwks_file, jwks_url or spiffe = true",
                ));
            }
            [_] => {}
            [first, second, ..] => {
                return Err(self.e(
                    k(second),
                    format!("{first} is set too: an issuer has exactly one key source"),
                ));
            }
        }
        if j.jwks_url.is_none() {
            for (key, set) in [
                ("jwks_ca", j.jwks_ca.is_some()),
                ("jwks_refresh", j.jwks_refresh.is_some()),
            ] {
                if set {
                    return Err(self.e(k(key), "is only used with jwks_url"));
                }
            }
        }
        if let Some(path) = &j.jwks_file {
            if path.as_os_str().is_empty() {
                return Err(self.e(k("jwks_file"), "must not be empty"));
            }
            return Ok(JwksSource::File(path.clone()));
        }
        if let Some(url) = &j.jwks_url {
            crate::jwks::check_https_url(url)
                .map_err(|p| self.e(k("jwks_url"), format!("{url:?}: {p}")))?;
            let ca = match &j.jwks_ca {
                Some(ca) if !ca.as_os_str().is_empty() => ca.clone(),
                _ => {
                    return Err(self.e(
                        k("jwks_ca"),
                        "is missing: the PEM CA certificates trusted for the JWKS server \
                         (for a public CA, the system bundle, e.g. /etc/ssl/certs/ca-certificates.crt)",
                    ));
                }
            };
            let refresh = self.at.duration(
                &k("jwks_refresh"),
                j.jwks_refresh.as_deref(),
                DEFAULT_JWKS_REFRESH,
                Duration::from_secs(1),
            )?;
            return Ok(JwksSource::Url {
                url: url.clone(),
                ca,
                refresh,
            });
        }
        if !matches!(identity, IdentityConfig::WorkloadApi { .. }) {
            return Err(self.e(
                k("spiffe"),
                "needs [identity] source = \"workload-api\": the JWT bundles come from the same Workload API",
            ));
        }
        Ok(JwksSource::Spiffe)
    }

    fn audiences(
        &self,
        raw: Option<Vec<String>>,
        k: &dyn Fn(&str) -> String,
    ) -> Result<Vec<String>, ConfigError> {
        let audiences = raw.unwrap_or_default();
        if audiences.is_empty() {
            return Err(self.e(
                k("audiences"),
                "is missing or empty: a token must name one of these in its aud claim",
            ));
        }
        for (n, a) in audiences.iter().enumerate() {
            if a.is_empty() {
                return Err(self.e(format!("{}[{n}]", k("audiences")), "must not be empty"));
            }
            if audiences[..n].contains(a) {
                return Err(self.e(
                    format!("{}[{n}]", k("audiences")),
                    format!("{a:?} is listed twice"),
                ));
            }
        }
        Ok(audiences)
    }

    fn algorithms(
        &self,
        raw: Option<Vec<String>>,
        spiffe: bool,
        k: &dyn Fn(&str) -> String,
    ) -> Result<Vec<Algorithm>, ConfigError> {
        let Some(names) = raw else {
            return Ok(if spiffe {
                Algorithm::JWT_SVID.to_vec()
            } else {
                Algorithm::DEFAULT.to_vec()
            });
        };
        if names.is_empty() {
            return Err(self.e(
                k("algorithms"),
                "must not be empty (omit it for the default list)",
            ));
        }
        let mut algs = Vec::new();
        for (n, name) in names.iter().enumerate() {
            let key = format!("{}[{n}]", k("algorithms"));
            let alg = Algorithm::parse(name).map_err(|e| self.e(key.clone(), e.to_string()))?;
            if spiffe && !Algorithm::JWT_SVID.contains(&alg) {
                return Err(self.e(key, format!("{alg} is not a JWT-SVID algorithm")));
            }
            if algs.contains(&alg) {
                return Err(self.e(key, format!("{alg} is listed twice")));
            }
            algs.push(alg);
        }
        Ok(algs)
    }
}

#[cfg(test)]
mod tests {
    use super::super::SidecarConfig;
    use super::*;

    const BASE: &str = "trust_domain = \"example.org\"\n[identity]\nsource = \"workload-api\"\n[[inbound]]\nname = \"h\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\n";
    const FILES: &str = "trust_domain = \"example.org\"\n[identity]\nsource = \"files\"\ncert = \"c\"\nkey = \"k\"\nbundle = \"b\"\n[[inbound]]\nname = \"h\"\nlisten = \"127.0.0.1:0\"\nforward = \"127.0.0.1:1\"\n";

    fn parse(jwt: &str) -> Result<SidecarConfig, ConfigError> {
        SidecarConfig::from_toml("f.toml", &format!("{BASE}{jwt}"))
    }

    #[test]
    fn the_three_key_sources_and_their_defaults() {
        let c = parse(
            "[[jwt]]\nname = \"corp-idp\"\nissuer = \"https://idp.example.com\"\naudiences = [\"rag\"]\njwks_file = \"/etc/warden/jwks.json\"\n\
             [[jwt]]\nname = \"url\"\nissuer = \"https://idp.example.com\"\naudiences = [\"rag\", \"x\"]\njwks_url = \"https://idp.example.com/keys\"\njwks_ca = \"/ca.pem\"\nalgorithms = [\"ES256\"]\nleeway = \"0s\"\nmax_token_bytes = 4096\n\
             [[jwt]]\nname = \"svid\"\naudiences = [\"spiffe://example.org/rag\"]\nspiffe = true\n",
        )
        .expect("valid");
        assert_eq!(c.jwt.len(), 3);
        assert_eq!(c.jwt[0].name, "corp-idp");
        assert_eq!(
            c.jwt[0].validator,
            ValidatorConfig::new("https://idp.example.com", vec!["rag".into()])
        );
        assert_eq!(
            c.jwt[0].keys,
            JwksSource::File("/etc/warden/jwks.json".into())
        );
        assert_eq!(
            c.jwt[1].keys,
            JwksSource::Url {
                url: "https://idp.example.com/keys".into(),
                ca: "/ca.pem".into(),
                refresh: DEFAULT_JWKS_REFRESH,
            }
        );
        assert_eq!(c.jwt[1].validator.algorithms, [Algorithm::Es256]);
        assert_eq!(c.jwt[1].validator.leeway, Duration::ZERO);
        assert_eq!(c.jwt[1].validator.max_token_bytes, 4096);
        assert_eq!(c.jwt[2].keys, JwksSource::Spiffe);
        assert_eq!(
            c.jwt[2].validator,
            ValidatorConfig::jwt_svid(vec!["spiffe://example.org/rag".into()])
        );
        assert!(parse("").expect("valid").jwt.is_empty());
    }

    #[test]
    fn every_mistake_names_its_key() {
        let ok = "name = \"i\"\nissuer = \"https://i\"\naudiences = [\"a\"]\n";
        let cases: &[(&str, &str, &str)] = &[
            (
                "name = \"i\"\nissuer = \"https://i\"\naudiences = [\"a\"]\n",
                "jwt[0].jwks_file",
                "one of",
            ),
            (
                &format!("{ok}jwks_file = \"f\"\njwks_url = \"https://x/k\"\n"),
                "jwt[0].jwks_url",
                "exactly one",
            ),
            (
                &format!("{ok}jwks_file = \"f\"\nspiffe = true\n"),
                "jwt[0].spiffe",
                "exactly one",
            ),
            (
                &format!("{ok}jwks_url = \"http://x/k\"\njwks_ca = \"c\"\n"),
                "jwt[0].jwks_url",
                "https",
            ),
            (
                &format!("{ok}jwks_url = \"https://u@x/k\"\njwks_ca = \"c\"\n"),
                "jwt[0].jwks_url",
                "user info",
            ),
            (
                &format!("{ok}jwks_url = \"https://x/k\"\n"),
                "jwt[0].jwks_ca",
                "missing",
            ),
            (
                &format!("{ok}jwks_file = \"f\"\njwks_refresh = \"1m\"\n"),
                "jwt[0].jwks_refresh",
                "only",
            ),
            (
                &format!(
                    "{ok}jwks_url = \"https://x/k\"\njwks_ca = \"c\"\njwks_refresh = \"0s\"\n"
                ),
                "jwt[0].jwks_refresh",
                "zero",
            ),
            (
                "name = \"i\"\naudiences = [\"a\"]\njwks_file = \"f\"\n",
                "jwt[0].issuer",
                "missing",
            ),
            (
                "name = \"i\"\nissuer = \"\"\naudiences = [\"a\"]\njwks_file = \"f\"\n",
                "jwt[0].issuer",
                "empty",
            ),
            (
                "name = \"i\"\nissuer = \"x\"\naudiences = [\"a\"]\nspiffe = true\n",
                "jwt[0].issuer",
                "not used",
            ),
            (
                "name = \"i\"\nissuer = \"x\"\njwks_file = \"f\"\n",
                "jwt[0].audiences",
                "missing",
            ),
            (
                "name = \"i\"\nissuer = \"x\"\naudiences = []\njwks_file = \"f\"\n",
                "jwt[0].audiences",
                "empty",
            ),
            (
                "name = \"i\"\nissuer = \"x\"\naudiences = [\"a\", \"a\"]\njwks_file = \"f\"\n",
                "jwt[0].audiences[1]",
                "twice",
            ),
            (
                &format!("{ok}jwks_file = \"f\"\nalgorithms = [\"HS256\"]\n"),
                "jwt[0].algorithms[0]",
                "never accepted",
            ),
            (
                &format!("{ok}jwks_file = \"f\"\nalgorithms = [\"RS256\", \"none\"]\n"),
                "jwt[0].algorithms[1]",
                "never accepted",
            ),
            (
                &format!("{ok}jwks_file = \"f\"\nalgorithms = [\"RSA1_5\"]\n"),
                "jwt[0].algorithms[0]",
                "not a supported",
            ),
            (
                &format!("{ok}jwks_file = \"f\"\nalgorithms = []\n"),
                "jwt[0].algorithms",
                "empty",
            ),
            (
                "name = \"i\"\naudiences = [\"a\"]\nspiffe = true\nalgorithms = [\"EdDSA\"]\n",
                "jwt[0].algorithms[0]",
                "JWT-SVID",
            ),
            (
                &format!("{ok}jwks_file = \"f\"\nleeway = \"10m\"\n"),
                "jwt[0].leeway",
                "at most",
            ),
            (
                &format!("{ok}jwks_file = \"f\"\nleeway = \"soon\"\n"),
                "jwt[0].leeway",
                "duration",
            ),
            (
                &format!("{ok}jwks_file = \"f\"\nmax_token_bytes = 1048576\n"),
                "jwt[0].max_token_bytes",
                "outside",
            ),
            (
                &format!("{ok}jwks_file = \"f\"\nsecret = \"k\"\n"),
                "jwt[0]",
                "unknown field",
            ),
            (
                "name = \"bad name!\"\nissuer = \"x\"\naudiences = [\"a\"]\njwks_file = \"f\"\n",
                "jwt[0].name",
                "",
            ),
        ];
        for (section, key, problem) in cases {
            let e = parse(&format!("[[jwt]]\n{section}")).expect_err(section);
            assert!(e.key.starts_with(key), "{section}: key {} ({e})", e.key);
            assert!(e.problem.contains(problem), "{section}: {e}");
        }
        let twice = format!("[[jwt]]\n{ok}jwks_file = \"f\"\n[[jwt]]\n{ok}jwks_file = \"g\"\n");
        let e = parse(&twice).expect_err("duplicate name");
        assert_eq!(e.key, "jwt[1].name", "{e}");
    }

    #[test]
    fn spiffe_keys_need_the_workload_api() {
        let e = SidecarConfig::from_toml(
            "f.toml",
            &format!("{FILES}[[jwt]]\nname = \"s\"\naudiences = [\"a\"]\nspiffe = true\n"),
        )
        .expect_err("files identity");
        assert_eq!(e.key, "jwt[0].spiffe", "{e}");
        assert!(e.problem.contains("workload-api"), "{e}");
    }
}
