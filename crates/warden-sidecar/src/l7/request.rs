//! One HTTP request: normalize, decide, answer a denial or forward to the app.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use warden_policy::{RequestDecision, RequestReason, UserCheck, UserRequirement};

use super::ConnCtx;
use crate::config::ForwardClientCert;
use crate::telemetry::HttpOutcome;

pub(crate) type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// One request's verdicts on its token, per `[[jwt]]` issuer name.
type Verdicts = Vec<(String, Result<warden_jwt::Claims, &'static str>)>;

static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Hop-by-hop headers (RFC 9110 7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

pub(crate) async fn handle(ctx: &ConnCtx, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().as_str().to_owned();
    let path = match warden_policy::normalize_path(req.uri().path()) {
        Ok(p) => p,
        Err(e) => {
            let shown = truncate(req.uri().path());
            record(
                ctx,
                &HttpOutcome {
                    detail: Some(e.to_string()),
                    ..refused("bad_path", None, &method, &shown)
                },
            );
            return text(StatusCode::BAD_REQUEST, "bad request: ambiguous path\n");
        }
    };
    if req.method() == http::Method::CONNECT {
        return refuse(
            ctx,
            &method,
            &path,
            "connect_refused",
            StatusCode::METHOD_NOT_ALLOWED,
        );
    }
    let token = bearer(req.headers());
    let mut user: Option<String> = None;
    // The token is checked against every issuer this listener's routes name, before the
    // (synchronous) decision, so that a token whose `kid` is new to a JWKS URL issuer can
    // wait for the refetch instead of being refused once.
    let mut checked: Verdicts = Vec::new();
    if let Ok(token) = token {
        // Compiled with the policy; held past the policy's guard (the checks may wait).
        let issuers = ctx.shared.policy.load().route_issuers(&ctx.listener);
        for issuer in issuers.iter() {
            let verdict = ctx
                .settings
                .tokens
                .validate_fresh(issuer, token)
                .await
                .map_err(|e| e.as_label());
            checked.push((issuer.clone(), verdict));
        }
    }
    let policy = ctx.shared.policy.load();
    let decision = policy.decide_request(&ctx.listener, &ctx.peer, &method, &path, &mut |req| {
        check_user(ctx, req, token, &mut checked, &mut user)
    });
    drop(policy);
    if !decision.allowed {
        return deny(
            ctx,
            &method,
            &path,
            &decision,
            user.as_deref(),
            token.is_ok(),
        );
    }
    record(
        ctx,
        &HttpOutcome {
            allowed: true,
            would_deny: decision.would_deny,
            reason: decision.reason.as_label(),
            route: decision.route,
            user: user.as_deref(),
            method: &method,
            path: &path,
            detail: None,
        },
    );
    let req = match to_app(ctx, req, &path) {
        Ok(r) => r,
        Err(()) => return text(StatusCode::BAD_REQUEST, "bad request\n"),
    };
    match ctx.app.send(&ctx.forward, req).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.boxed_unsync())
        }
        Err(e) => {
            tracing::warn!(conn_id = ctx.conn_id, forward = %ctx.forward, error = %e, "the app did not answer an HTTP request");
            text(StatusCode::BAD_GATEWAY, "the app did not answer\n")
        }
    }
}

/// The end user for one route's requirement; each issuer's verdict on the token is
/// computed once per request.
fn check_user(
    ctx: &ConnCtx,
    req: &UserRequirement,
    token: Result<&str, &'static str>,
    checked: &mut Verdicts,
    user: &mut Option<String>,
) -> UserCheck {
    let token = match token {
        Ok(t) => t,
        Err(why) => return UserCheck::Unauthenticated(why),
    };
    let verdict = match checked.iter().position(|(issuer, _)| issuer == &req.jwt) {
        Some(i) => &checked[i].1,
        None => {
            let v = ctx
                .settings
                .tokens
                .validate(&req.jwt, token)
                .map_err(|e| e.as_label());
            checked.push((req.jwt.clone(), v));
            &checked[checked.len() - 1].1
        }
    };
    match verdict {
        Err(why) => UserCheck::Unauthenticated(why),
        Ok(claims) => {
            if user.is_none() {
                *user = claims.sub.clone();
            }
            if req
                .claims
                .iter()
                .all(|(name, values)| claims.has_any(name, values))
            {
                UserCheck::Satisfied
            } else {
                UserCheck::ClaimsMismatch
            }
        }
    }
}

