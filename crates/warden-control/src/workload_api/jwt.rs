//! The JWT-SVID calls of the Workload API, on the built-in CA's JWT key.
//!
//! - `FetchJWTSVID`: the audience is required (`INVALID_ARGUMENT` without one); without a
//!   `spiffe_id`, one JWT-SVID per identity the caller may have, default first (as SPIRE
//!   does); with one, that identity only, and `PERMISSION_DENIED` if the caller may not
//!   have it. Lifetime: the socket's SVID TTL.
//! - `FetchJWTBundles`: the trust domain's JWT bundle, keyed `spiffe://<trust domain>`.
//!   Federated trust domains carry X.509 bundles only, so they have none here.
//! - `ValidateJWTSVID`: `INVALID_ARGUMENT` with the reason when the token is refused; the
//!   subject and every claim when it passes.

use prost_types::value::Kind;
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};
use warden_identity::SpiffeId;
use warden_proto::workload::{
    JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse,
};

use super::WorkloadApi;
use crate::audit::AuditEvent;
use crate::ca::{JwtAuthority, TrustBundles};

/// Bounds on what one request may ask to be signed.
const MAX_AUDIENCES: usize = 16;
const MAX_AUDIENCE_BYTES: usize = 512;

fn check_audience(audience: &str) -> Result<(), Status> {
    if audience.is_empty() {
        return Err(Status::invalid_argument("audience must not be empty"));
    }
    if audience.len() > MAX_AUDIENCE_BYTES {
        return Err(Status::invalid_argument(format!(
            "an audience is limited to {MAX_AUDIENCE_BYTES} bytes"
        )));
    }
    Ok(())
}

pub(super) fn bundles_response(jwt: &JwtAuthority, trust: &TrustBundles) -> JwtBundlesResponse {
    JwtBundlesResponse {
        bundles: [(trust.trust_domain.id_string(), jwt.bundle_json().to_vec())]
            .into_iter()
            .collect(),
    }
}

impl WorkloadApi {
    pub(super) fn fetch_jwt(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let selected = self.authorize(&request)?;
        let req = request.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument(
                "audience must be specified: a JWT-SVID is always for someone",
            ));
        }
        if req.audience.len() > MAX_AUDIENCES {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_AUDIENCES} audiences"
            )));
        }
        for a in &req.audience {
            check_audience(a)?;
        }
        let mut ids: Vec<&SpiffeId> = selected
            .iter()
            .filter_map(|&i| self.state.entries.get(i))
            .map(|e| &e.spiffe_id)
            .collect();
        if !req.spiffe_id.is_empty() {
            let wanted = SpiffeId::parse(&req.spiffe_id)
                .map_err(|e| Status::invalid_argument(format!("spiffe_id: {e}")))?;
            ids.retain(|id| **id == wanted);
            if ids.is_empty() {
                return Err(Status::permission_denied(
                    "no identity issued: the caller may not have this SPIFFE ID",
                ));
            }
        }
        let mut svids = Vec::with_capacity(ids.len());
        for id in ids {
            let svid = self
                .jwt
                .mint(id, &req.audience, self.svid_ttl)
                .map_err(|e| Status::internal(format!("cannot sign the JWT-SVID of {id}: {e}")))?;
            tracing::debug!(target: "warden::audit", event = AuditEvent::JwtSvidIssued.as_str(), socket = %self.state.path.display(), spiffe_id = %id, audience = ?req.audience, expires = %humantime::format_rfc3339_seconds(svid.expires), "JWT-SVID issued");
            svids.push(warden_proto::workload::Jwtsvid {
                spiffe_id: svid.spiffe_id.to_string(),
                svid: svid.token,
                hint: String::new(),
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    pub(super) fn validate_jwt(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.authorize(&request)?;
        let req = request.into_inner();
        check_audience(&req.audience)?;
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must not be empty"));
        }
        let claims = self
            .jwt
            .validate(&req.svid, &req.audience, std::time::SystemTime::now())
            .map_err(|e| Status::invalid_argument(format!("JWT-SVID refused: {e}")))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: claims.sub.unwrap_or_default(),
            claims: Some(to_struct(claims.all)),
        }))
    }
}

fn to_struct(map: Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        // google.protobuf.Value holds numbers as doubles, like JSON itself.
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
