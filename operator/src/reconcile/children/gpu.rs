//! What makes a worker pool a GPU pool: it requests `nvidia.com/gpu`, and
//! then its pods get the NVIDIA runtime class and tolerate GPU nodes' taint
//! (the worker also gets `--device cuda`, see [`super::worker::args`]).

use k8s_openapi::api::core::v1::Toleration;

use super::Owner;
use crate::crd::{ModelSpec, SchedulingSpec};

/// The extended resource a GPU pool requests (NVIDIA's device plugin).
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The runtime class GPU pods get unless the spec names one: the one the
/// NVIDIA GPU Operator installs. `scheduling.runtimeClassName: ""` opts out
/// (clusters whose default runtime already exposes GPUs).
pub const GPU_RUNTIME_CLASS: &str = "nvidia";

/// Whether a pool's instances request a GPU (`nvidia.com/gpu` above zero in
/// their limits or requests).
pub fn wants_gpu(model: &ModelSpec) -> bool {
    let Some(resources) = &model.resources else {
        return false;
    };
    [&resources.limits, &resources.requests]
        .into_iter()
        .flatten()
        .filter_map(|m| m.get(GPU_RESOURCE))
        .any(|q| !matches!(q.0.trim(), "" | "0"))
}

/// Where a pool's pods go: the spec's scheduling; for a GPU pool also the
/// `nvidia` runtime class (unless one is named, or `""` opts out) and a
/// toleration of the `nvidia.com/gpu` taint GPU nodes usually carry.
pub fn scheduling(owner: &Owner<'_>, model: &ModelSpec) -> SchedulingSpec {
    let mut scheduling = owner.cis.spec.scheduling.clone().unwrap_or_default();
    let named = scheduling.runtime_class_name.take();
    if !wants_gpu(model) {
        scheduling.runtime_class_name = named.filter(|c| !c.is_empty());
        return scheduling;
    }
    scheduling.runtime_class_name = match named {
        None => Some(GPU_RUNTIME_CLASS.to_string()),
        Some(c) => (!c.is_empty()).then_some(c),
    };
    let tolerated = scheduling.tolerations.iter().any(|t| {
        t.operator.as_deref() == Some("Exists") && t.key.is_none()
            || t.key.as_deref() == Some(GPU_RESOURCE)
    });
    if !tolerated {
        scheduling.tolerations.push(Toleration {
            key: Some(GPU_RESOURCE.to_string()),
            operator: Some("Exists".to_string()),
            effect: Some("NoSchedule".to_string()),
            ..Toleration::default()
        });
    }
    scheduling
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::cis;
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;

    #[test]
    fn a_gpu_request_in_requests_counts_and_zero_gpus_do_not() {
        let mut spec = cis("demo").spec.model;
        spec.resources = Some(ResourceRequirements {
            requests: Some(BTreeMap::from([(
                GPU_RESOURCE.to_string(),
                Quantity("2".to_string()),
            )])),
            ..ResourceRequirements::default()
        });
        assert!(wants_gpu(&spec));
        spec.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([(
                GPU_RESOURCE.to_string(),
                Quantity("0".to_string()),
            )])),
            ..ResourceRequirements::default()
        });
        assert!(!wants_gpu(&spec));
        spec.resources = None;
        assert!(!wants_gpu(&spec));
    }
}
