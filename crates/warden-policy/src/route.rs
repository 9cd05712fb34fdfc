//! L7 rules: the `[[workload.route]]`s of a workload's HTTP listeners, and the request
//! path normalization they are matched against.
//!
//! A listener with routes allows a request only when a route matches all of it (path
//! prefix, method, calling workload, and end user); first match wins, and a request no
//! route matches is denied. A listener without routes is L4 only: every request of an
//! allowed connection passes. Routes only ever allow: an empty `methods` or `peers` list
//! means "any", but a route always names its listener and path prefix, so no route
//! matches "anything anywhere".

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use warden_identity::SpiffeId;

use crate::pattern::Pattern;

/// End-user requirement of a route: a valid token from the `[[jwt]]` issuer named `jwt`
/// (a name in the sidecar's config), whose claims hold one of the listed values for every
/// listed claim name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRequirement {
    pub jwt: String,
    #[serde(default)]
    pub claims: BTreeMap<String, Vec<String>>,
}

/// One L7 rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub listener: String,
    /// A normalized absolute path (see [`normalize_path`]); matched segment-wise when it
    /// ends with `/`, else as a plain prefix of the normalized request path.
    pub path_prefix: String,
    /// Upper-case method names; empty: any method.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Calling workloads; empty: any workload the listener's allowlist admitted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Pattern>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<UserRequirement>,
}

/// A route as it arrived, before validation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub listener: String,
    pub path_prefix: String,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default)]
    pub users: Option<UserRequirement>,
}

impl<'de> Deserialize<'de> for Route {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = RawRoute::deserialize(d)?;
        validate_route(&raw)
            .map_err(|(field, reason)| serde::de::Error::custom(format!("route.{field}: {reason}")))
    }
}

/// Checks one route; the error names the field (`path_prefix`, `methods[1]`, ...) and
/// the problem.
pub fn validate_route(raw: &RawRoute) -> Result<Route, (String, String)> {
    crate::model::validate_listener_name(&raw.listener)
        .map_err(|e| ("listener".to_owned(), format!("{:?}: {e}", raw.listener)))?;
    match normalize_path(&raw.path_prefix) {
        Ok(n) if n == raw.path_prefix => {}
        Ok(n) => {
            return Err((
                "path_prefix".into(),
                format!(
                    "{:?} is not in normalized form (it would be {n:?}); write it that way",
                    raw.path_prefix
                ),
            ));
        }
        Err(e) => return Err(("path_prefix".into(), format!("{:?}: {e}", raw.path_prefix))),
    }
    let mut methods = Vec::new();
    for (i, m) in raw.methods.iter().enumerate() {
        if m.is_empty() || m.len() > 32 || !m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
            return Err((
                format!("methods[{i}]"),
                format!("{m:?} is not an upper-case HTTP method like \"GET\""),
            ));
        }
        methods.push(m.clone());
    }
    let mut peers = Vec::new();
    for (i, p) in raw.peers.iter().enumerate() {
        peers.push(Pattern::parse(p).map_err(|e| (format!("peers[{i}]"), format!("{p:?}: {e}")))?);
    }
    if let Some(users) = &raw.users {
        crate::model::validate_listener_name(&users.jwt).map_err(|e| {
            (
                "users.jwt".to_owned(),
                format!("{:?}: not a [[jwt]] name: {e}", users.jwt),
            )
        })?;
        for (name, values) in &users.claims {
            if name.is_empty() {
                return Err(("users.claims".into(), "a claim name is empty".into()));
            }
            if values.is_empty() {
                return Err((
                    format!("users.claims.{name}"),
                    "is empty: list the values of which the token must hold one".into(),
                ));
            }
        }
    }
    Ok(Route {
        listener: raw.listener.clone(),
        path_prefix: raw.path_prefix.clone(),
        methods,
        peers,
        users: raw.users.clone(),
    })
}

