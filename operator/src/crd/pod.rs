//! Pod settings a pool passes through to its pods (env, volumes, service
//! account, pull settings, graceful stop) and where pods are placed, with
//! Kubernetes' own schemas, kept small enough for `kubectl apply`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, Toleration, TopologySpreadConstraint,
    Volume, VolumeMount,
};
use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

pub(crate) const GRACE_TOO_SHORT: &str = "terminationGracePeriodSeconds must be more than twice drainSeconds (default 5): a stopping pod sleeps drainSeconds before SIGTERM, then reports not ready for drainSeconds before it stops accepting requests";

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
