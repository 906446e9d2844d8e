//! The `CodedInferenceService` custom resource: its spec, status and the
//! schema rules that make the API server refuse a resource we cannot run.
//!
//! Validation lives in the schema (ranges, enums, patterns and CEL rules) so
//! that `kubectl apply` answers with a clear message. [`CodedInferenceServiceSpec::check`]
//! repeats the CEL rules in Rust: the reconciler uses it to refuse, with a
//! status condition, a resource that reached it without those rules (an old
//! CRD still installed), instead of building children that cannot work.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "coded.dev";
/// The only served version.
pub const VERSION: &str = "v1alpha1";

/// Longest resource name whose children still get valid names: the parity
/// StatefulSet `<name>-parity` must stay within 52 characters so that its
/// pods' `controller-revision-hash` label fits in 63.
pub const MAX_NAME_LEN: usize = 45;

/// Largest group size the operator accepts; bigger groups make every
/// reconstruction wait for more outputs and are outside what ParM measured.
pub const MAX_K: i32 = 16;

/// A model served with erasure-coded resilience (ParM): `k` queries form a
/// coding group, `r` parity models answer an encoding of the group, and the
/// frontend rebuilds a slow or lost prediction from them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "coded.dev",
    version = "v1alpha1",
    kind = "CodedInferenceService",
    plural = "codedinferenceservices",
    shortname = "cis",
    category = "coded",
    namespaced,
    status = "CodedInferenceServiceStatus",
    doc = "A model served with erasure-coded resilience: k queries form a coding group and r parity models let the frontend rebuild slow or lost predictions.",
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "K", type_ = "integer", json_path = ".spec.coding.k"),
    printcolumn(name = "R", type_ = "integer", json_path = ".spec.coding.r"),
    printcolumn(name = "Model ready", type_ = "integer", json_path = ".status.modelReady"),
    printcolumn(name = "Parity ready", type_ = "integer", json_path = ".status.parityReady"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "p99", type_ = "string", json_path = ".status.observedLatency"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 45")
        .message("metadata.name must be a DNS label of at most 45 characters that starts with a letter: it prefixes the names of the Services and StatefulSets created for it"),
)]
#[x_kube(
    validation = Rule::new("!has(self.model.replicas) || self.model.replicas >= self.coding.k")
        .message("model.replicas must be at least coding.k: the k queries of a coding group go to k different model instances"),
    validation = Rule::new("!has(self.parityModel.replicas) || self.parityModel.replicas >= self.coding.r")
        .message("parityModel.replicas must be at least coding.r: the r parity queries of a coding group go to r different parity instances"),
)]
#[serde(rename_all = "camelCase")]
pub struct CodedInferenceServiceSpec {
    /// The deployed model F: every query is answered by it when it is on time.
    pub model: ModelSpec,
    /// The parity model F_P, trained so that F_P(encode(X1..Xk)) ≈ Σ F(Xi) for
    /// this model, this k and this encoder.
    pub parity_model: ModelSpec,
    /// How queries are grouped, encoded and decoded.
    #[serde(default)]
    pub coding: CodingSpec,
    /// The frontend that encodes, dispatches and decodes.
    #[serde(default)]
    pub frontend: FrontendSpec,
    /// The tail-latency objective reported by the `SLOMet` condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloSpec>,
    /// A Prometheus the frontend queries for tail latencies across instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
    /// Where model and parity pods run (GPU nodes, for instance); frontend
    /// pods take its tolerations unless `frontend.scheduling` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<SchedulingSpec>,
}

/// A model (or parity model) and the pool of instances serving it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Where the model card and weights live: a path, `file://`, `http(s)://`,
    /// `s3://`, `gs://` or `az://` URI.
    #[schemars(
        length(min = 1, max = 2048),
        regex(pattern = r"^(/|file://|https?://|s3://|gs://|az://)[^\s]+$")
    )]
    pub uri: String,
    /// Number of instances; defaults to `coding.k` for the model and
    /// `coding.r` for the parity model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: Option<i32>,
    /// Requests and limits of each instance; GPUs as `nvidia.com/gpu` limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Overrides the operator's default `coded-sidecar` image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

