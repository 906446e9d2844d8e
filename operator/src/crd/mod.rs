//! The `CodedInferenceService` custom resource: its spec, status and the
//! schema rules that make the API server refuse a resource we cannot run.
//!
//! Validation lives in the schema (ranges, enums, patterns and CEL rules) so
//! that `kubectl apply` answers with a clear message. [`CodedInferenceServiceSpec::check`]
//! repeats the CEL rules in Rust: the reconciler uses it to refuse, with a
//! status condition, a resource that reached it without those rules (an old
//! CRD still installed), instead of building children that cannot work.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod pod;
mod source;

pub(crate) use pod::GRACE_TOO_SHORT;
pub use pod::{DEFAULT_DRAIN_SECONDS, ImagePullPolicy, PodOverrides, SchedulingSpec};
pub use source::{MODEL_DIR, MODEL_VOLUMES, ModelSource, URI_PATTERN};

/// API group of the resource.
pub const GROUP: &str = "coded.dev";
/// The only served version.
pub const VERSION: &str = "v1alpha1";

/// Longest resource name whose children still get valid names: the parity
/// StatefulSet `<name>-parity` must stay within 52 characters so that its
/// pods' `controller-revision-hash` label fits in 63.
pub const MAX_NAME_LEN: usize = 45;

/// Longest name with `coding.r` ≥ 2: `<name>-parity-<l>` is two characters
/// longer. Only those resources are held to it, so no existing r = 1
/// resource becomes invalid.
pub const MAX_NAME_LEN_R: usize = MAX_NAME_LEN - 2;

/// Most parities per group: the frontend's decoding (the sidecar's
/// `coding::linear::MAX_R`) grows ill-conditioned beyond.
pub const MAX_R: i32 = 4;

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
    validation = Rule::new("!has(self.spec.coding) || !has(self.spec.coding.r) || self.spec.coding.r <= 1 || size(self.metadata.name) <= 43")
        .message("metadata.name must be at most 43 characters when coding.r is 2 or more: parity l gets the StatefulSet <name>-parity-<l>"),
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
    /// TLS on the frontend and the workers (HTTP and gRPC), from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

/// Serving TLS: every frontend and worker pod mounts the Secret read-only,
/// serves HTTP and gRPC over TLS only, and is probed over HTTPS; frontends
/// call the workers over https and trust the Secret's `ca.crt`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret in this namespace with `tls.crt`,
    /// `tls.key` and `ca.crt` (the CA the frontends trust for the workers;
    /// cert-manager writes it). The certificate must name
    /// `NAME-frontend.NAMESPACE.svc`, `NAME-model.NAMESPACE.svc` and
    /// `NAME-parity.NAMESPACE.svc` (with `coding.r` ≥ 2, also
    /// `NAME-parity-<l>.NAMESPACE.svc` for l = 1..r-1): frontends check the
    /// workers' certificate against their Service's name.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// A client token the frontend requires.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// The Secret key holding the token: every request but the health
    /// checks must send `Authorization: Bearer <token>` (gRPC: the
    /// `authorization` metadata).
    pub token_secret: SecretKeyRef,
}

/// One key of a Secret in this namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A model (or parity model) and the pool of instances serving it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Where the model card and weights live. `/path` or `file:///path`: a
    /// volume of the pool's `volumes`, mounted by its `volumeMounts`.
    /// `pvc://<claim>/<path>`: that PersistentVolumeClaim, mounted read-only
    /// at `/mnt/models`. `http(s)://`, `s3://`, `gs://` or `az://`: fetched by
    /// an init container `storage-initializer` into an emptyDir at
    /// `/mnt/models`, with the pool's `env` and `envFrom` as credentials.
    /// Weights are checked against the card's sha256.
    #[schemars(length(min = 1, max = 2048), regex(pattern = URI_PATTERN))]
    pub uri: String,
    /// Number of instances; defaults to `coding.k` for the model and
    /// `coding.r` for the parity model. With `coding.r` ≥ 2 the parity
    /// instances are shared out among the r parity models, parity 0 first
    /// (5 with r = 2: 3 serve parity 0, 2 parity 1).
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
    #[serde(flatten)]
    pub pod: PodOverrides,
}

