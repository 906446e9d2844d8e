//! The `CodedInferenceService` custom resource: its spec, status and the
//! schema rules that make the API server refuse a resource we cannot run.
//!
//! Validation lives in the schema (ranges, enums, patterns and CEL rules) so
//! that `kubectl apply` answers with a clear message. [`CodedInferenceServiceSpec::check`]
//! repeats the CEL rules in Rust: the reconciler uses it to refuse, with a
//! status condition, a resource that reached it without those rules (an old
//! CRD still installed), instead of building children that cannot work.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, ResourceRequirements, Toleration,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator};
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
    #[serde(flatten)]
    pub pod: PodOverrides,
}

/// Accepted model URIs: see [`ModelSpec::uri`] and [`ModelSource`].
pub const URI_PATTERN: &str = r"^((/|file:///|https?://|s3://|gs://|az://)[^\s]+|pvc://[a-z0-9]([-.a-z0-9]*[a-z0-9])?(/[^\s]*)?)$";

/// Where the pods of a pool mount a model they do not read from a volume of
/// their own: the claim of a `pvc://` URI, or the emptyDir a remote model
/// is fetched into.
pub const MODEL_DIR: &str = "/mnt/models";

/// How a model reaches the worker, decided from the scheme of its URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource<'a> {
    /// `/path` or `file:///path`: a path in the pod, on a volume the user mounts.
    Path(&'a str),
    /// `pvc://<claim>/<path>`: a PersistentVolumeClaim, `path` inside it
    /// (empty for its root).
    Pvc { claim: &'a str, path: &'a str },
    /// `http(s)://`, `s3://`, `gs://`, `az://`: fetched before the worker starts.
    Remote(&'a str),
}

impl ModelSpec {
    /// The model's source; `None` for a URI the schema's pattern refuses.
    pub fn source(&self) -> Option<ModelSource<'_>> {
        ModelSource::parse(&self.uri)
    }
}

impl<'a> ModelSource<'a> {
    pub fn parse(uri: &'a str) -> Option<Self> {
        if let Some(rest) = uri.strip_prefix("pvc://") {
            let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
            let path = path.trim_matches('/');
            return (!claim.is_empty()).then_some(ModelSource::Pvc { claim, path });
        }
        if let Some(path) = uri.strip_prefix("file://") {
            return (path.starts_with('/') && path.len() > 1).then_some(ModelSource::Path(path));
        }
        if uri.starts_with('/') && uri.len() > 1 {
            return Some(ModelSource::Path(uri));
        }
        ["http://", "https://", "s3://", "gs://", "az://"]
            .iter()
            .any(|scheme| uri.len() > scheme.len() && uri.starts_with(scheme))
            .then_some(ModelSource::Remote(uri))
    }

    /// The `--model` argument of the worker: where the model is inside its pod.
    pub fn model_path(&self) -> String {
        match self {
            ModelSource::Path(path) => (*path).to_string(),
            ModelSource::Pvc { path: "", .. } => MODEL_DIR.to_string(),
            ModelSource::Pvc { path, .. } => format!("{MODEL_DIR}/{path}"),
            ModelSource::Remote(_) => MODEL_DIR.to_string(),
        }
    }
}

/// Default of `drainSeconds`.
pub const DEFAULT_DRAIN_SECONDS: i32 = 5;