/// Why a request path was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("not an absolute path")]
    NotAbsolute,
    #[error("an encoded slash or backslash (%2F, %5C)")]
    EncodedSeparator,
    #[error("a dot segment hidden by percent-encoding")]
    EncodedDotSegment,
    #[error("a malformed percent-encoding")]
    BadPercent,
    #[error("a backslash, control character or NUL")]
    BadCharacter,
    #[error("dot segments that climb above the root")]
    AboveRoot,
}

/// Normalizes the path of a request target (without its query): percent-encoded
/// unreserved characters are decoded (`%66` is `f`), dot segments removed (RFC 3986
/// 5.2.4), repeated slashes merged. Refused: `%2F`/`%5C` (an encoded separator means
/// something else to every server), anything that decodes to a dot segment, backslashes,
/// control characters, bad escapes, and `..` above the root. The result is what routes
/// match and what the app receives.
pub fn normalize_path(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let mut segments: Vec<String> = Vec::new();
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    for raw in path.split('/').skip(1) {
        let (segment, encoded_dot) = decode_segment(raw)?;
        match segment.as_str() {
            "" => continue, // merged slashes
            "." | ".." if encoded_dot => return Err(PathError::EncodedDotSegment),
            "." => continue,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ => segments.push(segment),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing && !out.ends_with('/')) {
        out.push('/');
    }
    Ok(out)
}

/// Decodes the unreserved characters of one segment, keeping other escapes as they are
/// (upper-cased). Returns the segment and whether a `.` came from an escape.
fn decode_segment(raw: &str) -> Result<(String, bool), PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut encoded_dot = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadPercent)?;
            let value = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(PathError::BadPercent)?;
            match value {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0..=0x1f | 0x7f => return Err(PathError::BadCharacter),
                b'.' => {
                    encoded_dot = true;
                    out.push('.');
                }
                v if v.is_ascii_alphanumeric() || v == b'-' || v == b'_' || v == b'~' => {
                    out.push(v as char)
                }
                v => {
                    out.push('%');
                    out.push_str(&format!("{v:02X}"));
                }
            }
            i += 3;
        } else {
            if b == b'\\' || b < 0x20 || b == 0x7f {
                return Err(PathError::BadCharacter);
            }
            out.push(b as char);
            i += 1;
        }
    }
    Ok((out, encoded_dot))
}

/// Whether the normalized `path` is under `prefix`: a prefix ending with `/` matches
/// whole segments (`/docs/finance/` matches `/docs/finance/x`, never `/docs/finance2`),
/// one without matches the exact path or a path continuing with `/`.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix.ends_with('/') {
        path.starts_with(prefix) || path.len() + 1 == prefix.len() && prefix.starts_with(path)
    } else {
        path == prefix
            || path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/')
    }
}

/// What the caller found out about the end user for one route's requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserCheck {
    /// A valid token whose claims satisfy the requirement.
    Satisfied,
    /// A valid token whose claims do not.
    ClaimsMismatch,
    /// No valid token: the reason label (`missing_token`, `expired`, ...).
    Unauthenticated(&'static str),
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestDecision {
    /// Whether the request goes to the app.
    pub allowed: bool,
    /// Allowed only because the policy is in audit mode: the routes deny it, for `reason`.
    pub would_deny: bool,
    /// The route that allowed the request (its index among the workload's routes), if any.
    pub route: Option<usize>,
    pub reason: RequestReason,
}

/// Why a request was allowed or denied (the `reason` label of
/// `warden_http_requests_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestReason {
    /// A route matched.
    Allowed,
    /// The listener has no routes: L4 rules only.
    NoRoutes,
    /// No route matched path, method and peer (403).
    NoMatch,
    /// A route matched but the token's claims do not satisfy it, and none did (403).
    ClaimsMismatch,
    /// A route matched but needs a user, and the token was missing or invalid (401).
    Unauthenticated(&'static str),
    /// The calling workload is in quarantine (403).
    Quarantined,
}

impl RequestReason {
    pub fn as_label(self) -> &'static str {
        match self {
            RequestReason::Allowed => "allowed",
            RequestReason::NoRoutes => "no_routes",
            RequestReason::NoMatch => "no_match",
            RequestReason::ClaimsMismatch => "claims_mismatch",
            RequestReason::Unauthenticated(why) => why,
            RequestReason::Quarantined => "quarantined",
        }
    }

    /// The HTTP status of a denial.
    pub fn status(self) -> u16 {
        match self {
            RequestReason::Unauthenticated(_) => 401,
            RequestReason::Allowed | RequestReason::NoRoutes => 200,
            RequestReason::NoMatch | RequestReason::ClaimsMismatch | RequestReason::Quarantined => {
                403
            }
        }
    }
}

