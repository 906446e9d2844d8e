//! The worker pools as built, r = 1 (as the operator has always built them).

use super::*;
use crate::crd::SchedulingSpec;
use crate::fixtures::cis;
use crate::reconcile::children::gpu::{GPU_RESOURCE, GPU_RUNTIME_CLASS};
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
            "/models/mlp",
            "--model-name",
            "demo",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--grpc-port",
            "8001",
            "--drain-delay-ms",
            "5000"
        ]
    );
    let parity_args = pod_spec(&c.parities[0].stateful_set).containers[0]
        .args
        .clone()
        .expect("args");
    assert_eq!(
        parity_args,
        [
            "worker",
            "--model",
            "/models/mlp-parity-k2",
            "--model-name",
            "demo-parity",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--grpc-port",
            "8001",
            "--drain-delay-ms",
            "5000"
        ]
    );
    assert_eq!(c.model.metadata.name.as_deref(), Some("demo-model"));
    assert_eq!(
        c.parities[0].stateful_set.metadata.name.as_deref(),
        Some("demo-parity")
    );
}

#[test]
fn replicas_default_to_k_and_r_and_follow_the_spec() {
    let mut cis = cis("demo");
    cis.spec.coding.k = 4;
    cis.spec.coding.r = 2;
    let owner = Owner::new(&cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    assert_eq!(c.model.spec.as_ref().and_then(|s| s.replicas), Some(4));
    // r instances by default, one per parity.
    let replicas: Vec<_> = c
        .parities
        .iter()
        .map(|p| p.stateful_set.spec.as_ref().and_then(|s| s.replicas))
        .collect();
    assert_eq!(replicas, [Some(1), Some(1)]);
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
        (
            &c.parities[0].stateful_set,
            &c.parities[0].service,
            "parity",
        ),
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
    assert_eq!(
        pod_spec(&c.parities[0].stateful_set).containers[0].resources,
        None
    );
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
        ..SchedulingSpec::default()
    });
    let owner = Owner::new(&cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    for sts in [&c.model, &c.parities[0].stateful_set] {
        let pod = pod_spec(sts);
        assert_eq!(pod.node_selector.as_ref().expect("selector")["gpu"], "a100");
        assert_eq!(pod.tolerations.as_ref().expect("tolerations").len(), 1);
        assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
    }
}

fn gpu_limits() -> ResourceRequirements {
    ResourceRequirements {
        limits: Some(BTreeMap::from([(
            GPU_RESOURCE.to_string(),
            Quantity("1".to_string()),
        )])),
        ..ResourceRequirements::default()
    }
}

#[test]
fn a_gpu_pool_runs_on_cuda_under_the_nvidia_runtime_and_tolerates_gpu_nodes() {
    let mut cis = cis("demo");
    cis.spec.model.resources = Some(gpu_limits());
    let owner = Owner::new(&cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    let model = pod_spec(&c.model);
    let args = model.containers[0].args.clone().expect("args");
    assert_eq!(arg_after(&args, "--device"), Some("cuda"));
    assert_eq!(model.runtime_class_name.as_deref(), Some(GPU_RUNTIME_CLASS));
    let tolerations = model.tolerations.clone().expect("tolerations");
    assert_eq!(
        tolerations,
        [Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }]
    );
    // The parity pool asked for no GPU: it stays a CPU pod.
    let parity = pod_spec(&c.parities[0].stateful_set);
    let args = parity.containers[0].args.clone().expect("args");
    assert!(!args.contains(&"--device".to_string()), "{args:?}");
    assert_eq!(parity.runtime_class_name, None);
    assert_eq!(parity.tolerations, None);
}

#[test]
fn the_spec_scheduling_of_a_gpu_pool_is_kept_not_doubled() {
    let mut cis = cis("demo");
    cis.spec.parity_model.resources = Some(gpu_limits());
    // As deploy/examples/resnet-k4-gpu.yaml: its own class and toleration.
    cis.spec.scheduling = Some(SchedulingSpec {
        tolerations: vec![Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }],
        runtime_class_name: Some("nvidia-cdi".into()),
        ..SchedulingSpec::default()
    });
    let owner = Owner::new(&cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    let parity = pod_spec(&c.parities[0].stateful_set);
    assert_eq!(parity.runtime_class_name.as_deref(), Some("nvidia-cdi"));
    assert_eq!(parity.tolerations.as_ref().map(Vec::len), Some(1));
    // An empty class opts out of any runtime class.
    cis.spec.scheduling = Some(SchedulingSpec {
        runtime_class_name: Some(String::new()),
        ..SchedulingSpec::default()
    });
    let owner = Owner::new(&cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    assert_eq!(
        pod_spec(&c.parities[0].stateful_set).runtime_class_name,
        None
    );
    assert_eq!(
        pod_spec(&c.parities[0].stateful_set)
            .tolerations
            .as_ref()
            .map(Vec::len),
        Some(1)
    );
    // No pool passes an empty class on (the API server refuses it).
    assert_eq!(pod_spec(&c.model).runtime_class_name, None);
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
        image(&c.parities[0].stateful_set).as_deref(),
        Some("registry.example/sidecar:cuda")
    );
}