/// Pod settings of a pool (`model`, `parityModel`, `frontend`), passed
/// through to its pods as in a Pod's spec: what a KServe predictor's user
/// sets to reach credentials, mounts and private registries.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.terminationGracePeriodSeconds) || self.terminationGracePeriodSeconds > 2 * (has(self.drainSeconds) ? self.drainSeconds : 5)")
        .message(GRACE_TOO_SHORT),
)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Environment variables of the pool's containers (the sidecar, and the
    /// `storage-initializer` that fetches a remote model), as in a
    /// container's `env`. A variable the operator also sets (`CODED_THREADS`)
    /// takes the value given here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), schema_with = "terse::<Vec<EnvVar>>")]
    pub env: Vec<EnvVar>,
    /// Variables from whole Secrets or ConfigMaps, e.g. object-storage
    /// credentials (`AWS_ACCESS_KEY_ID`, ...), as in a container's `envFrom`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), schema_with = "terse::<Vec<EnvFromSource>>")]
    pub env_from: Vec<EnvFromSource>,
    /// Volumes of the pool's pods, as in a Pod's `volumes`; the names
    /// `model-cache` and `model-pvc` are the operator's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), schema_with = "terse::<Vec<Volume>>")]
    pub volumes: Vec<Volume>,
    /// Where the sidecar (and the `storage-initializer`) mount `volumes`, as
    /// in a container's `volumeMounts`; `/mnt/models` is the operator's when
    /// the URI is `pvc://` or remote.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), schema_with = "terse::<Vec<VolumeMount>>")]
    pub volume_mounts: Vec<VolumeMount>,
    /// The pods' ServiceAccount, e.g. one bound to a cloud identity that may
    /// read the model's bucket. Its API token is still not mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub service_account_name: Option<String>,
    /// Secrets holding credentials of a private registry for the image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), schema_with = "terse::<Vec<LocalObjectReference>>")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// When the kubelet pulls the image; Kubernetes' default when unset
    /// (`Always` for a `:latest` tag, else `IfNotPresent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // The enum without `null`: leaving the field out is how it is unset.
    #[schemars(schema_with = "terse::<ImagePullPolicy>")]
    pub image_pull_policy: Option<ImagePullPolicy>,
    /// How long a stopping pod may take before it is killed; default
    /// 2 × drainSeconds + 30.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub termination_grace_period_seconds: Option<i64>,
    /// Seconds a stopping pod keeps serving so that callers stop calling it
    /// first (default 5): a `preStop` sleep while Kubernetes removes it from
    /// its Service, then, after SIGTERM, the sidecar reports not ready for as
    /// long (frontends probe workers every second) before it stops accepting
    /// requests and finishes those in flight. 0 stops at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 600))]
    pub drain_seconds: Option<i32>,
}

/// A container's `imagePullPolicy`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

impl PodOverrides {
    /// `drainSeconds`, or its default.
    pub fn drain_seconds(&self) -> i32 {
        self.drain_seconds.unwrap_or(DEFAULT_DRAIN_SECONDS)
    }

    /// `terminationGracePeriodSeconds`, or its default: both drain phases
    /// plus 30 s for requests in flight.
    pub fn termination_grace_period_seconds(&self) -> i64 {
        self.termination_grace_period_seconds
            .unwrap_or(2 * i64::from(self.drain_seconds()) + 30)
    }
}

/// The schema of a Kubernetes type (a Pod spec's own) without the
/// descriptions inside it: Kubernetes documents them (`kubectl explain
/// pod.spec`), and kept for every pool they would make the CRD too big for
/// `kubectl apply` (its last-applied annotation holds at most 256 KiB).
/// The field's own doc comment stays.
fn terse<T: JsonSchema>(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<T>();
    strip_descriptions(&mut schema);
    schema
}

fn strip_descriptions(schema: &mut Schema) {
    fn walk(value: &mut serde_json::Value) {
        let Some(object) = value.as_object_mut() else {
            return;
        };
        object.remove("description");
        for key in ["items", "additionalProperties", "not"] {
            if let Some(sub) = object.get_mut(key) {
                walk(sub);
            }
        }
        for key in ["properties", "patternProperties", "$defs", "definitions"] {
            if let Some(map) = object.get_mut(key).and_then(|m| m.as_object_mut()) {
                map.values_mut().for_each(walk);
            }
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            if let Some(list) = object.get_mut(key).and_then(|l| l.as_array_mut()) {
                list.iter_mut().for_each(walk);
            }
        }
    }
    if let Some(object) = schema.as_object_mut() {
        let mut value = serde_json::Value::Object(std::mem::take(object));
        walk(&mut value);
        if let serde_json::Value::Object(stripped) = value {
            *object = stripped;
        }
    }
}

