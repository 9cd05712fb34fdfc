//! Shared by tests/inject.rs and tests/kubernetes_manifests.rs: checks that a YAML document
//! is a valid Kubernetes object by reading it as the typed struct of its apiVersion/kind
//! (k8s-openapi), and that the typed struct, written back, equals the document: k8s-openapi
//! ignores unknown fields, so the round trip is what catches a misspelled one.
//! Kinds without a k8s-openapi type (SPIRE's ClusterSPIFFEID, cert-manager's Issuer and
//! Certificate, kustomize's Kustomization) use small hand-written structs with
//! `deny_unknown_fields`.
#![allow(dead_code)]

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use k8s_openapi::api::{admissionregistration, apps, batch, core, networking, policy, rbac};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

/// Splits a multi-document YAML text; documents holding no node are left out.
pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for de in serde_yaml_ng::Deserializer::from_str(text) {
        // The iterator repeats a syntax error forever: stop at the first one.
        let value = Value::deserialize(de).context("YAML syntax")?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// `kind` of a checked document, e.g. "apps/v1 Deployment".
pub fn check_object(doc: &Value) -> anyhow::Result<String> {
    let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
    let what = format!("{api} {kind}");
    match (api, kind) {
        ("v1", "List") => {
            let items = doc
                .get("items")
                .and_then(Value::as_sequence)
                .context("List without items")?;
            for (i, item) in items.iter().enumerate() {
                check_object(item).with_context(|| format!("items[{i}]"))?;
            }
        }
        ("v1", "Pod") => typed::<core::v1::Pod>(doc)?,
        ("v1", "Service") => typed::<core::v1::Service>(doc)?,
        ("v1", "ConfigMap") => typed::<core::v1::ConfigMap>(doc)?,
        ("v1", "Namespace") => typed::<core::v1::Namespace>(doc)?,
        ("v1", "ServiceAccount") => typed::<core::v1::ServiceAccount>(doc)?,
        ("v1", "PersistentVolumeClaim") => typed::<core::v1::PersistentVolumeClaim>(doc)?,
        ("v1", "ReplicationController") => typed::<core::v1::ReplicationController>(doc)?,
        ("apps/v1", "Deployment") => typed::<apps::v1::Deployment>(doc)?,
        ("apps/v1", "StatefulSet") => typed::<apps::v1::StatefulSet>(doc)?,
        ("apps/v1", "DaemonSet") => typed::<apps::v1::DaemonSet>(doc)?,
        ("apps/v1", "ReplicaSet") => typed::<apps::v1::ReplicaSet>(doc)?,
        ("batch/v1", "Job") => typed::<batch::v1::Job>(doc)?,
        ("batch/v1", "CronJob") => typed::<batch::v1::CronJob>(doc)?,
        ("networking.k8s.io/v1", "NetworkPolicy") => typed::<networking::v1::NetworkPolicy>(doc)?,
        ("rbac.authorization.k8s.io/v1", "Role") => typed::<rbac::v1::Role>(doc)?,
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => typed::<rbac::v1::RoleBinding>(doc)?,
        ("policy/v1", "PodDisruptionBudget") => typed::<policy::v1::PodDisruptionBudget>(doc)?,
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            typed::<admissionregistration::v1::MutatingWebhookConfiguration>(doc)?
        }
        ("cert-manager.io/v1", "Issuer") => {
            let _: CertManagerIssuer = strict(doc)?;
        }
        ("cert-manager.io/v1", "Certificate") => {
            let c: CertManagerCertificate = strict(doc)?;
            if c.spec.dns_names.is_empty() {
                bail!("Certificate {:?} names no DNS name", c.metadata.name);
            }
        }
        ("spire.spiffe.io/v1alpha1", "ClusterSPIFFEID") => {
            let c: ClusterSpiffeId = strict(doc)?;
            if !c
                .spec
                .spiffe_id_template
                .starts_with("spiffe://{{ .TrustDomain }}/")
            {
                bail!(
                    "spiffeIDTemplate {:?} should start with spiffe://{{{{ .TrustDomain }}}}/",
                    c.spec.spiffe_id_template
                );
            }
        }
        _ => bail!("{what}: no typed check for this kind (add one)"),
    }
    Ok(what)
}

fn typed<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> anyhow::Result<()> {
    let object: T = serde_yaml_ng::from_value(doc.clone()).context("as the typed object")?;
    let back = serde_yaml_ng::to_value(&object)?;
    if let Some(path) = first_difference(doc, &back, String::new()) {
        bail!("field {path} is unknown to the typed object or changes on a round trip");
    }
    Ok(())
}

fn strict<T: DeserializeOwned>(doc: &Value) -> anyhow::Result<T> {
    serde_yaml_ng::from_value(doc.clone()).context("as the hand-written strict struct")
}

/// The first path of `a` that `b` lacks or holds differently, comparing numbers by value.
fn first_difference(a: &Value, b: &Value, path: String) -> Option<String> {
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            for (k, v) in x {
                let key = format!("{path}.{}", k.as_str().unwrap_or("?"));
                match y.get(k) {
                    Some(w) => {
                        if let Some(p) = first_difference(v, w, key) {
                            return Some(p);
                        }
                    }
                    None => return Some(key),
                }
            }
            // Keys only the typed side has are its serializer's doing (k8s-openapi writes
            // apiVersion/kind on embedded objects such as volumeClaimTemplates): not a typo.
            None
        }
        (Value::Sequence(x), Value::Sequence(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path} (length)"));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (v, w))| first_difference(v, w, format!("{path}[{i}]")))
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(path),
    }
}

/// The fields of SPIRE controller manager's ClusterSPIFFEID that Warden's examples use.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpiffeId {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ClusterSpiffeIdSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpiffeIdSpec {
    #[serde(rename = "spiffeIDTemplate")]
    pub spiffe_id_template: String,
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub hint: Option<String>,
    #[serde(default)]
    pub class_name: Option<String>,
}

/// The fields of cert-manager's Issuer (cert-manager.io/v1) that Warden's manifests use.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertManagerIssuer {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: CertManagerIssuerSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertManagerIssuerSpec {
    pub self_signed: BTreeMap<String, Value>,
}

/// The fields of cert-manager's Certificate (cert-manager.io/v1) that Warden's manifests use.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertManagerCertificate {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: CertManagerCertificateSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertManagerCertificateSpec {
    pub secret_name: String,
    #[serde(default)]
    pub common_name: Option<String>,
    #[serde(default)]
    pub dns_names: Vec<String>,
    #[serde(default)]
    pub duration: Option<String>,
    #[serde(default)]
    pub renew_before: Option<String>,
    #[serde(default)]
    pub private_key: Option<CertManagerPrivateKey>,
    pub issuer_ref: CertManagerIssuerRef,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertManagerPrivateKey {
    pub algorithm: String,
    pub size: u32,
    #[serde(default)]
    pub rotation_policy: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertManagerIssuerRef {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub group: Option<String>,
}

/// The kustomization.yaml fields Warden uses.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kustomization {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub labels: Vec<KustomizeLabels>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KustomizeLabels {
    pub pairs: BTreeMap<String, String>,
    #[serde(default)]
    pub include_selectors: Option<bool>,
}