/// The bearer token of the request: exactly one `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err("missing_token");
    };
    if values.next().is_some() {
        return Err("malformed");
    }
    let text = value.to_str().map_err(|_| "malformed")?;
    let (scheme, token) = text.split_once(' ').ok_or("malformed")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("missing_token");
    }
    let token = token.trim();
    if token.is_empty() {
        return Err("missing_token");
    }
    Ok(token)
}

fn deny(
    ctx: &ConnCtx,
    method: &str,
    path: &str,
    decision: &RequestDecision,
    user: Option<&str>,
    had_token: bool,
) -> Response<Body> {
    record(
        ctx,
        &refused(decision.reason.as_label(), user, method, path),
    );
    match decision.reason {
        RequestReason::Unauthenticated(_) => {
            // RFC 6750 3: no error code when no token was sent, invalid_token otherwise.
            let challenge = if had_token {
                "Bearer realm=\"warden\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"warden\""
            };
            let mut resp = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            resp
        }
        _ => text(StatusCode::FORBIDDEN, "forbidden\n"),
    }
}

fn refuse(
    ctx: &ConnCtx,
    method: &str,
    path: &str,
    reason: &'static str,
    status: StatusCode,
) -> Response<Body> {
    record(ctx, &refused(reason, None, method, path));
    text(status, "refused\n")
}

/// Counts and audits one request's outcome on `ctx`'s connection.
fn record(ctx: &ConnCtx, outcome: &HttpOutcome<'_>) {
    ctx.shared
        .telemetry
        .http_request(&ctx.labels, ctx.conn_id, ctx.peer_addr, outcome);
}

/// The outcome of a request refused before it reached the app.
fn refused<'a>(
    reason: &'static str,
    user: Option<&'a str>,
    method: &'a str,
    path: &'a str,
) -> HttpOutcome<'a> {
    HttpOutcome {
        allowed: false,
        would_deny: false,
        reason,
        route: None,
        user,
        method,
        path,
        detail: None,
    }
}

/// The request as the app gets it: the normalized path (and the query as sent), no
/// hop-by-hop headers, the client's XFCC dropped and ours set with `sanitize_set`.
fn to_app(ctx: &ConnCtx, req: Request<Incoming>, path: &str) -> Result<Request<Incoming>, ()> {
    let (mut parts, body) = req.into_parts();
    let path_and_query = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| ctx.forward.clone());
    parts.uri = match ctx.settings.app_protocol {
        // HTTP/2 carries scheme and authority as pseudo-headers.
        crate::config::AppProtocol::H2c => format!("http://{authority}{path_and_query}"),
        crate::config::AppProtocol::Http1 => path_and_query,
    }
    .parse()
    .map_err(|_| ())?;
    parts.version = match ctx.settings.app_protocol {
        crate::config::AppProtocol::H2c => http::Version::HTTP_2,
        crate::config::AppProtocol::Http1 => http::Version::HTTP_11,
    };
    strip_hop_by_hop(&mut parts.headers);
    if ctx.settings.app_protocol == crate::config::AppProtocol::Http1
        && !parts.headers.contains_key(header::HOST)
    {
        parts.headers.insert(
            header::HOST,
            HeaderValue::from_str(&authority).map_err(|_| ())?,
        );
    }
    parts.headers.remove(&XFCC);
    if ctx.settings.forward_client_cert == ForwardClientCert::SanitizeSet {
        let ours = ctx
            .shared
            .identity
            .load()
            .map(|i| i.spiffe_id().to_string())
            .unwrap_or_default();
        let value = format!("By={ours};URI={}", ctx.peer);
        parts
            .headers
            .insert(XFCC.clone(), HeaderValue::from_str(&value).map_err(|_| ())?);
    }
    Ok(Request::from_parts(parts, body))
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too (most requests have none: no
    // allocation then).
    if !headers.contains_key(header::CONNECTION) {
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A path as audited: at most 256 bytes (on a character boundary).
fn truncate(path: &str) -> String {
    let mut end = path.len().min(256);
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    path[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Err("missing_token"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Ok("abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&h), Ok("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), Err("missing_token"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert_eq!(bearer(&h), Err("malformed"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(bearer(&h), Err("malformed"));
    }

    #[test]
    fn hop_by_hop_headers_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