/// The code: group size, parity count, encoder, decoder and when to rebuild.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.k >= 2 && self.k <= 16")
        .message("coding.k must be between 2 and 16: a coding group holds k queries"),
    validation = Rule::new("self.r >= 1 && self.r <= self.k")
        .message("coding.r must be between 1 and coding.k: each group has r parity queries"),
)]
#[serde(rename_all = "camelCase")]
pub struct CodingSpec {
    /// Queries per coding group.
    #[serde(default = "default_k")]
    pub k: i32,
    /// Parity queries per coding group: any r lost predictions of a group can be rebuilt.
    #[serde(default = "default_r")]
    pub r: i32,
    /// How the k queries of a group are combined into a parity query.
    #[serde(default)]
    pub encoder: Encoder,
    /// How a lost prediction is rebuilt from the parity output and the others.
    #[serde(default)]
    pub decoder: Decoder,
    /// When a rebuilt prediction is served instead of waiting for the real one.
    #[serde(default)]
    pub reconstruct_policy: ReconstructPolicy,
}

fn default_k() -> i32 {
    2
}

fn default_r() -> i32 {
    1
}

impl Default for CodingSpec {
    fn default() -> Self {
        Self {
            k: default_k(),
            r: default_r(),
            encoder: Encoder::default(),
            decoder: Decoder::default(),
            reconstruct_policy: ReconstructPolicy::default(),
        }
    }
}

/// Parity encoders; the value is the sidecar's `--encoder` argument.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Encoder {
    /// P = Σ Xi; works for any tensor.
    #[default]
    Sum,
    /// The k images downsampled and tiled into one image of the original
    /// size; only for image inputs, which the schema cannot see.
    Concat,
}

/// Decoders; the value is the sidecar's `--decoder` argument.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// F(Xi) ≈ F_P(P) − Σ_{j≠i} F(Xj).
    #[default]
    Subtract,
}

/// Reconstruction policies; the value is the sidecar's `--reconstruct-policy` argument.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReconstructPolicy {
    /// Serve a rebuilt prediction as soon as it can be decoded.
    #[default]
    Eager,
    /// Wait for the real prediction until a deadline derived from the observed tail latency.
    Deadline,
}

impl Encoder {
    pub fn as_arg(self) -> &'static str {
        match self {
            Encoder::Sum => "sum",
            Encoder::Concat => "concat",
        }
    }
}

impl Decoder {
    pub fn as_arg(self) -> &'static str {
        match self {
            Decoder::Subtract => "subtract",
        }
    }
}

impl ReconstructPolicy {
    pub fn as_arg(self) -> &'static str {
        match self {
            ReconstructPolicy::Eager => "eager",
            ReconstructPolicy::Deadline => "deadline",
        }
    }
}

/// The frontend pool and the Service clients call.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FrontendSpec {
    /// Frontend instances behind the Service.
    #[serde(default = "default_frontend_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Requests and limits of each frontend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Overrides the operator's default `coded-sidecar` image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Port of the frontend Service (the pods always listen on 8080).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Placement of frontend pods. When unset they take only the
    /// tolerations of `spec.scheduling`: they may share tainted nodes with
    /// the workers without being tied to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<SchedulingSpec>,
}

fn default_frontend_replicas() -> i32 {
    1
}

fn default_port() -> i32 {
    crate::SIDECAR_PORT
}

impl Default for FrontendSpec {
    fn default() -> Self {
        Self {
            replicas: default_frontend_replicas(),
            resources: None,
            image: None,
            port: default_port(),
            scheduling: None,
        }
    }
}

/// A tail-latency objective.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.quantile > 0.0 && self.quantile < 1.0")
        .message("slo.quantile must be strictly between 0 and 1, for example 0.99"),
)]
#[serde(rename_all = "camelCase")]
pub struct SloSpec {
    /// Latency the quantile must stay under, such as `50ms`, `1.5s` or `800us`.
    #[schemars(length(max = 32), regex(pattern = r"^[0-9]+(\.[0-9]+)?(us|ms|s)$"))]
    pub latency_target: String,
    /// Which quantile of request latency the target is for.
    #[serde(default = "default_quantile")]
    pub quantile: f64,
}

fn default_quantile() -> f64 {
    0.99
}

