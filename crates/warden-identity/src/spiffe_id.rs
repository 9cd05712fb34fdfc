//! SPIFFE IDs and trust domains, parsed and normalized per the SPIFFE-ID standard.
//!
//! A SPIFFE ID has the form `spiffe://<trust-domain><path>`. Everything that decides
//! whom Warden trusts keys on these values, so parsing is strict: no query, fragment,
//! port, userinfo or percent-encoding; the trust domain may only use `a-z 0-9 . - _`
//! and is at most 255 bytes; path segments may only use `a-z A-Z 0-9 . - _`, must not
//! be empty, `.` or `..`, and the path must not end with `/`; the whole ID is at most
//! 2048 bytes.
//!
//! Decision on case: ASCII uppercase letters in the scheme and the trust domain are
//! *accepted* and lowercased (`SPIFFE://Example.ORG/a` parses as
//! `spiffe://example.org/a`), as the standard asks parsers to do; the path keeps its
//! case because it is case-sensitive. After parsing, every value is normalized, so
//! comparing, hashing and ordering the normalized strings is the right identity test.
//!
//! Input is never trimmed: surrounding whitespace is an error, not something to guess
//! away. When an input has several problems, the first one from the left is reported,
//! except that userinfo wins over a port, since in `user:pw@td` the `:` is not a port.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

/// Longest SPIFFE ID, in bytes, that the standard requires implementations to accept.
pub const MAX_ID_LEN: usize = 2048;
/// Longest trust domain name, in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("the SPIFFE ID is empty")]
    Empty,
    #[error("the SPIFFE ID is {0} bytes long, but at most 2048 bytes are allowed")]
    TooLong(usize),
    #[error("a SPIFFE ID must start with \"spiffe://\"")]
    MissingScheme,
    #[error("the scheme of a SPIFFE ID must be \"spiffe\", not {0:?}")]
    WrongScheme(String),
    #[error("\"spiffe:\" must be followed by \"//\" and the trust domain")]
    MissingSlashes,
    #[error("the trust domain is missing (nothing follows \"spiffe://\")")]
    MissingTrustDomain,
    #[error(
        "the trust domain contains {0:?}, but only letters a-z, digits 0-9, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar(char),
    #[error("the trust domain is {0} bytes long, but at most 255 bytes are allowed")]
    TrustDomainTooLong(usize),
    #[error("a SPIFFE ID must not contain a port (found ':' in the trust domain)")]
    Port,
    #[error("a SPIFFE ID must not contain user information (found '@' in the trust domain)")]
    UserInfo,
    #[error("a SPIFFE ID must not contain a query (found '?')")]
    Query,
    #[error("a SPIFFE ID must not contain a fragment (found '#')")]
    Fragment,
    #[error("a SPIFFE ID must not contain percent-encoded characters (found '%')")]
    PercentEncoding,
    #[error("the path contains an empty segment (\"//\")")]
    EmptySegment,
    #[error("the path must not contain a {0:?} segment")]
    DotSegment(&'static str),
    #[error("the path must not end with '/'")]
    TrailingSlash,
    #[error(
        "the path contains {0:?}, but path segments may only contain letters, digits, '.', '-' and '_'"
    )]
    BadPathChar(char),
    #[error("a trust domain must not have a path")]
    UnexpectedPath,
}

/// A trust domain name such as `example.org`: validated, lowercase, without scheme.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Box<str>);

impl TrustDomain {
    /// Accepts a bare name (`example.org`) or a trust-domain ID (`spiffe://example.org`).
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        // Anything with a scheme goes through the ID parser, so `https://td` reports the
        // wrong scheme instead of a baffling "port" for its ':'.
        if name.contains("://") || starts_with_ignore_case(name, "spiffe:") {
            let id = SpiffeId::parse(name)?;
            if id.is_workload() {
                return Err(SpiffeIdError::UnexpectedPath);
            }
            return Ok(id.trust_domain());
        }
        let end = name.find(['/', '?', '#']).unwrap_or(name.len());
        let (td, rest) = name.split_at(end);
        check_trust_domain(td)?;
        match rest.bytes().next() {
            None => Ok(TrustDomain(td.to_ascii_lowercase().into_boxed_str())),
            Some(b'/') => Err(SpiffeIdError::UnexpectedPath),
            Some(b'?') => Err(SpiffeIdError::Query),
            Some(_) => Err(SpiffeIdError::Fragment),
        }
    }

    /// The name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, e.g. `spiffe://example.org` (the form the
    /// Workload API uses as bundle map key).
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }
}

