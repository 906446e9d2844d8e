//! Model and parity worker pools: a StatefulSet each, so every instance has a
//! stable DNS name (`<sts>-<i>.<service>.<ns>.svc`) that the frontend lists,
//! and a headless Service that publishes those names.

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, ResourceFieldSelector, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Owner, PORT_NAME, Role, Settings, pod_template, sidecar_container};
use crate::SIDECAR_PORT;
use crate::crd::ModelSpec;

/// The name a pool's workers serve their model under: the resource's name
/// for the model pool, `<name>-parity` for the parity pool. The frontend
/// derives the same names from its own `--model-name`.
pub fn served_name(owner: &Owner<'_>, role: Role) -> String {
    match role {
        Role::Parity => format!("{}-parity", owner.name),
        _ => owner.name.clone(),
    }
}

/// The `coded-sidecar worker` arguments for one model. Pods listen on every
/// interface (the worker's own default is loopback only).
pub fn args(owner: &Owner<'_>, role: Role, model: &ModelSpec) -> Vec<String> {
    [
        "worker",
        "--model",
        &model.uri,
        "--model-name",
        &served_name(owner, role),
        "--host",
        "0.0.0.0",
        "--port",
        &SIDECAR_PORT.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// URLs of the instances of a worker pool, in ordinal order.
pub fn endpoints(owner: &Owner<'_>, role: Role, replicas: i32) -> Vec<String> {
    let set = owner.child_name(role);
    (0..replicas)
        .map(|i| {
            format!(
                "http://{set}-{i}.{set}.{ns}.svc:{SIDECAR_PORT}",
                ns = owner.namespace
            )
        })
        .collect()
}

/// The StatefulSet of a worker pool (`role` is `Model` or `Parity`).
pub fn stateful_set(
    owner: &Owner<'_>,
    role: Role,
    model: &ModelSpec,
    replicas: i32,
    settings: &Settings,
) -> StatefulSet {
    let image = model.image.as_deref().unwrap_or(&settings.sidecar_image);
    let mut container =
        sidecar_container(image, args(owner, role, model), model.resources.as_ref());
    // Left alone, candle and rayon size their pools from the node's CPUs, far
    // more than the pod's limit; the sidecar's `--threads` (env CODED_THREADS)
    // gets the limit instead, rounded up (the node's allocatable when unset).
    container.env = Some(vec![EnvVar {
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
    }]);
    let scheduling = owner.cis.spec.scheduling.clone().unwrap_or_default();
    StatefulSet {
        metadata: owner.meta(role),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(owner.child_name(role)),
            // Instances are independent: start and replace them all at once.
            pod_management_policy: Some("Parallel".to_string()),
            selector: LabelSelector {
                match_labels: Some(owner.selector_labels(role)),
                ..LabelSelector::default()
            },
            template: pod_template(owner.labels(role), container, scheduling),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// The headless Service giving each instance of a pool its DNS name.
pub fn headless_service(owner: &Owner<'_>, role: Role) -> Service {
    Service {
        metadata: owner.meta(role),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(owner.selector_labels(role)),
            // The frontend judges instances by their answers and its own
            // health checks; publishing names before readiness spares it
            // negative DNS caching of an instance that is starting.
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_string()),
                port: SIDECAR_PORT,
                target_port: Some(IntOrString::String(PORT_NAME.to_string())),
                protocol: Some("TCP".to_string()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::SchedulingSpec;
    use crate::fixtures::cis;
    use crate::reconcile::children::{Children, ROLE_LABEL, SERVICE_LABEL};
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
    use std::collections::BTreeMap;

    fn pod_spec(sts: &StatefulSet) -> &PodSpec {
        sts.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod spec")
    }

    #[test]
    fn model_and_parity_pools_run_their_own_model() {
        let cis = cis("demo");
        let owner = Owner::new(&cis).expect("owner");
        let c = Children::build(&owner, &Settings::default());
        let model_args = pod_spec(&c.model).containers[0].args.clone().expect("args");
        assert_eq!(
            model_args,
            [
                "worker",
                "--model",
                "file:///models/mlp",
                "--model-name",
                "demo",
                "--host",
                "0.0.0.0",
                "--port",
                "8080"
            ]
        );
        let parity_args = pod_spec(&c.parity).containers[0]
            .args
            .clone()
            .expect("args");
        assert_eq!(
            parity_args,
            [
                "worker",
                "--model",
                "file:///models/mlp-parity-k2",
                "--model-name",
                "demo-parity",
                "--host",
                "0.0.0.0",
                "--port",
                "8080"
            ]
        );
        assert_eq!(c.model.metadata.name.as_deref(), Some("demo-model"));
        assert_eq!(c.parity.metadata.name.as_deref(), Some("demo-parity"));
    }

    #[test]
    fn replicas_default_to_k_and_r_and_follow_the_spec() {
        let mut cis = cis("demo");
        cis.spec.coding.k = 4;
        cis.spec.coding.r = 2;
        let owner = Owner::new(&cis).expect("owner");
        let c = Children::build(&owner, &Settings::default());
        assert_eq!(c.model.spec.as_ref().and_then(|s| s.replicas), Some(4));
        assert_eq!(c.parity.spec.as_ref().and_then(|s| s.replicas), Some(2));
        cis.spec.model.replicas = Some(6);
        let owner = Owner::new(&cis).expect("owner");
        let c = Children::build(&owner, &Settings::default());
        assert_eq!(c.model.spec.as_ref().and_then(|s| s.replicas), Some(6));
    }

    #[test]
    fn selector_matches_pod_labels_and_headless_service() {
        let cis = cis("demo");
        let owner = Owner::new(&cis).expect("owner");
        let c = Children::build(&owner, &Settings::default());
        for (sts, svc, role) in [
            (&c.model, &c.model_service, "model"),
            (&c.parity, &c.parity_service, "parity"),
        ] {
            let spec = sts.spec.as_ref().expect("spec");
            let selector = spec.selector.match_labels.as_ref().expect("selector");
            assert_eq!(selector[SERVICE_LABEL], "demo");
            assert_eq!(selector[ROLE_LABEL], role);
            let pod_labels = spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.as_ref());
            let pod_labels = pod_labels.expect("pod labels");
            assert!(selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)));
            let svc_spec = svc.spec.as_ref().expect("svc spec");
            assert_eq!(svc_spec.cluster_ip.as_deref(), Some("None"), "headless");
            assert_eq!(svc_spec.selector.as_ref(), Some(selector));
            assert_eq!(
                spec.service_name, svc.metadata.name,
                "pods get DNS names from it"
            );
        }
    }

    #[test]
    fn resources_and_gpus_reach_the_container() {
        let mut cis = cis("demo");
        let gpu = ResourceRequirements {
            limits: Some(BTreeMap::from([
                ("nvidia.com/gpu".to_string(), Quantity("1".to_string())),
                ("cpu".to_string(), Quantity("2".to_string())),
            ])),
            ..ResourceRequirements::default()
        };
        cis.spec.model.resources = Some(gpu.clone());
        let owner = Owner::new(&cis).expect("owner");
        let c = Children::build(&owner, &Settings::default());
        assert_eq!(
            pod_spec(&c.model).containers[0].resources.as_ref(),
            Some(&gpu)
        );
        assert_eq!(pod_spec(&c.parity).containers[0].resources, None);
        let env = pod_spec(&c.model).containers[0].env.clone().expect("env");
        assert_eq!(env[0].name, "CODED_THREADS");
        let field = env[0]
            .value_from
            .as_ref()
            .and_then(|v| v.resource_field_ref.as_ref());
        assert_eq!(field.map(|f| f.resource.as_str()), Some("limits.cpu"));
    }

    #[test]
    fn scheduling_applies_to_workers() {
        let mut cis = cis("demo");
        cis.spec.scheduling = Some(SchedulingSpec {
            node_selector: BTreeMap::from([("gpu".to_string(), "a100".to_string())]),
            tolerations: vec![Toleration {
                key: Some("nvidia.com/gpu".to_string()),
                operator: Some("Exists".to_string()),
                effect: Some("NoSchedule".to_string()),
                ..Toleration::default()
            }],
            runtime_class_name: Some("nvidia".to_string()),
        });
        let owner = Owner::new(&cis).expect("owner");
        let c = Children::build(&owner, &Settings::default());
        for sts in [&c.model, &c.parity] {
            let pod = pod_spec(sts);
            assert_eq!(pod.node_selector.as_ref().expect("selector")["gpu"], "a100");
            assert_eq!(pod.tolerations.as_ref().expect("tolerations").len(), 1);
            assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
        }
    }

    #[test]
    fn image_override_beats_the_operator_default() {
        let mut cis = cis("demo");
        cis.spec.parity_model.image = Some("registry.example/sidecar:cuda".into());
        let owner = Owner::new(&cis).expect("owner");
        let settings = Settings {
            sidecar_image: "registry.example/sidecar:1".into(),
            ..Settings::default()
        };
        let c = Children::build(&owner, &settings);
        let image = |sts: &StatefulSet| pod_spec(sts).containers[0].image.clone();
        assert_eq!(
            image(&c.model).as_deref(),
            Some("registry.example/sidecar:1")
        );
        assert_eq!(
            image(&c.parity).as_deref(),
            Some("registry.example/sidecar:cuda")
        );
    }

    #[test]
    fn endpoints_list_every_instance_by_stable_name() {
        let cis = cis("demo");
        let owner = Owner::new(&cis).expect("owner");
        assert_eq!(
            endpoints(&owner, Role::Parity, 2),
            [
                "http://demo-parity-0.demo-parity.ns1.svc:8080",
                "http://demo-parity-1.demo-parity.ns1.svc:8080"
            ]
        );
    }
}