/// Where Prometheus answers queries.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSpec {
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus.monitoring.svc:9090`.
    #[schemars(length(max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,
}

/// Placement of pods: node selector, tolerations and runtime class.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// E.g. `nvidia` on clusters that run GPU pods under their own runtime class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
}

/// What the operator last saw of the service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CodedInferenceServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready model instances.
    #[serde(default)]
    pub model_ready: i32,
    /// Ready parity instances.
    #[serde(default)]
    pub parity_ready: i32,
    /// Ready frontend instances.
    #[serde(default)]
    pub frontend_ready: i32,
    /// URL of the frontend Service, speaking the KServe v2 protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Observed latency at the SLO quantile, e.g. `42ms`; unset until measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_latency: Option<String>,
    /// `Ready`, `Degraded` and `SLOMet`.
    // A map keyed by type, so that server-side apply can give each condition
    // its own owner (the SLO watcher may own `SLOMet` one day).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A spec that the schema should have refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSpec(pub String);

impl CodedInferenceServiceSpec {
    /// Model instances to run.
    pub fn model_replicas(&self) -> i32 {
        self.model.replicas.unwrap_or(self.coding.k)
    }

    /// Parity instances to run.
    pub fn parity_replicas(&self) -> i32 {
        self.parity_model.replicas.unwrap_or(self.coding.r)
    }

    /// The schema's rules, in Rust, with the same messages. Patterns on
    /// strings (URIs, durations) are left to the schema.
    pub fn check(&self) -> Result<(), InvalidSpec> {
        let c = &self.coding;
        let rules = [
            (
                (2..=MAX_K).contains(&c.k),
                "coding.k must be between 2 and 16: a coding group holds k queries",
            ),
            (
                c.r >= 1 && c.r <= c.k,
                "coding.r must be between 1 and coding.k: each group has r parity queries",
            ),
            (
                self.model_replicas() >= c.k,
                "model.replicas must be at least coding.k: the k queries of a coding group go to k different model instances",
            ),
            (
                self.parity_replicas() >= c.r,
                "parityModel.replicas must be at least coding.r: the r parity queries of a coding group go to r different parity instances",
            ),
            (
                !self.model.uri.is_empty() && !self.parity_model.uri.is_empty(),
                "model.uri and parityModel.uri must not be empty",
            ),
            (
                self.frontend.replicas >= 1,
                "frontend.replicas must be at least 1",
            ),
            (
                self.slo
                    .as_ref()
                    .is_none_or(|s| s.quantile > 0.0 && s.quantile < 1.0),
                "slo.quantile must be strictly between 0 and 1, for example 0.99",
            ),
        ];
        match rules.into_iter().find(|(ok, _)| !ok) {
            Some((_, message)) => Err(InvalidSpec(message.to_string())),
            None => Ok(()),
        }
    }
}

/// Where `crdgen --write` puts the CRD, relative to the repository root: the
/// copy for `kubectl apply` and the chart's (Helm cannot reach outside a chart).
pub const CRD_PATHS: [&str; 2] = [
    "crds/codedinferenceservice.yaml",
    "charts/coded-serving/crds/codedinferenceservice.yaml",
];

/// The CRD as committed: YAML with a header saying how it was made.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let body = serde_yaml::to_string(&CodedInferenceService::crd())?;
    Ok(format!(
        "# Generated by `cargo run -p coded-operator --bin crdgen -- --write`; do not edit.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::Value;

    fn schema() -> Value {
        let crd = CodedInferenceService::crd();
        let version = &crd.spec.versions[0];
        let schema = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .expect("schema");
        serde_json::to_value(schema).expect("json")
    }

    fn rules_at(v: &Value) -> Vec<String> {
        v["x-kubernetes-validations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["rule"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn crd_names_match_the_contract() {
        let crd = CodedInferenceService::crd();
        assert_eq!(crd.spec.group, "coded.dev");
        assert_eq!(crd.spec.names.kind, "CodedInferenceService");
        assert_eq!(crd.spec.names.plural, "codedinferenceservices");
        assert_eq!(crd.spec.names.short_names, Some(vec!["cis".to_string()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(crd.spec.versions[0].name, "v1alpha1");
        let conditions = &schema()["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        let sub = crd.spec.versions[0]
            .subresources
            .as_ref()
            .expect("subresources");
        assert!(sub.status.is_some(), "status is a subresource");
    }

    #[test]
    fn printer_columns_are_the_documented_ones() {
        let crd = CodedInferenceService::crd();
        let cols = crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .expect("columns");
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "Ready",
                "K",
                "R",
                "Model ready",
                "Parity ready",
                "Endpoint",
                "p99",
                "Age"
            ]
        );
        let ready = &cols[0].json_path;
        assert!(ready.contains(r#"@.type=="Ready""#), "{ready}");
    }

    #[test]
    fn cel_rules_are_in_the_generated_schema() {
        let s = schema();
        let spec = &s["properties"]["spec"];
        let coding = &spec["properties"]["coding"];
        let slo = &spec["properties"]["slo"];
        assert!(rules_at(coding).contains(&"self.k >= 2 && self.k <= 16".to_string()));
        assert!(rules_at(coding).contains(&"self.r >= 1 && self.r <= self.k".to_string()));
        let spec_rules = rules_at(spec);
        assert!(
            spec_rules
                .iter()
                .any(|r| r.contains("self.model.replicas >= self.coding.k"))
        );
        assert!(
            spec_rules
                .iter()
                .any(|r| r.contains("self.parityModel.replicas >= self.coding.r"))
        );
        assert!(rules_at(slo).iter().any(|r| r.contains("self.quantile")));
        assert!(
            rules_at(&s)
                .iter()
                .any(|r| r.contains("self.metadata.name"))
        );
        // Every rule carries a message a user can act on.
        for at in [coding, spec, slo, &s] {
            for rule in at["x-kubernetes-validations"].as_array().expect("rules") {
                let message = rule["message"].as_str().unwrap_or_default();
                assert!(message.len() > 20, "rule {rule} needs a message");
            }
        }
    }

    #[test]
    fn enums_defaults_and_ranges_are_in_the_schema() {
        let s = schema();
        let spec = &s["properties"]["spec"]["properties"];
        let coding = &spec["coding"];
        assert_eq!(
            coding["properties"]["encoder"]["enum"],
            serde_json::json!(["sum", "concat"])
        );
        assert_eq!(
            coding["properties"]["decoder"]["enum"],
            serde_json::json!(["subtract"])
        );
        assert_eq!(
            coding["properties"]["reconstructPolicy"]["enum"],
            serde_json::json!(["eager", "deadline"])
        );
        assert_eq!(coding["properties"]["k"]["default"], 2);
        assert_eq!(coding["properties"]["r"]["default"], 1);
        // The whole block defaults, so CEL rules can read self.coding.k when it is omitted.
        assert_eq!(coding["default"]["k"], 2);
        assert_eq!(
            spec["frontend"]["properties"]["port"]["maximum"].as_f64(),
            Some(65535.0)
        );
        assert_eq!(
            spec["model"]["properties"]["replicas"]["minimum"].as_f64(),
            Some(1.0)
        );
        assert!(spec["model"]["properties"]["uri"]["pattern"].is_string());
        assert!(spec["slo"]["properties"]["latencyTarget"]["pattern"].is_string());
        let required = s["properties"]["spec"]["required"]
            .as_array()
            .expect("required");
        assert!(required.contains(&"model".into()) && required.contains(&"parityModel".into()));
    }

    fn minimal() -> CodedInferenceServiceSpec {
        serde_json::from_value(serde_json::json!({
            "model": {"uri": "file:///models/mlp"},
            "parityModel": {"uri": "file:///models/mlp-parity-k2"},
        }))
        .expect("minimal spec")
    }

    #[test]
    fn omitted_fields_take_their_defaults() {
        let spec = minimal();
        assert_eq!(spec.coding, CodingSpec::default());
        assert_eq!((spec.coding.k, spec.coding.r), (2, 1));
        assert_eq!(spec.model_replicas(), 2, "model replicas default to k");
        assert_eq!(spec.parity_replicas(), 1, "parity replicas default to r");
        assert_eq!(spec.frontend.port, 8080);
        assert!(spec.check().is_ok());
    }

    #[test]
    fn check_repeats_the_cel_rules() {
        let mut spec = minimal();
        spec.coding.k = 1;
        assert!(spec.check().unwrap_err().0.starts_with("coding.k"));
        let mut spec = minimal();
        spec.coding.r = 3;
        assert!(spec.check().unwrap_err().0.starts_with("coding.r"));
        let mut spec = minimal();
        spec.coding.k = 4;
        spec.model.replicas = Some(3);
        assert!(spec.check().unwrap_err().0.starts_with("model.replicas"));
        let mut spec = minimal();
        spec.coding.r = 2;
        spec.parity_model.replicas = Some(1);
        assert!(
            spec.check()
                .unwrap_err()
                .0
                .starts_with("parityModel.replicas")
        );
        let mut spec = minimal();
        spec.slo = Some(SloSpec {
            latency_target: "50ms".into(),
            quantile: 1.0,
        });
        assert!(spec.check().unwrap_err().0.starts_with("slo.quantile"));
    }
}