impl fmt::Display for RequestReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_label())
    }
}

/// First-match evaluation of `routes` (all of one listener, in policy order, with their
/// indices) for a request. `users` is asked only for routes that match everything else,
/// and at most once per distinct requirement is up to the caller (it may cache).
pub fn decide_request<'r>(
    routes: impl IntoIterator<Item = (usize, &'r Route)>,
    peer: &SpiffeId,
    method: &str,
    path: &str,
    users: &mut dyn FnMut(&UserRequirement) -> UserCheck,
) -> RequestDecision {
    let mut any = false;
    let mut unauthenticated = None;
    let mut mismatch = false;
    for (index, route) in routes {
        any = true;
        if !path_matches(&route.path_prefix, path)
            || !(route.methods.is_empty() || route.methods.iter().any(|m| m == method))
            || !(route.peers.is_empty() || route.peers.iter().any(|p| p.matches(peer)))
        {
            continue;
        }
        let check = match &route.users {
            None => UserCheck::Satisfied,
            Some(req) => users(req),
        };
        match check {
            UserCheck::Satisfied => {
                return RequestDecision {
                    allowed: true,
                    would_deny: false,
                    route: Some(index),
                    reason: RequestReason::Allowed,
                };
            }
            UserCheck::ClaimsMismatch => mismatch = true,
            UserCheck::Unauthenticated(why) => {
                unauthenticated.get_or_insert(why);
            }
        }
    }
    let reason = if !any {
        return RequestDecision {
            allowed: true,
            would_deny: false,
            route: None,
            reason: RequestReason::NoRoutes,
        };
    } else if let Some(why) = unauthenticated {
        // A route this request could have used wants a user it did not prove: 401 tells
        // the client to (re)authenticate, which may then reach that route.
        RequestReason::Unauthenticated(why)
    } else if mismatch {
        RequestReason::ClaimsMismatch
    } else {
        RequestReason::NoMatch
    };
    RequestDecision {
        allowed: false,
        would_deny: false,
        route: None,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        let ok = [
            ("/", "/"),
            ("/docs/finance/x", "/docs/finance/x"),
            ("//docs///finance/", "/docs/finance/"),
            ("/docs/marketing/../finance/x", "/docs/finance/x"),
            ("/docs/./finance/.", "/docs/finance/"),
            ("/docs/%66inance/x", "/docs/finance/x"),
            ("/a/%7e/%41", "/a/~/A"),
            ("/a/%20b", "/a/%20b"),
            ("/a/%c3%a9", "/a/%C3%A9"),
            ("/a/..", "/"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize_path(input).as_deref(), Ok(want), "{input}");
        }
        let bad = [
            ("docs", PathError::NotAbsolute),
            ("/docs%2Ffinance", PathError::EncodedSeparator),
            ("/docs%2ffinance", PathError::EncodedSeparator),
            ("/docs%5Cfinance", PathError::EncodedSeparator),
            ("/docs/%2e%2e/finance", PathError::EncodedDotSegment),
            ("/docs/.%2E/finance", PathError::EncodedDotSegment),
            ("/docs/%2e/finance", PathError::EncodedDotSegment),
            ("/docs\\finance", PathError::BadCharacter),
            ("/a%00", PathError::BadCharacter),
            ("/a%zz", PathError::BadPercent),
            ("/a%4", PathError::BadPercent),
            ("/..", PathError::AboveRoot),
            ("/a/../../b", PathError::AboveRoot),
        ];
        for (input, want) in bad {
            assert_eq!(normalize_path(input), Err(want), "{input}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(path_matches("/docs/finance/", "/docs/finance/q3.pdf"));
        assert!(path_matches("/docs/finance/", "/docs/finance"));
        assert!(!path_matches("/docs/finance/", "/docs/finance2/x"));
        assert!(path_matches("/docs/finance", "/docs/finance/x"));
        assert!(!path_matches("/docs/finance", "/docs/financex"));
        assert!(path_matches("/", "/anything"));
    }

    fn route(text: &str) -> Route {
        let raw: RawRoute = toml::from_str(text).expect("toml");
        validate_route(&raw).expect("valid")
    }

    #[test]
    fn first_match_wins_and_the_denial_says_why() {
        let finance = route(
            "listener = \"http\"\npath_prefix = \"/docs/finance/\"\nmethods = [\"GET\"]\npeers = [\"spiffe://example.org/app\"]\nusers = { jwt = \"idp\", claims = { groups = [\"finance\"] } }\n",
        );
        let public = route("listener = \"http\"\npath_prefix = \"/public/\"\n");
        let routes = [finance, public];
        let app = SpiffeId::parse("spiffe://example.org/app").expect("id");
        let other = SpiffeId::parse("spiffe://example.org/other").expect("id");
        let decide = |peer: &SpiffeId, method: &str, path: &str, user: UserCheck| {
            decide_request(routes.iter().enumerate(), peer, method, path, &mut |_| user)
        };
        let d = decide(&app, "GET", "/docs/finance/q3", UserCheck::Satisfied);
        assert_eq!((d.allowed, d.route), (true, Some(0)));
        let d = decide(&app, "GET", "/docs/finance/q3", UserCheck::ClaimsMismatch);
        assert_eq!(d.reason, RequestReason::ClaimsMismatch);
        assert_eq!(d.reason.status(), 403);
        let d = decide(
            &app,
            "GET",
            "/docs/finance/q3",
            UserCheck::Unauthenticated("expired"),
        );
        assert_eq!((d.reason.status(), d.reason.as_label()), (401, "expired"));
        let d = decide(&app, "POST", "/docs/finance/q3", UserCheck::Satisfied);
        assert_eq!(d.reason, RequestReason::NoMatch);
        let d = decide(&other, "GET", "/docs/finance/q3", UserCheck::Satisfied);
        assert_eq!(d.reason, RequestReason::NoMatch);
        let d = decide(
            &other,
            "DELETE",
            "/public/x",
            UserCheck::Unauthenticated("x"),
        );
        assert_eq!((d.allowed, d.route), (true, Some(1)));
        let none: [Route; 0] = [];
        let d = decide_request(none.iter().enumerate(), &app, "GET", "/", &mut |_| {
            UserCheck::Unauthenticated("missing_token")
        });
        assert_eq!((d.allowed, d.reason), (true, RequestReason::NoRoutes));
    }

    #[test]
    fn bad_routes_name_the_field() {
        let cases = [
            ("listener = \"a.b\"\npath_prefix = \"/\"\n", "listener"),
            ("listener = \"h\"\npath_prefix = \"docs\"\n", "path_prefix"),
            (
                "listener = \"h\"\npath_prefix = \"/a/../b\"\n",
                "path_prefix",
            ),
            (
                "listener = \"h\"\npath_prefix = \"/a\"\nmethods = [\"get\"]\n",
                "methods[0]",
            ),
            (
                "listener = \"h\"\npath_prefix = \"/a\"\npeers = [\"x\"]\n",
                "peers[0]",
            ),
            (
                "listener = \"h\"\npath_prefix = \"/a\"\nusers = { jwt = \"i\", claims = { g = [] } }\n",
                "users.claims.g",
            ),
        ];
        for (text, field) in cases {
            let raw: RawRoute = toml::from_str(text).expect("toml");
            let (f, _) = validate_route(&raw).expect_err(text);
            assert_eq!(f, field, "{text}");
        }
    }
}