// Sound only because the derived Hash/Eq/Ord of a single-field tuple struct delegate to
// the `str` itself; the HashMap test below guards this.
impl Borrow<str> for TrustDomain {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for TrustDomain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TrustDomain").field(&&*self.0).finish()
    }
}

/// A validated, normalized SPIFFE ID such as `spiffe://example.org/ns/a`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The full normalized ID; keeping one string makes `as_str` free and comparisons cheap.
    id: Box<str>,
    /// Byte offset in `id` where the path starts (`id.len()` for a trust-domain ID).
    /// Always an ASCII position, so slicing there cannot split a character.
    path_start: usize,
}

impl SpiffeId {
    /// Parses and normalizes (lowercase scheme and trust domain) a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        // Lowercasing keeps the length, so the input length is the normalized length.
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        if !starts_with_ignore_case(s, SCHEME_PREFIX) {
            return Err(scheme_error(s));
        }
        // The prefix just matched is ASCII, so this is a char boundary.
        let rest = &s[SCHEME_PREFIX.len()..];
        let td_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (td, rest) = rest.split_at(td_end);
        check_trust_domain(td)?;

        let path_end = rest.find(['?', '#']).unwrap_or(rest.len());
        let (path, tail) = rest.split_at(path_end);
        check_path(path)?;
        match tail.bytes().next() {
            None => {}
            Some(b'?') => return Err(SpiffeIdError::Query),
            Some(_) => return Err(SpiffeIdError::Fragment),
        }

        let mut id = String::with_capacity(s.len());
        id.push_str(SCHEME_PREFIX);
        id.extend(td.chars().map(|c| c.to_ascii_lowercase()));
        let path_start = id.len();
        id.push_str(path);
        Ok(SpiffeId {
            id: id.into_boxed_str(),
            path_start,
        })
    }

    /// The full normalized ID, e.g. `spiffe://example.org/ns/a`.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The trust domain name, e.g. `example.org`, borrowed from the ID.
    pub fn trust_domain_name(&self) -> &str {
        &self.id[SCHEME_PREFIX.len()..self.path_start]
    }

    /// The trust domain as an owned value.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().into())
    }

    /// The path, e.g. `/ns/a`, or `""` for a trust-domain ID.
    pub fn path(&self) -> &str {
        &self.id[self.path_start..]
    }

    /// The path segments without separators, e.g. `ns`, `a`; none for a trust-domain ID.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        // Every path starts with '/', so the first split item is always the empty
        // string before it (and for "" it is the only one).
        self.path().split('/').skip(1)
    }

    /// True for a workload ID (non-empty path), false for a trust-domain ID.
    pub fn is_workload(&self) -> bool {
        self.path_start < self.id.len()
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SpiffeId").field(&&*self.id).finish()
    }
}

/// Byte-wise so it cannot panic on a prefix that ends inside a multi-byte character.
fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Explains an input that does not start with `spiffe://` as precisely as possible.
fn scheme_error(s: &str) -> SpiffeIdError {
    if starts_with_ignore_case(s, "spiffe:") {
        return SpiffeIdError::MissingSlashes;
    }
    // Only call something a scheme if it is followed by "://"; otherwise `td:8080/a`
    // would be reported as having the scheme "td".
    if let Some((scheme, _)) = s.split_once("://")
        && !scheme.is_empty()
        && !scheme.contains(['/', '?', '#', '@'])
    {
        return SpiffeIdError::WrongScheme(scheme.to_owned());
    }
    SpiffeIdError::MissingScheme
}

/// Validates a trust domain name as it appears in the input (uppercase still allowed).
fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    // Before the character scan: in `user:pw@td` the ':' would otherwise be blamed as a port.
    if td.contains('@') {
        return Err(SpiffeIdError::UserInfo);
    }
    for c in td.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' => return Err(SpiffeIdError::Port),
            '%' => return Err(SpiffeIdError::PercentEncoding),
            other => return Err(SpiffeIdError::BadTrustDomainChar(other)),
        }
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    Ok(())
}