fn overrides() -> serde_json::Value {
    serde_json::json!({
        "env": [
            {"name": "CODED_THREADS", "value": "3"},
            {"name": "RUST_LOG", "value": "debug"},
        ],
        "envFrom": [{"secretRef": {"name": "s3-credentials"}}],
        "volumes": [{"name": "model", "configMap": {"name": "fashion-mlp"}}],
        "volumeMounts": [{"name": "model", "mountPath": "/models/fashion-mlp", "readOnly": true}],
        "serviceAccountName": "model-reader",
        "imagePullSecrets": [{"name": "registry"}],
        "imagePullPolicy": "IfNotPresent",
        "drainSeconds": 7,
    })
}

fn with_model(uri: &str, extra: serde_json::Value) -> crate::crd::CodedInferenceService {
    let mut cis = cis("demo");
    let mut model = extra;
    model["uri"] = uri.into();
    cis.spec.model = serde_json::from_value(model).expect("model spec");
    cis
}

fn model_pod(cis: &crate::crd::CodedInferenceService) -> PodSpec {
    let owner = Owner::new(cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    pod_spec(&c.model).clone()
}

fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

#[test]
fn pod_settings_reach_the_pod_and_the_sidecar() {
    let cis = with_model("/models/fashion-mlp", overrides());
    let pod = model_pod(&cis);
    let c = &pod.containers[0];
    // The user's CODED_THREADS replaces the operator's; order is kept.
    let env = c.env.clone().expect("env");
    let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["CODED_THREADS", "RUST_LOG"]);
    assert_eq!(env[0].value.as_deref(), Some("3"));
    assert_eq!(env[0].value_from, None);
    let env_from = c.env_from.clone().expect("envFrom");
    assert_eq!(
        env_from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
        Some("s3-credentials")
    );
    let mounts = c.volume_mounts.clone().expect("mounts");
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].mount_path, "/models/fashion-mlp");
    let volumes = pod.volumes.clone().expect("volumes");
    assert_eq!(volumes.len(), 1);
    assert_eq!(
        volumes[0].config_map.as_ref().map(|c| c.name.as_str()),
        Some("fashion-mlp")
    );
    assert_eq!(pod.init_containers, None, "a path needs no initializer");
    assert_eq!(pod.service_account_name.as_deref(), Some("model-reader"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(
        pod.image_pull_secrets.clone().expect("pull secrets")[0].name,
        "registry"
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let args = c.args.clone().expect("args");
    assert_eq!(arg_after(&args, "--model"), Some("/models/fashion-mlp"));
    // Graceful stop: preStop sleep, the sidecar's drain, and a grace
    // period that covers both plus requests in flight.
    let sleep = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map(|s| s.seconds);
    assert_eq!(sleep, Some(7));
    assert_eq!(arg_after(&args, "--drain-delay-ms"), Some("7000"));
    assert_eq!(pod.termination_grace_period_seconds, Some(44));
    // The parity pool has settings of its own: none here.
    let owner = Owner::new(&cis).expect("owner");
    let parities = Children::build(&owner, &Settings::default()).parities;
    let parity = pod_spec(&parities[0].stateful_set);
    assert_eq!(parity.service_account_name, None);
    assert_eq!(parity.volumes, None);
    assert_eq!(parity.termination_grace_period_seconds, Some(40));
    let env = parity.containers[0].env.clone().expect("env");
    assert_eq!(env.len(), 1);
    assert!(env[0].value_from.is_some(), "the operator's CODED_THREADS");
}

#[test]
fn drain_and_grace_defaults_and_zero() {
    let pod = model_pod(&cis("demo"));
    let c = &pod.containers[0];
    let sleep = c
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.sleep.as_ref())
        .map(|s| s.seconds);
    assert_eq!(sleep, Some(5));
    assert_eq!(pod.termination_grace_period_seconds, Some(40));
    let cis = with_model(
        "/m",
        serde_json::json!({"drainSeconds": 0, "terminationGracePeriodSeconds": 10}),
    );
    let pod = model_pod(&cis);
    assert_eq!(pod.containers[0].lifecycle, None, "no preStop");
    let args = pod.containers[0].args.clone().expect("args");
    assert_eq!(arg_after(&args, "--drain-delay-ms"), Some("0"));
    assert_eq!(pod.termination_grace_period_seconds, Some(10));
}

#[test]
fn a_pvc_model_is_mounted_before_the_users_volumes() {
    let cis = with_model("pvc://models/fashion/mlp", overrides());
    let pod = model_pod(&cis);
    let c = &pod.containers[0];
    let args = c.args.clone().expect("args");
    assert_eq!(arg_after(&args, "--model"), Some("/mnt/models/fashion/mlp"));
    let volumes: Vec<String> = pod
        .volumes
        .clone()
        .expect("volumes")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(volumes, ["model-pvc", "model"]);
    let mounts = c.volume_mounts.clone().expect("mounts");
    assert_eq!(mounts[0].mount_path, "/mnt/models");
    assert_eq!(mounts[0].read_only, Some(true));
    assert_eq!(mounts[1].name, "model");
    assert_eq!(pod.init_containers, None);
}

#[test]
fn a_remote_model_is_fetched_by_the_storage_initializer() {
    let cis = with_model("s3://bucket/fashion-mlp", overrides());
    let pod = model_pod(&cis);
    let c = &pod.containers[0];
    let args = c.args.clone().expect("args");
    assert_eq!(arg_after(&args, "--model"), Some("/mnt/models"));
    let init = pod.init_containers.clone().expect("init containers");
    assert_eq!(init.len(), 1);
    let init = &init[0];
    assert_eq!(init.name, "storage-initializer");
    assert_eq!(init.image, c.image);
    assert_eq!(
        init.args.clone().expect("args"),
        [
            "fetch",
            "--uri",
            "s3://bucket/fashion-mlp",
            "--out",
            "/mnt/models"
        ]
    );
    // The user's env (credentials), not the operator's CODED_THREADS.
    let env = init.env.clone().expect("env");
    assert_eq!(env.len(), 2);
    assert_eq!(env[0].value.as_deref(), Some("3"));
    assert_eq!(init.env_from, c.env_from);
    assert_eq!(init.security_context, c.security_context);
    assert_eq!(init.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(init.lifecycle, None);
    let init_mounts = init.volume_mounts.clone().expect("mounts");
    assert_eq!(init_mounts[0].name, "model-cache");
    assert_eq!(init_mounts[0].read_only, Some(false));
    let mounts = c.volume_mounts.clone().expect("mounts");
    assert_eq!(mounts[0].name, "model-cache");
    assert_eq!(mounts[0].mount_path, "/mnt/models");
    assert_eq!(mounts[0].read_only, Some(true));
    let cache = pod
        .volumes
        .clone()
        .expect("volumes")
        .into_iter()
        .find(|v| v.name == "model-cache")
        .expect("model-cache");
    assert!(cache.empty_dir.is_some());
}

#[test]
fn affinity_and_topology_spread_apply_to_workers() {
    let mut cis = cis("demo");
    cis.spec.scheduling = Some(
        serde_json::from_value(serde_json::json!({
            "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"coded.dev/service": "demo"}},
                },
            }]}},
            "topologySpreadConstraints": [{
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"coded.dev/role": "model"}},
            }],
        }))
        .expect("scheduling"),
    );
    let pod = model_pod(&cis);
    assert!(
        pod.affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .is_some()
    );
    let spread = pod.topology_spread_constraints.expect("spread");
    assert_eq!(spread[0].topology_key, "topology.kubernetes.io/zone");
}

#[test]
fn endpoints_list_every_instance_by_stable_name() {
    let cis = cis("demo");
    let owner = Owner::new(&cis).expect("owner");
    assert_eq!(
        endpoints(&owner, Pool::Parity(0), 2),
        [
            "http://demo-parity-0.demo-parity.ns1.svc:8080",
            "http://demo-parity-1.demo-parity.ns1.svc:8080"
        ]
    );
}
