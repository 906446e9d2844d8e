//! Worker pools, the model's and one per parity: a StatefulSet each, so
//! every instance has a stable DNS name (`<sts>-<i>.<service>.<ns>.svc`)
//! that the frontend lists, and a headless Service that publishes those
//! names.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, ResourceFieldSelector, Service, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::gpu::{scheduling, wants_gpu};
use super::storage::model_storage;
use super::{
    Owner, PodParts, Pool, Settings, drain_args, merge_env, pod_template, sidecar_container,
};
use crate::crd::{CodedInferenceServiceSpec, ModelSpec};
use crate::{SIDECAR_GRPC_PORT, SIDECAR_PORT};

/// The name a pool's workers serve their model under: the resource's name
/// for the model pool, `<name>-parity` for parity 0 and `<name>-parity-<l>`
/// for parity l. The frontend derives the same names from its own
/// `--model-name` (the sidecar's `frontend::parity_model_name`).
pub fn served_name(owner: &Owner<'_>, pool: Pool) -> String {
    match pool {
        Pool::Model => owner.name.clone(),
        Pool::Parity(0) => format!("{}-parity", owner.name),
        Pool::Parity(l) => format!("{}-parity-{l}", owner.name),
    }
}

/// The model parity l serves: `parityModel` itself with r = 1; with r ≥ 2
/// its `uri` gets `/<l>` (`coded-sidecar train parity --r R --out DIR`
/// writes parity l to `DIR/<l>`), volumes and the rest unchanged.
pub fn parity_model(spec: &CodedInferenceServiceSpec, l: i32) -> ModelSpec {
    let mut model = spec.parity_model.clone();
    if spec.coding.r > 1 {
        model.uri = format!("{}/{l}", model.uri.trim_end_matches('/'));
    }
    model
}

/// The `coded-sidecar worker` arguments for one model, found at `model_arg`
/// in the pod (see [`super::storage`]). Pods listen on every interface (the
/// worker's own default is loopback only), drain as `drainSeconds` says,
/// and run on the GPU (`--device cuda`) when the pool requests one.
pub fn args(owner: &Owner<'_>, pool: Pool, model: &ModelSpec, model_arg: &str) -> Vec<String> {
    let mut args: Vec<String> = [
        "worker",
        "--model",
        model_arg,
        "--model-name",
        &served_name(owner, pool),
        "--host",
        "0.0.0.0",
        "--port",
        &SIDECAR_PORT.to_string(),
        "--grpc-port",
        &SIDECAR_GRPC_PORT.to_string(),
    ]
    .map(String::from)
    .to_vec();
    if wants_gpu(model) {
        args.extend(["--device".to_string(), "cuda".to_string()]);
    }
    args.extend(drain_args(&model.pod));
    args
}

/// URLs of the instances of a worker pool, in ordinal order.
pub fn endpoints(owner: &Owner<'_>, pool: Pool, replicas: i32) -> Vec<String> {
    let set = owner.pool_name(pool);
    (0..replicas)
        .map(|i| {
            format!(
                "http://{set}-{i}.{set}.{ns}.svc:{SIDECAR_PORT}",
                ns = owner.namespace
            )
        })
        .collect()
}

/// The StatefulSet of a worker pool.
pub fn stateful_set(
    owner: &Owner<'_>,
    pool: Pool,
    model: &ModelSpec,
    replicas: i32,
    settings: &Settings,
) -> StatefulSet {
    let image = model.image.as_deref().unwrap_or(&settings.sidecar_image);
    let mut container = sidecar_container(image, vec![], model.resources.as_ref(), &model.pod);
    let storage = model_storage(model, image, &container);
    container.args = Some(args(owner, pool, model, &storage.model_arg));
    // The operator's mount of the model, then the user's.
    let mut mounts = storage.mounts;
    mounts.extend(container.volume_mounts.take().into_iter().flatten());
    container.volume_mounts = (!mounts.is_empty()).then_some(mounts);
    // Left alone, candle and rayon size their pools from the node's CPUs, far
    // more than the pod's limit; the sidecar's `--threads` (env CODED_THREADS)
    // gets the limit instead, rounded up (the node's allocatable when unset).
    // A CODED_THREADS in the pool's `env` wins.
    let threads = EnvVar {
        name: "CODED_THREADS".to_string(),
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                resource: "limits.cpu".to_string(),
                divisor: Some(Quantity("1".to_string())),
                ..ResourceFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    container.env = Some(merge_env(vec![threads], &model.pod.env));
    let mut parts = PodParts {
        sidecar: container,
        init_containers: storage.init_container.into_iter().collect(),
        volumes: storage.volumes,
    };
    super::security::add_tls(owner, &mut parts, false);
    let scheduling = scheduling(owner, model);
    StatefulSet {
        metadata: owner.pool_meta(pool),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(owner.pool_name(pool)),
            // Instances are independent: start and replace them all at once.
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector {
                match_labels: Some(owner.pool_selector_labels(pool)),
                ..LabelSelector::default()
            },
            template: pod_template(owner.pool_labels(pool), parts, scheduling, &model.pod),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// The headless Service giving each instance of a pool its DNS name.
pub fn headless_service(owner: &Owner<'_>, pool: Pool) -> Service {
    Service {
        metadata: owner.pool_meta(pool),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(owner.pool_selector_labels(pool)),
            // The frontend judges instances by their answers and its own
            // health checks; publishing names before readiness spares it
            // negative DNS caching of an instance that is starting.
            publish_not_ready_addresses: Some(true),
            ports: Some(super::service_ports(SIDECAR_PORT, SIDECAR_GRPC_PORT)),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod parity_tests;