/// Validates a path that is either empty or starts with '/' and holds no '?' or '#'.
fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        if segment.is_empty() {
            return Err(if segments.peek().is_none() {
                SpiffeIdError::TrailingSlash
            } else {
                SpiffeIdError::EmptySegment
            });
        }
        for c in segment.chars() {
            match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => {}
                '%' => return Err(SpiffeIdError::PercentEncoding),
                other => return Err(SpiffeIdError::BadPathChar(other)),
            }
        }
        match segment {
            "." => return Err(SpiffeIdError::DotSegment(".")),
            ".." => return Err(SpiffeIdError::DotSegment("..")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use SpiffeIdError as E;
    use std::collections::{BTreeSet, HashMap};

    #[test]
    fn valid_ids_normalize() {
        // (input, trust domain, path); the normalized ID is "spiffe://" + domain + path.
        let cases = [
            ("spiffe://td", "td", ""),
            ("spiffe://example.org/ns/a", "example.org", "/ns/a"),
            ("spiffe://TD/a", "td", "/a"), // the SPIFFE-NOTES example: accepted, lowercased
            ("SPIFFE://Example.ORG/Ns/A", "example.org", "/Ns/A"),
            ("SpIfFe://TD", "td", ""),
            ("spiffe://a-b_c.9/x.y-z_0/...", "a-b_c.9", "/x.y-z_0/..."),
            ("spiffe://td/.a/a./..b", "td", "/.a/a./..b"),
        ];
        for (input, td, path) in cases {
            let norm = format!("spiffe://{td}{path}");
            let norm = norm.as_str();
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.as_str(), norm, "{input}");
            assert_eq!(id.to_string(), norm, "{input}");
            assert_eq!(id.as_ref(), norm, "{input}");
            assert_eq!(id.trust_domain_name(), td, "{input}");
            assert_eq!(id.trust_domain().as_str(), td, "{input}");
            assert_eq!(id.path(), path, "{input}");
            assert_eq!(id.is_workload(), !path.is_empty(), "{input}");
            assert_eq!(input.parse::<SpiffeId>().as_ref(), Ok(&id), "{input}");
            assert_eq!(SpiffeId::parse(norm).as_ref(), Ok(&id), "re-parse {input}");
        }
    }

    #[test]
    fn invalid_ids_report_specific_errors() {
        let cases: &[(&str, SpiffeIdError)] = &[
            // The examples from SPIFFE-NOTES.md.
            ("spiffe://", E::MissingTrustDomain),
            ("spiffe://td/", E::TrailingSlash),
            ("spiffe://td//a", E::EmptySegment),
            ("spiffe://td/./a", E::DotSegment(".")),
            ("spiffe://td/a/..", E::DotSegment("..")),
            ("spiffe://td:8080/a", E::Port),
            ("spiffe://user:pw@td/a", E::UserInfo),
            ("spiffe://td/a?x=1", E::Query),
            ("spiffe://td/a#f", E::Fragment),
            ("https://td/a", E::WrongScheme("https".into())),
            // Further cases.
            ("", E::Empty),
            ("td/a", E::MissingScheme),
            ("td:8080/a", E::MissingScheme),
            // The quoted scheme in the message makes the stray space visible.
            (" spiffe://td/a", E::WrongScheme(" spiffe".into())),
            ("://td/a", E::MissingScheme),
            ("spiffe", E::MissingScheme),
            ("spiffe:td/a", E::MissingSlashes),
            ("Spiffe:/td/a", E::MissingSlashes),
            ("spiffe:///a", E::MissingTrustDomain),
            ("spiffe://?x", E::MissingTrustDomain),
            ("spiffe://user@td", E::UserInfo),
            ("spiffe://td:/a", E::Port),
            ("spiffe://[::1]/a", E::BadTrustDomainChar('[')),
            ("spiffe://t d/a", E::BadTrustDomainChar(' ')),
            ("spiffe://td /a", E::BadTrustDomainChar(' ')),
            ("spiffe://t%64/a", E::PercentEncoding),
            ("spiffe://td/a%20b", E::PercentEncoding),
            ("spiffe://td?x=1", E::Query),
            ("spiffe://td#f", E::Fragment),
            ("spiffe://td/a?x#f", E::Query),
            ("spiffe://td/a#f?x", E::Fragment),
            ("spiffe://td/.", E::DotSegment(".")),
            ("spiffe://td/..", E::DotSegment("..")),
            ("spiffe://td/a/../b", E::DotSegment("..")),
            ("spiffe://td/a/", E::TrailingSlash),
            ("spiffe://td/a//", E::EmptySegment),
            ("spiffe://td/a/?x", E::TrailingSlash),
            ("spiffe://td/a:b", E::BadPathChar(':')),
            ("spiffe://td/a@b", E::BadPathChar('@')),
            ("spiffe://td/a b", E::BadPathChar(' ')),
            ("spiffe://td/a\\b", E::BadPathChar('\\')),
            ("spiffe://td/a\n", E::BadPathChar('\n')),
            ("spiffe://td/a\0", E::BadPathChar('\0')),
            ("spiffe://td/a b?x", E::BadPathChar(' ')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).as_ref(), Err(want), "{input:?}");
            assert_eq!(input.parse::<SpiffeId>().as_ref(), Err(want), "{input:?}");
        }
    }

    #[test]
    fn multi_byte_input_names_the_character() {
        let cases: &[(&str, SpiffeIdError)] = &[
            ("spiffe://exämple.org/a", E::BadTrustDomainChar('ä')),
            ("spiffe://td/caf\u{e9}", E::BadPathChar('é')),
            ("spiffe://td/a/\u{1F496}", E::BadPathChar('\u{1F496}')),
            ("spiffe://td/a\u{200B}", E::BadPathChar('\u{200B}')),
            ("spiffe://\u{212A}/a", E::BadTrustDomainChar('\u{212A}')), // Kelvin sign
            ("spïffe://td/a", E::WrongScheme("spïffe".into())),
            ("spiffé://td/a", E::WrongScheme("spiffé".into())),
            ("\u{1F496}", E::MissingScheme),
            ("spiff\u{e9}", E::MissingScheme),
            ("sp\u{1F496}", E::MissingScheme),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).as_ref(), Err(want), "{input:?}");
        }
        let msg = SpiffeId::parse("spiffe://td/caf\u{e9}")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("'é'"), "{msg}");
    }

    #[test]
    fn never_panics_on_mangled_input() {
        let bases = [
            "spiffe://example.org/ns/a",
            "spiffe://td",
            "SPIFFE://TD/A",
            "https://td/a",
        ];
        let inserts = "é|\u{1F496}|%|:|@|/|//|.|..|?|#|\0|A| ".split('|');
        let mut checked = 0;
        for base in bases {
            let cuts = base.char_indices().map(|(i, _)| i).chain([base.len()]);
            for at in cuts {
                for ins in inserts.clone() {
                    let input = format!("{}{ins}{}", &base[..at], &base[at..]);
                    for candidate in [input.as_str(), &base[..at]] {
                        checked += 1;
                        if let Ok(id) = SpiffeId::parse(candidate) {
                            assert_eq!(SpiffeId::parse(id.as_str()).as_ref(), Ok(&id));
                            assert_eq!(
                                id.as_str(),
                                format!("spiffe://{}{}", id.trust_domain_name(), id.path())
                            );
                        }
                        let _ = TrustDomain::new(candidate);
                    }
                }
            }
        }
        assert!(checked > 500);
    }

    #[test]
    fn id_length_limit_is_2048_bytes() {
        let prefix = "spiffe://td/";
        let at_limit = format!("{prefix}{}", "a".repeat(MAX_ID_LEN - prefix.len()));
        assert_eq!(at_limit.len(), 2048);
        let id = SpiffeId::parse(&at_limit).expect("2048 bytes must be accepted");
        assert_eq!(id.as_str().len(), 2048);

        let over = format!("{at_limit}a");
        assert_eq!(SpiffeId::parse(&over), Err(E::TooLong(2049)));

        // Multi-byte characters count in bytes, and the limit check must not slice them.
        let multi = format!("{prefix}{}", "é".repeat(1100));
        assert!(matches!(SpiffeId::parse(&multi), Err(E::TooLong(_))));
    }

    #[test]
    fn trust_domain_length_limit_is_255_bytes() {
        let at_limit = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        let id = SpiffeId::parse(&format!("spiffe://{at_limit}/x")).expect("255 bytes is fine");
        assert_eq!(id.trust_domain_name().len(), 255);
        assert_eq!(
            TrustDomain::new(&at_limit).map(|t| t.as_str().len()),
            Ok(255)
        );

        let over = "a".repeat(MAX_TRUST_DOMAIN_LEN + 1);
        assert_eq!(
            SpiffeId::parse(&format!("spiffe://{over}/x")),
            Err(E::TrustDomainTooLong(256))
        );
        assert_eq!(TrustDomain::new(&over), Err(E::TrustDomainTooLong(256)));
        assert_eq!(
            TrustDomain::new(&format!("spiffe://{over}")),
            Err(E::TrustDomainTooLong(256))
        );
    }

    #[test]
    fn trust_domain_only_id() {
        let id = SpiffeId::parse("spiffe://td").expect("valid");
        assert!(!id.is_workload());
        assert_eq!(id.path(), "");
        assert_eq!(id.segments().count(), 0);
        assert_eq!(id.trust_domain_name(), "td");
        assert_eq!(id.trust_domain().id_string(), id.as_str());
    }

    #[test]
    fn segments_split_the_path() {
        let id = SpiffeId::parse("spiffe://td/ns/Prod/sa/web.v1").expect("valid");
        assert!(id.is_workload());
        assert_eq!(
            id.segments().collect::<Vec<_>>(),
            ["ns", "Prod", "sa", "web.v1"]
        );
        let one = SpiffeId::parse("spiffe://td/a").expect("valid");
        assert_eq!(one.segments().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn trust_domain_new_accepts_both_forms() {
        for input in [
            "example.org",
            "spiffe://example.org",
            "Example.ORG",
            "SPIFFE://EXAMPLE.org",
        ] {
            let td = TrustDomain::new(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(td.as_str(), "example.org");
            assert_eq!(td.to_string(), "example.org");
            assert_eq!(td.id_string(), "spiffe://example.org");
            assert_eq!(format!("{td:?}"), "TrustDomain(\"example.org\")");
            assert_eq!(input.parse::<TrustDomain>(), Ok(td));
        }
    }

    #[test]
    fn trust_domain_new_rejects() {
        let cases: &[(&str, SpiffeIdError)] = &[
            ("", E::MissingTrustDomain),
            ("spiffe://", E::MissingTrustDomain),
            ("example.org/a", E::UnexpectedPath),
            ("example.org/", E::UnexpectedPath),
            ("spiffe://example.org/a", E::UnexpectedPath),
            ("spiffe://example.org/", E::TrailingSlash),
            ("example.org:443", E::Port),
            ("user@example.org", E::UserInfo),
            ("https://example.org", E::WrongScheme("https".into())),
            ("spiffe:example.org", E::MissingSlashes),
            ("exa%6Dple.org", E::PercentEncoding),
            ("example.org?x", E::Query),
            ("example.org#x", E::Fragment),
            ("exämple.org", E::BadTrustDomainChar('ä')),
            (" example.org", E::BadTrustDomainChar(' ')),
        ];
        for (input, want) in cases {
            assert_eq!(TrustDomain::new(input).as_ref(), Err(want), "{input:?}");
        }
    }

    #[test]
    fn trust_domain_borrow_str_lookup() {
        let mut bundles: HashMap<TrustDomain, u32> = HashMap::new();
        bundles.insert(TrustDomain::new("Example.org").expect("valid"), 1);
        bundles.insert(TrustDomain::new("spiffe://other.test").expect("valid"), 2);
        assert_eq!(bundles.get("example.org"), Some(&1));
        assert_eq!(bundles.get("other.test"), Some(&2));
        assert_eq!(bundles.get("missing.test"), None);
        let id = SpiffeId::parse("spiffe://OTHER.test/w").expect("valid");
        assert_eq!(bundles.get(id.trust_domain_name()), Some(&2));

        let set: BTreeSet<TrustDomain> = bundles.into_keys().collect();
        assert!(set.contains("example.org"));
    }

    #[test]
    fn equality_hash_and_order_follow_normalized_form() {
        let a = SpiffeId::parse("SPIFFE://TD/a").expect("valid");
        let b = SpiffeId::parse("spiffe://td/a").expect("valid");
        let upper_path = SpiffeId::parse("spiffe://td/A").expect("valid");
        assert_eq!(a, b);
        assert_ne!(a, upper_path);
        let set: std::collections::HashSet<SpiffeId> = [a.clone(), b].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert!(upper_path < a);
        assert_eq!(format!("{a:?}"), "SpiffeId(\"spiffe://td/a\")");
    }

    #[test]
    fn error_messages_quote_the_offender() {
        assert!(E::BadPathChar('\n').to_string().contains("'\\n'"));
        let scheme = E::WrongScheme("https".into()).to_string();
        assert_eq!(
            scheme,
            "the scheme of a SPIFFE ID must be \"spiffe\", not \"https\""
        );
    }
}