/// The code: group size, parity count, encoder, decoder and when to rebuild.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.k >= 2 && self.k <= 16")
        .message("coding.k must be between 2 and 16: a coding group holds k queries"),
    validation = Rule::new("self.r >= 1 && self.r <= self.k")
        .message("coding.r must be between 1 and coding.k: each group has r parity queries"),
    validation = Rule::new("self.r <= 4").message(R_AT_MOST_4),
    validation = Rule::new("self.r <= 1 || !has(self.encoder) || self.encoder != 'concat'")
        .message(CONCAT_ONE_PARITY),
)]
#[serde(rename_all = "camelCase")]
pub struct CodingSpec {
    /// Queries per coding group.
    #[serde(default = "default_k")]
    pub k: i32,
    /// Parity queries per coding group, at most 4: any r lost predictions
    /// of a group can be rebuilt. Parity l has a model of its own: with
    /// r ≥ 2 it is served from `<parityModel.uri>/<l>` (the layout of
    /// `coded-sidecar train parity --r R --out DIR`).
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
#[x_kube(
    validation = Rule::new("self.port != self.grpcPort").message(PORTS_DIFFER),
)]
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
    /// gRPC port of the frontend Service (KServe v2 / Triton
    /// `GRPCInferenceService`; the pods always listen on 8001).
    #[serde(default = "default_grpc_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub grpc_port: i32,
    /// Placement of frontend pods. When unset they take only the
    /// tolerations of `spec.scheduling`: they may share tainted nodes with
    /// the workers without being tied to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<SchedulingSpec>,
    /// Require a bearer token from clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    #[serde(flatten)]
    pub pod: PodOverrides,
}

fn default_frontend_replicas() -> i32 {
    1
}

fn default_port() -> i32 {
    crate::SIDECAR_PORT
}

fn default_grpc_port() -> i32 {
    crate::SIDECAR_GRPC_PORT
}

impl Default for FrontendSpec {
    fn default() -> Self {
        Self {
            replicas: default_frontend_replicas(),
            resources: None,
            image: None,
            port: default_port(),
            grpc_port: default_grpc_port(),
            scheduling: None,
            auth: None,
            pod: PodOverrides::default(),
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

    /// Parity instances to run, all parities together.
    pub fn parity_replicas(&self) -> i32 {
        self.parity_model.replicas.unwrap_or(self.coding.r)
    }

    /// Instances of parity `l`'s model: [`Self::parity_replicas`] shared out
    /// among the r parities, lower indexes first, so every parity has at
    /// least one when the schema's rules hold.
    pub fn parity_replicas_of(&self, l: i32) -> i32 {
        let (total, r) = (self.parity_replicas(), self.coding.r.max(1));
        total / r + i32::from(l < total % r)
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
            (c.r <= MAX_R, R_AT_MOST_4),
            (c.r <= 1 || c.encoder != Encoder::Concat, CONCAT_ONE_PARITY),
            (self.frontend.port != self.frontend.grpc_port, PORTS_DIFFER),
            (
                [&self.model.pod, &self.parity_model.pod, &self.frontend.pod]
                    .iter()
                    .all(|p| {
                        p.termination_grace_period_seconds
                            .is_none_or(|grace| grace > 2 * i64::from(p.drain_seconds()))
                    }),
                GRACE_TOO_SHORT,
            ),
        ];
        if let Some((_, message)) = rules.into_iter().find(|(ok, _)| !ok) {
            return Err(InvalidSpec(message.to_string()));
        }
        for (field, model) in [("model", &self.model), ("parityModel", &self.parity_model)] {
            model.check(field)?;
        }
        Ok(())
    }
}

/// The frontend Service has one port per protocol.
const PORTS_DIFFER: &str = "frontend.port and frontend.grpcPort must differ: the frontend Service has one port for HTTP and one for gRPC";

const R_AT_MOST_4: &str =
    "coding.r must be at most 4: decoding more parities per group is ill-conditioned";

/// The data plane refuses concat with r > 1 (`CodingError::ConcatParities`).
const CONCAT_ONE_PARITY: &str =
    "coding.encoder concat has one parity per group: set coding.r to 1 or use the sum encoder";

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
mod tests;