/// The code: group size, parity count, encoder, decoder and when to rebuild.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.k >= 2 && self.k <= 16")
        .message("coding.k must be between 2 and 16: a coding group holds k queries"),
    validation = Rule::new("self.r >= 1 && self.r <= self.k")
        .message("coding.r must be between 1 and coding.k: each group has r parity queries"),
    validation = Rule::new("self.r <= 1").message(R_NOT_SERVED),
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
    #[serde(flatten)]
    pub pod: PodOverrides,
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

/// Placement of pods: node selector, tolerations, runtime class, affinity
/// and topology spread, as in a Pod's spec.
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
    /// Node affinity and pod (anti-)affinity, e.g. to keep the instances of a
    /// pool on different nodes so one node's loss costs at most one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "terse::<Option<Affinity>>")]
    pub affinity: Option<Affinity>,
    /// How the pods spread over zones or nodes. A constraint's
    /// `labelSelector` must name the pool's labels itself, e.g.
    /// `coded.dev/service: <name>` and `coded.dev/role: model`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 8),
        schema_with = "terse::<Vec<TopologySpreadConstraint>>"
    )]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
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
            (c.r <= 1, R_NOT_SERVED),
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

const R_NOT_SERVED: &str = "coding.r > 1 is not served yet: the frontend rebuilds one lost prediction per coding group; set coding.r to 1";
const GRACE_TOO_SHORT: &str = "terminationGracePeriodSeconds must be more than twice drainSeconds (default 5): a stopping pod sleeps drainSeconds before SIGTERM, then reports not ready for drainSeconds before it stops accepting requests";

/// Names of the volumes the operator adds to worker pods.
pub const MODEL_VOLUMES: [&str; 2] = ["model-cache", "model-pvc"];

