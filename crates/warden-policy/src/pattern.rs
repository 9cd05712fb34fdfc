//! Peer patterns: an exact SPIFFE ID, `*` for exactly one path segment, and a trailing
//! `/**` for one or more remaining segments.
//!
//! The grammar is deliberately tiny. Every extra feature (regex, partial-segment globs,
//! wildcard trust domains) makes it harder for a reviewer to see who an allowlist admits,
//! and an allowlist nobody can read is one nobody can trust.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use warden_identity::{SpiffeId, SpiffeIdError};

/// Why a pattern string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty pattern; write a SPIFFE ID such as spiffe://example.org/ns/app/sa/web")]
    Empty,
    #[error(
        "a bare wildcard would match every identity; write a full SPIFFE ID such as spiffe://example.org/ns/app/*"
    )]
    BareWildcard,
    #[error("wildcards are not allowed in the trust domain; trust domains match exactly")]
    WildcardInTrustDomain,
    #[error("wildcards are only allowed as path segments")]
    WildcardOutsidePath,
    #[error(
        "'*' must be a whole path segment (found {segment:?}); partial globs are not supported"
    )]
    PartialWildcard { segment: String },
    #[error("'**' is only allowed as the last path segment")]
    DoubleStarNotLast,
    #[error(
        "a pattern must name a workload (a SPIFFE ID with a path); to allow a whole trust domain write spiffe://{trust_domain}/**"
    )]
    NoPath { trust_domain: String },
    #[error("{0}")]
    InvalidId(SpiffeIdError),
}

impl From<SpiffeIdError> for PatternError {
    fn from(e: SpiffeIdError) -> Self {
        Self::InvalidId(e)
    }
}

/// One path segment of a wildcard pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    Literal(Box<str>),
    Any,
}

#[derive(Clone, Debug)]
pub(crate) struct Wildcard {
    pub(crate) trust_domain: Box<str>,
    /// Segments before an optional trailing `**`.
    pub(crate) segments: Box<[Segment]>,
    /// True when the pattern ends in `/**` (one or more further segments).
    pub(crate) tail: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum Kind {
    Exact,
    Wildcard(Wildcard),
}

/// A validated peer pattern. Equality, ordering and hashing use the canonical text, which
/// fully determines what the pattern matches.
#[derive(Clone)]
pub struct Pattern {
    text: Box<str>,
    kind: Kind,
}

const SCHEME: &str = "spiffe://";
/// Stands in for a wildcard segment so the rest of the pattern can be validated by
/// `SpiffeId::parse` instead of a second, possibly diverging, copy of the SPIFFE grammar.
const PLACEHOLDER: &str = "x";

fn is_wildcard_segment(seg: &str) -> bool {
    seg == "*" || seg == "**"
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Self, PatternError> {
        if s.is_empty() {
            return Err(PatternError::Empty);
        }
        if !s.contains('*') {
            let id = SpiffeId::parse(s)?;
            return Self::exact(&id);
        }
        if s == "*" || s == "**" {
            return Err(PatternError::BareWildcard);
        }
        let Some((scheme, rest)) = s
            .split_once("://")
            .filter(|(scheme, _)| !scheme.contains('*'))
        else {
            // Not shaped like a URI (or the star is in the scheme): let the SPIFFE ID parser
            // say what is wrong, since that message is the one the user needs.
            return Err(match SpiffeId::parse(s) {
                Err(e) => e.into(),
                Ok(_) => PatternError::WildcardOutsidePath,
            });
        };
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        if authority.contains('*') {
            return Err(PatternError::WildcardInTrustDomain);
        }
        let Some(path) = path.strip_prefix('/') else {
            return Err(PatternError::WildcardOutsidePath);
        };
        let raw: Vec<&str> = path.split('/').collect();
        if let Some(seg) = raw
            .iter()
            .find(|seg| seg.contains('*') && !is_wildcard_segment(seg))
        {
            return Err(PatternError::PartialWildcard {
                segment: (*seg).to_owned(),
            });
        }

        let mut probe = String::with_capacity(s.len());
        probe.push_str(scheme);
        probe.push_str("://");
        probe.push_str(authority);
        for seg in &raw {
            probe.push('/');
            probe.push_str(if is_wildcard_segment(seg) {
                PLACEHOLDER
            } else {
                seg
            });
        }
        let id = SpiffeId::parse(&probe)?;

        let last = raw.len() - 1;
        if raw[..last].contains(&"**") {
            return Err(PatternError::DoubleStarNotLast);
        }
        let parsed: Vec<&str> = id.segments().collect();
        if parsed.len() != raw.len() {
            // The ID parser saw a different segmentation than we did; refuse rather than
            // guess which segments the wildcards were meant to replace.
            return Err(PatternError::WildcardOutsidePath);
        }

        let tail = raw[last] == "**";
        let body = if tail { &raw[..last] } else { &raw[..] };
        let segments: Box<[Segment]> = body
            .iter()
            .zip(&parsed)
            .map(|(r, p)| {
                if *r == "*" {
                    Segment::Any
                } else {
                    Segment::Literal((*p).into())
                }
            })
            .collect();

        let trust_domain = id.trust_domain_name();
        let mut text = String::with_capacity(s.len());
        text.push_str(SCHEME);
        text.push_str(trust_domain);
        for seg in segments.iter() {
            text.push('/');
            match seg {
                Segment::Literal(l) => text.push_str(l),
                Segment::Any => text.push('*'),
            }
        }
        if tail {
            text.push_str("/**");
        }
        Ok(Pattern {
            text: text.into(),
            kind: Kind::Wildcard(Wildcard {
                trust_domain: trust_domain.into(),
                segments,
                tail,
            }),
        })
    }

    /// A pattern that matches exactly `id`, which must be a workload ID.
    pub fn exact(id: &SpiffeId) -> Result<Self, PatternError> {
        if !id.is_workload() {
            return Err(PatternError::NoPath {
                trust_domain: id.trust_domain_name().to_owned(),
            });
        }
        Ok(Pattern {
            text: id.as_str().into(),
            kind: Kind::Exact,
        })
    }

    /// The canonical text: what `parse` would accept and `Display` prints.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_exact(&self) -> bool {
        matches!(self.kind, Kind::Exact)
    }

