//! One AdmissionReview (admission.k8s.io/v1) in, its answer out: a pure function of the
//! request body, so every malformed input is a value to answer, never a panic.
//!
//! What is answered how:
//! - Not an AdmissionReview v1 with a `request.uid` (not JSON, another apiVersion or kind,
//!   no request, no uid): HTTP 400 with `{"error": ...}`. Without a uid there is no review
//!   to answer; the API server counts the call as failed and applies the webhook's
//!   `failurePolicy`.
//! - Anything but a CREATE of a core/v1 Pod: allowed, unchanged (not ours to judge).
//! - A Pod CREATE without an object, or a pod the injector refuses: `allowed: false` with
//!   the reason (status code 400). The namespace asked for injection, and a pod that runs
//!   without its sidecar would be outside the mesh's policy.
//! - Otherwise: allowed, with `patchType: JSONPatch` and the base64 patch when the pod
//!   changes, and the injector's warnings in `response.warnings`.

use base64::Engine as _;
use serde_json::{Value, json};

use super::super::{Options, inject_pod_json};
use super::patch;

const API_VERSION: &str = "admission.k8s.io/v1";
/// The API server shows at most this many warnings of one answer, each at most 120
/// characters (longer ones are cut there; Warden's are cut to 512 to stay readable).
const MAX_WARNINGS: usize = 20;
const MAX_WARNING_LEN: usize = 512;

/// The answer to one request body.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// 200 with this AdmissionReview.
    Review(Value),
    /// This HTTP status with `{"error": message}`: the body was no review to answer.
    Bad(u16, String),
}

pub fn answer(body: &[u8], opts: &Options) -> Reply {
    let review: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return Reply::Bad(400, format!("the body is not JSON: {e}")),
    };
    let api_version = review.get("apiVersion").and_then(Value::as_str);
    let kind = review.get("kind").and_then(Value::as_str);
    if api_version != Some(API_VERSION) || kind != Some("AdmissionReview") {
        return Reply::Bad(
            400,
            format!(
                "expected apiVersion {API_VERSION} and kind AdmissionReview, got {} {}",
                api_version.unwrap_or("(none)"),
                kind.unwrap_or("(none)")
            ),
        );
    }
    let Some(request) = review.get("request").filter(|r| r.is_object()) else {
        return Reply::Bad(400, "the AdmissionReview has no request".into());
    };
    let uid = match request.get("uid").and_then(Value::as_str) {
        Some(uid) if !uid.is_empty() => uid,
        _ => return Reply::Bad(400, "request.uid is missing or not a string".into()),
    };
    let respond = |response: Value| {
        let mut response = response;
        response["uid"] = Value::from(uid);
        Reply::Review(json!({
            "apiVersion": API_VERSION,
            "kind": "AdmissionReview",
            "response": response,
        }))
    };
    let deny = |message: String| {
        respond(json!({
            "allowed": false,
            "status": { "code": 400, "message": message },
        }))
    };
    let requested_kind = request.get("kind");
    let is_pod = requested_kind
        .and_then(|k| k.get("group"))
        .and_then(Value::as_str)
        == Some("")
        && requested_kind
            .and_then(|k| k.get("version"))
            .and_then(Value::as_str)
            == Some("v1")
        && requested_kind
            .and_then(|k| k.get("kind"))
            .and_then(Value::as_str)
            == Some("Pod");
    let operation = request.get("operation").and_then(Value::as_str);
    let sub_resource = request
        .get("subResource")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !is_pod || operation != Some("CREATE") || !sub_resource.is_empty() {
        return respond(json!({ "allowed": true }));
    }
    let Some(pod) = request.get("object").filter(|o| o.is_object()) else {
        return deny("request.object is missing or not an object".into());
    };
    let (injected, warnings) = match inject_pod_json(pod, opts) {
        Ok(done) => done,
        Err(reason) => return deny(format!("warden inject: {reason}")),
    };
    let mut response = json!({ "allowed": true });
    let ops = patch::diff(pod, &injected);
    if !ops.is_empty() {
        let text = Value::Array(ops).to_string();
        response["patchType"] = Value::from("JSONPatch");
        response["patch"] = Value::from(base64::engine::general_purpose::STANDARD.encode(text));
    }
    if !warnings.is_empty() {
        let cut: Vec<Value> = warnings
            .iter()
            .take(MAX_WARNINGS)
            .map(|w| Value::from(w.chars().take(MAX_WARNING_LEN).collect::<String>()))
            .collect();
        response["warnings"] = Value::Array(cut);
    }
    respond(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            image: "ghcr.io/warden-mesh/warden:test".into(),
            trust_domain: Some("example.org".into()),
            ..Options::default()
        }
    }

    fn review(request: Value) -> Vec<u8> {
        json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "request": request})
            .to_string()
            .into_bytes()
    }

    fn pod_request(object: Value) -> Value {
        json!({
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "object": object,
        })
    }

    #[test]
    fn malformed_bodies_are_400() {
        for body in [
            &b"not json"[..],
            b"{}",
            b"[]",
            b"{\"apiVersion\": \"admission.k8s.io/v1beta1\", \"kind\": \"AdmissionReview\", \"request\": {\"uid\": \"x\"}}",
            b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionReview\"}",
            b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionReview\", \"request\": {\"uid\": 7}}",
            b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": \"AdmissionReview\", \"request\": []}",
        ] {
            assert!(
                matches!(answer(body, &opts()), Reply::Bad(400, _)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn other_requests_are_allowed_unchanged_and_a_bad_pod_is_denied() {
        let mut other = pod_request(json!({}));
        other["operation"] = json!("UPDATE");
        let Reply::Review(r) = answer(&review(other), &opts()) else {
            panic!("a review");
        };
        assert_eq!(r["response"], json!({"allowed": true, "uid": "u-1"}));

        let Reply::Review(r) = answer(&review(pod_request(json!("x"))), &opts()) else {
            panic!("a review");
        };
        assert_eq!(r["response"]["allowed"], false);
        assert_eq!(r["response"]["uid"], "u-1");

        // No containers: the injector refuses, and so does the webhook, saying why.
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}});
        let Reply::Review(r) = answer(&review(pod_request(pod)), &opts()) else {
            panic!("a review");
        };
        assert_eq!(r["response"]["allowed"], false);
        let message = r["response"]["status"]["message"].as_str().unwrap_or("");
        assert!(message.contains("has no containers"), "{message}");
    }

    #[test]
    fn an_opted_out_pod_is_allowed_without_a_patch() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "p-", "labels": {"warden.dev/inject": "false"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        });
        let Reply::Review(r) = answer(&review(pod_request(pod)), &opts()) else {
            panic!("a review");
        };
        assert_eq!(r["response"], json!({"allowed": true, "uid": "u-1"}));
    }
}