impl ModelSpec {
    /// What the schema cannot see: a URI the operator can place, and user
    /// volumes that do not collide with the ones it adds. `field` names the
    /// pool in the message.
    fn check(&self, field: &str) -> Result<(), InvalidSpec> {
        let Some(source) = self.source() else {
            return Err(InvalidSpec(format!(
                "{field}.uri must be a path, file:///, pvc://<claim>/<path>, http(s)://, s3://, gs:// or az:// URI"
            )));
        };
        if let Some(v) = self
            .pod
            .volumes
            .iter()
            .find(|v| MODEL_VOLUMES.contains(&v.name.as_str()))
        {
            return Err(InvalidSpec(format!(
                "{field}.volumes must not be named {}: the operator names the volume of a pvc:// or remote model so",
                v.name
            )));
        }
        let mounts_model_dir = !matches!(source, ModelSource::Path(_));
        if mounts_model_dir
            && let Some(m) = self
                .pod
                .volume_mounts
                .iter()
                .find(|m| m.mount_path.trim_end_matches('/') == MODEL_DIR)
        {
            return Err(InvalidSpec(format!(
                "{field}.volumeMounts must not mount {} at {MODEL_DIR}: the operator mounts the model of a pvc:// or remote URI there",
                m.name
            )));
        }
        Ok(())
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

    /// The API server's structural-schema rules that a Kubernetes type
    /// could break: every node has a type (or is int-or-string or keeps
    /// unknown fields), nothing is a `$ref`, and logical junctors carry no
    /// types, defaults or descriptions.
    fn structural_problems(v: &Value, path: &str, in_junctor: bool, out: &mut Vec<String>) {
        let Some(o) = v.as_object() else {
            return;
        };
        if o.contains_key("$ref") || o.contains_key("definitions") || o.contains_key("$defs") {
            out.push(format!("{path}: reference"));
        }
        let special = o.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
            || o.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
        if in_junctor {
            for key in [
                "type",
                "default",
                "description",
                "additionalProperties",
                "nullable",
            ] {
                if o.contains_key(key) {
                    out.push(format!("{path}: {key} inside a junctor"));
                }
            }
        } else if !o.contains_key("type") && !special {
            out.push(format!("{path}: no type"));
        }
        if o.contains_key("properties") && !in_junctor && o["type"] != "object" {
            out.push(format!("{path}: properties on a non-object"));
        }
        for (name, sub) in o
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            structural_problems(sub, &format!("{path}.{name}"), in_junctor, out);
        }
        for key in ["items", "additionalProperties"] {
            if let Some(sub) = o.get(key).filter(|s| s.is_object()) {
                structural_problems(sub, &format!("{path}.{key}"), in_junctor, out);
            }
        }
        for key in ["allOf", "anyOf", "oneOf"] {
            for (i, sub) in o
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                structural_problems(sub, &format!("{path}.{key}[{i}]"), true, out);
            }
        }
    }

    #[test]
    fn the_schema_is_structural_with_the_pod_types_inside() {
        let s = schema();
        let mut problems = Vec::new();
        structural_problems(&s, "", false, &mut problems);
        assert_eq!(problems, Vec::<String>::new());
        // Kubernetes' own types, as the API server knows them: Quantity is
        // int-or-string, a volume's sources are objects.
        let spec = &s["properties"]["spec"]["properties"];
        let volume = &spec["model"]["properties"]["volumes"]["items"];
        assert_eq!(volume["properties"]["configMap"]["type"], "object");
        assert_eq!(
            volume["properties"]["emptyDir"]["properties"]["sizeLimit"]["x-kubernetes-int-or-string"],
            true
        );
        assert!(
            volume["required"]
                .as_array()
                .expect("required")
                .contains(&"name".into())
        );
    }

    #[test]
    fn the_crd_fits_in_kubectl_applys_annotation() {
        // Client-side `kubectl apply` keeps the whole object in an annotation
        // of at most 256 KiB.
        let json = serde_json::to_string(&CodedInferenceService::crd()).expect("json");
        assert!(json.len() < 200 * 1024, "{} bytes", json.len());
    }

    #[test]
    fn pod_settings_are_in_every_pool_with_descriptions() {
        let s = schema();
        let spec = &s["properties"]["spec"]["properties"];
        for pool in ["model", "parityModel", "frontend"] {
            let props = &spec[pool]["properties"];
            for field in [
                "env",
                "envFrom",
                "volumes",
                "volumeMounts",
                "serviceAccountName",
                "imagePullSecrets",
                "imagePullPolicy",
                "terminationGracePeriodSeconds",
                "drainSeconds",
            ] {
                let description = props[field]["description"].as_str().unwrap_or_default();
                assert!(description.len() > 20, "{pool}.{field} needs a description");
            }
            assert_eq!(
                props["imagePullPolicy"]["enum"],
                serde_json::json!(["Always", "IfNotPresent", "Never"])
            );
            assert_eq!(props["drainSeconds"]["minimum"].as_f64(), Some(0.0));
            assert_eq!(props["volumes"]["maxItems"], 64);
            assert_eq!(props["volumes"]["type"], "array");
            // Descriptions inside Kubernetes' types are left to `kubectl explain pod`.
            assert!(props["volumes"]["items"].get("description").is_none());
            assert!(
                rules_at(&spec[pool])
                    .iter()
                    .any(|r| r.contains("self.terminationGracePeriodSeconds")),
                "{pool}: the grace rule"
            );
        }
        let scheduling = &spec["scheduling"]["properties"];
        assert_eq!(scheduling["affinity"]["type"], "object");
        assert_eq!(scheduling["topologySpreadConstraints"]["type"], "array");
        assert!(scheduling["affinity"]["description"].is_string());
    }

    #[test]
    fn uri_pattern_admits_each_scheme() {
        let re = regex::Regex::new(URI_PATTERN).expect("pattern");
        for ok in [
            "/models/fashion-mlp",
            "file:///models/fashion-mlp",
            "pvc://models",
            "pvc://models/",
            "pvc://my-claim.v1/fashion/mlp",
            "http://models.example/fashion-mlp",
            "https://models.example/fashion-mlp",
            "s3://bucket/fashion-mlp",
            "gs://bucket/fashion-mlp",
            "az://container/fashion-mlp",
        ] {
            assert!(re.is_match(ok), "{ok}");
            assert!(ModelSource::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "models/fashion-mlp",
            "file://models/fashion-mlp",
            "pvc://",
            "pvc://Upper/x",
            "pvc://-claim/x",
            "ftp://host/x",
            "/models/with space",
            "s3://",
        ] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }

    #[test]
    fn model_sources_and_their_paths_in_the_pod() {
        let path = |uri| ModelSource::parse(uri).map(|s| s.model_path());
        assert_eq!(path("/models/a"), Some("/models/a".into()));
        assert_eq!(path("file:///models/a"), Some("/models/a".into()));
        assert_eq!(path("pvc://claim/a/b"), Some("/mnt/models/a/b".into()));
        assert_eq!(path("pvc://claim"), Some("/mnt/models".into()));
        assert_eq!(path("https://host/a"), Some("/mnt/models".into()));
        assert_eq!(
            ModelSource::parse("pvc://claim/a/b/"),
            Some(ModelSource::Pvc {
                claim: "claim",
                path: "a/b"
            })
        );
        assert_eq!(
            ModelSource::parse("gs://b/m"),
            Some(ModelSource::Remote("gs://b/m"))
        );
        assert_eq!(ModelSource::parse("models/a"), None);
        assert_eq!(ModelSource::parse("file://host/a"), None);
        assert_eq!(ModelSource::parse("pvc:///a"), None);
    }

    #[test]
    fn r_above_one_is_refused_until_it_is_served() {
        let s = schema();
        let coding = &s["properties"]["spec"]["properties"]["coding"];
        assert!(rules_at(coding).contains(&"self.r <= 1".to_string()));
        let mut spec = minimal();
        spec.coding.k = 4;
        spec.coding.r = 2;
        spec.parity_model.replicas = Some(2);
        assert!(
            spec.check()
                .unwrap_err()
                .0
                .starts_with("coding.r > 1 is not served yet")
        );
    }

    #[test]
    fn check_refuses_short_grace_and_clashes_with_the_operators_volumes() {
        let mut spec = minimal();
        spec.frontend.pod.drain_seconds = Some(10);
        spec.frontend.pod.termination_grace_period_seconds = Some(20);
        assert!(
            spec.check()
                .unwrap_err()
                .0
                .starts_with("terminationGracePeriodSeconds must be more than twice")
        );
        spec.frontend.pod.termination_grace_period_seconds = Some(21);
        assert_eq!(spec.check(), Ok(()));
        // Default drain (5 s).
        spec.model.pod.termination_grace_period_seconds = Some(10);
        assert!(spec.check().is_err());

        let mut spec = minimal();
        spec.parity_model.pod.volumes = vec![Volume {
            name: "model-cache".into(),
            ..Volume::default()
        }];
        assert!(
            spec.check()
                .unwrap_err()
                .0
                .starts_with("parityModel.volumes must not be named model-cache")
        );

        let mut spec = minimal();
        spec.model.pod.volume_mounts = vec![VolumeMount {
            name: "mine".into(),
            mount_path: "/mnt/models/".into(),
            ..VolumeMount::default()
        }];
        // A path URI leaves /mnt/models to the user...
        assert_eq!(spec.check(), Ok(()));
        // ...a pvc:// or remote one does not.
        spec.model.uri = "pvc://models/mlp".into();
        assert!(
            spec.check()
                .unwrap_err()
                .0
                .starts_with("model.volumeMounts must not mount mine at /mnt/models")
        );
        spec.model.uri = "https://host/mlp".into();
        assert!(spec.check().is_err());

        let mut spec = minimal();
        spec.model.uri = "file://relative".into();
        assert!(spec.check().unwrap_err().0.starts_with("model.uri must be"));
    }
}