    /// The trust domain this pattern is confined to.
    pub fn trust_domain(&self) -> &str {
        match &self.kind {
            Kind::Wildcard(w) => &w.trust_domain,
            Kind::Exact => {
                let rest = self.text.strip_prefix(SCHEME).unwrap_or(&self.text);
                rest.find('/').map_or(rest, |i| &rest[..i])
            }
        }
    }

    /// Matches a single ID. Snapshots use an index instead; this is the reference semantics.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match &self.kind {
            Kind::Exact => id.as_str() == &*self.text,
            Kind::Wildcard(w) => {
                if id.trust_domain_name() != &*w.trust_domain {
                    return false;
                }
                let mut segs = id.segments();
                for want in w.segments.iter() {
                    match (want, segs.next()) {
                        (_, None) => return false,
                        (Segment::Any, Some(_)) => {}
                        (Segment::Literal(l), Some(got)) if got == &**l => {}
                        (Segment::Literal(_), Some(_)) => return false,
                    }
                }
                let remaining = segs.count();
                if w.tail {
                    remaining >= 1
                } else {
                    remaining == 0
                }
            }
        }
    }

    pub(crate) fn kind(&self) -> &Kind {
        &self.kind
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&&*self.text).finish()
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}
impl Eq for Pattern {}

impl std::hash::Hash for Pattern {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl PartialOrd for Pattern {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pattern {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.text.cmp(&other.text)
    }
}

impl FromStr for Pattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pattern::parse(s)
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Pattern::parse(&s).map_err(|e| serde::de::Error::custom(format_args!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).expect("test ID must parse")
    }

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s} should parse: {e}"))
    }

    #[test]
    fn exact_pattern_matches_only_itself() {
        let pat = p("spiffe://example.org/ns/rag/sa/retriever");
        assert!(pat.is_exact());
        assert_eq!(pat.as_str(), "spiffe://example.org/ns/rag/sa/retriever");
        assert_eq!(pat.trust_domain(), "example.org");
        assert!(pat.matches(&id("spiffe://example.org/ns/rag/sa/retriever")));
        assert!(!pat.matches(&id("spiffe://example.org/ns/rag/sa/retriever2")));
        assert!(!pat.matches(&id("spiffe://example.org/ns/rag/sa")));
        assert!(!pat.matches(&id("spiffe://example.org/ns/rag/sa/retriever/x")));
        assert!(!pat.matches(&id("spiffe://other.org/ns/rag/sa/retriever")));
    }

    #[test]
    fn single_star_matches_exactly_one_segment() {
        let pat = p("spiffe://example.org/ns/*/sa/x");
        assert!(!pat.is_exact());
        assert_eq!(pat.to_string(), "spiffe://example.org/ns/*/sa/x");
        assert!(pat.matches(&id("spiffe://example.org/ns/rag/sa/x")));
        assert!(pat.matches(&id("spiffe://example.org/ns/other/sa/x")));
        // zero segments
        assert!(!pat.matches(&id("spiffe://example.org/ns/sa/x")));
        // two segments
        assert!(!pat.matches(&id("spiffe://example.org/ns/a/b/sa/x")));
        assert!(!pat.matches(&id("spiffe://example.org/ns/rag/sa/y")));
    }

    #[test]
    fn trailing_star_matches_one_segment_at_the_end() {
        let pat = p("spiffe://example.org/ns/rag/*");
        assert!(pat.matches(&id("spiffe://example.org/ns/rag/a")));
        assert!(!pat.matches(&id("spiffe://example.org/ns/rag")));
        assert!(!pat.matches(&id("spiffe://example.org/ns/rag/a/b")));
    }

    #[test]
    fn double_star_matches_one_or_more_but_not_the_prefix() {
        let pat = p("spiffe://example.org/ns/rag/**");
        assert_eq!(pat.as_str(), "spiffe://example.org/ns/rag/**");
        assert!(pat.matches(&id("spiffe://example.org/ns/rag/a")));
        assert!(pat.matches(&id("spiffe://example.org/ns/rag/a/b")));
        assert!(pat.matches(&id("spiffe://example.org/ns/rag/a/b/c/d")));
        assert!(!pat.matches(&id("spiffe://example.org/ns/rag")));
        assert!(!pat.matches(&id("spiffe://example.org/ns/ragx/a")));
        assert!(!pat.matches(&id("spiffe://example.org/ns/other/a")));
    }

    #[test]
    fn star_then_double_star_and_whole_trust_domain() {
        let pat = p("spiffe://example.org/ns/*/**");
        assert!(pat.matches(&id("spiffe://example.org/ns/a/b")));
        assert!(!pat.matches(&id("spiffe://example.org/ns/a")));

        let all = p("spiffe://example.org/**");
        assert!(all.matches(&id("spiffe://example.org/a")));
        assert!(all.matches(&id("spiffe://example.org/a/b/c")));
        assert!(!all.matches(&id("spiffe://other.org/a")));
    }

    #[test]
    fn trust_domain_must_match_exactly() {
        let pat = p("spiffe://example.org/ns/*/sa/x");
        assert!(!pat.matches(&id("spiffe://example.com/ns/rag/sa/x")));
        assert!(!pat.matches(&id("spiffe://sub.example.org/ns/rag/sa/x")));
    }

    #[test]
    fn canonical_text_round_trips() {
        for s in [
            "spiffe://example.org/a",
            "spiffe://example.org/ns/*/sa/x",
            "spiffe://example.org/ns/**",
            "spiffe://example.org/*/*/**",
        ] {
            let pat = p(s);
            assert_eq!(pat.to_string(), s);
            assert_eq!(p(&pat.to_string()), pat);
        }
    }

    #[test]
    fn rejects_partial_wildcards() {
        for s in [
            "spiffe://x/a*b",
            "spiffe://x/ns/a*",
            "spiffe://x/ns/*a",
            "spiffe://x/***",
        ] {
            let err = Pattern::parse(s).expect_err(s);
            assert!(
                matches!(err, PatternError::PartialWildcard { .. }),
                "{s}: {err:?}"
            );
            assert!(err.to_string().contains("'*' must be a whole path segment"));
        }
    }

    #[test]
    fn rejects_double_star_before_the_end() {
        let err = Pattern::parse("spiffe://example.org/**/x").expect_err("not last");
        assert!(matches!(err, PatternError::DoubleStarNotLast), "{err:?}");
        assert_eq!(
            err.to_string(),
            "'**' is only allowed as the last path segment"
        );
    }

    #[test]
    fn rejects_wildcards_in_the_trust_domain() {
        for s in [
            "spiffe://*/ns/a",
            "spiffe://*.example.org/ns/a",
            "spiffe://**/a",
            "spiffe://example.*",
        ] {
            let err = Pattern::parse(s).expect_err(s);
            assert!(
                matches!(err, PatternError::WildcardInTrustDomain),
                "{s}: {err:?}"
            );
        }
    }

    #[test]
    fn rejects_bare_wildcards_and_empty() {
        assert!(matches!(
            Pattern::parse("*"),
            Err(PatternError::BareWildcard)
        ));
        assert!(matches!(
            Pattern::parse("**"),
            Err(PatternError::BareWildcard)
        ));
        assert!(matches!(Pattern::parse(""), Err(PatternError::Empty)));
    }

    #[test]
    fn rejects_trust_domain_only_ids() {
        let err = Pattern::parse("spiffe://example.org").expect_err("no path");
        assert!(matches!(err, PatternError::NoPath { .. }), "{err:?}");
        assert!(err.to_string().contains("spiffe://example.org/**"));
    }

    #[test]
    fn rejects_invalid_ids_with_and_without_wildcards() {
        for s in [
            "http://example.org/a",
            "spiffe://example.org/a/",
            "spiffe://example.org//a",
            "spiffe://example.org/a/**/",
            "spiffe://example.org/*/",
            "example.org/*",
            "sp*ffe://example.org/a",
            "spiffe://example.org/a b/*",
        ] {
            let err = Pattern::parse(s).expect_err(s);
            assert!(matches!(err, PatternError::InvalidId(_)), "{s}: {err:?}");
        }
    }

    #[test]
    fn serde_uses_the_canonical_string() {
        let pat = p("spiffe://example.org/ns/*");
        let json = serde_json::to_string(&pat).expect("serialize");
        assert_eq!(json, "\"spiffe://example.org/ns/*\"");
        let back: Pattern = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, pat);
        let err = serde_json::from_str::<Pattern>("\"spiffe://x/a*b\"").expect_err("bad");
        assert!(
            err.to_string()
                .contains("\"spiffe://x/a*b\": '*' must be a whole path segment"),
            "{err}"
        );
    }
}
