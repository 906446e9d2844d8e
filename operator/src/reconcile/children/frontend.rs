//! The frontend: a Deployment of `coded-sidecar frontend` processes, each
//! given the headless Services of the model and parity pools, whose
//! addresses it resolves again every second (so a replica change does not
//! roll the frontends), behind a ClusterIP Service that is the resource's
//! endpoint.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{ContainerPort, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    METRICS_PORT_NAME, Owner, PodParts, Pool, Role, Settings, drain_args, pod_template,
    sidecar_container,
};
use crate::crd::SchedulingSpec;
use crate::{FRONTEND_METRICS_PORT, SIDECAR_GRPC_PORT, SIDECAR_PORT};

/// The `coded-sidecar frontend` arguments.
pub fn args(owner: &Owner<'_>, settings: &Settings) -> Vec<String> {
    let spec = &owner.cis.spec;
    let coding = &spec.coding;
    // The pools' headless Services (worker::headless_service): each pod's
    // address is an instance.
    let service = |pool: Pool| {
        format!(
            "{}.{}.svc:{SIDECAR_PORT}",
            owner.pool_name(pool),
            owner.namespace
        )
    };
    let model_service = service(Pool::Model);
    // With r ≥ 2 each parity's Service as `l=HOST:PORT`; r = 1 as it always was.
    let parity_service = if coding.r > 1 {
        (0..coding.r)
            .map(|l| format!("{l}={}", service(Pool::Parity(l))))
            .collect::<Vec<_>>()
            .join(",")
    } else {
        service(Pool::Parity(0))
    };
    let mut args: Vec<String> = [
        "frontend",
        "--host",
        "0.0.0.0",
        "--port",
        &SIDECAR_PORT.to_string(),
        "--grpc-port",
        &SIDECAR_GRPC_PORT.to_string(),
        "--metrics-port",
        &FRONTEND_METRICS_PORT.to_string(),
        "--model-name",
        &owner.name,
        "--model-service",
        &model_service,
        "--parity-service",
        &parity_service,
        "--k",
        &coding.k.to_string(),
        "--r",
        &coding.r.to_string(),
        "--encoder",
        coding.encoder.as_arg(),
        "--decoder",
        coding.decoder.as_arg(),
        "--reconstruct-policy",
        coding.reconstruct_policy.as_arg(),
    ]
    .map(String::from)
    .to_vec();
    if let Some(url) = settings.prometheus_url(owner.cis) {
        // Only this resource's pods: names repeat across namespaces.
        args.extend([
            "--prometheus-url".to_string(),
            url.to_string(),
            "--prometheus-selector".to_string(),
            format!(
                "namespace=\"{}\",coded_dev_service=\"{}\"",
                owner.namespace, owner.name
            ),
        ]);
    }
    args
}

/// Where frontend pods go: `frontend.scheduling`, or else only the workers'
/// tolerations, since a frontend needs no accelerator.
pub fn scheduling(owner: &Owner<'_>) -> SchedulingSpec {
    let spec = &owner.cis.spec;
    spec.frontend
        .scheduling
        .clone()
        .unwrap_or_else(|| SchedulingSpec {
            tolerations: spec
                .scheduling
                .as_ref()
                .map(|s| s.tolerations.clone())
                .unwrap_or_default(),
            ..SchedulingSpec::default()
        })
}

pub fn deployment(owner: &Owner<'_>, settings: &Settings) -> Deployment {
    let spec = &owner.cis.spec.frontend;
    let image = spec.image.as_deref().unwrap_or(&settings.sidecar_image);
    let mut args = args(owner, settings);
    args.extend(drain_args(&spec.pod));
    let mut sidecar = sidecar_container(image, args, spec.resources.as_ref(), &spec.pod);
    sidecar
        .ports
        .get_or_insert_with(Vec::new)
        .push(ContainerPort {
            name: Some(METRICS_PORT_NAME.to_string()),
            container_port: FRONTEND_METRICS_PORT,
            protocol: Some("TCP".to_string()),
            ..ContainerPort::default()
        });
    let mut parts = PodParts {
        sidecar,
        init_containers: vec![],
        volumes: vec![],
    };
    super::security::add_tls(owner, &mut parts, true);
    super::security::add_auth(owner, &mut parts);
    let scheduling = scheduling(owner);
    Deployment {
        metadata: owner.meta(Role::Frontend),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(owner.selector_labels(Role::Frontend)),
                ..LabelSelector::default()
            },
            template: pod_template(owner.labels(Role::Frontend), parts, scheduling, &spec.pod),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The resource's endpoint: HTTP and gRPC, plus the metrics port that the
/// ServiceMonitor finds by name (its NetworkPolicy lets only the monitoring
/// namespace through).
pub fn service(owner: &Owner<'_>) -> Service {
    let mut ports = super::service_ports(
        owner.cis.spec.frontend.port,
        owner.cis.spec.frontend.grpc_port,
    );
    ports.push(ServicePort {
        name: Some(METRICS_PORT_NAME.to_string()),
        port: FRONTEND_METRICS_PORT,
        target_port: Some(IntOrString::String(METRICS_PORT_NAME.to_string())),
        protocol: Some("TCP".to_string()),
        ..ServicePort::default()
    });
    Service {
        metadata: owner.meta(Role::Frontend),
        spec: Some(ServiceSpec {
            selector: Some(owner.selector_labels(Role::Frontend)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{Encoder, PrometheusSpec, ReconstructPolicy};
    use crate::fixtures::cis;

    fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let i = args.iter().position(|a| a == flag)?;
        args.get(i + 1).map(String::as_str)
    }

    #[test]
    fn args_carry_the_code_and_the_pools_services() {
        let mut cis = cis("demo");
        cis.spec.coding.k = 3;
        cis.spec.coding.encoder = Encoder::Concat;
        cis.spec.coding.reconstruct_policy = ReconstructPolicy::Deadline;
        cis.spec.model.replicas = Some(4);
        let owner = Owner::new(&cis).expect("owner");
        let args = args(&owner, &Settings::default());
        assert_eq!(args[0], "frontend");
        assert_eq!(arg_after(&args, "--host"), Some("0.0.0.0"));
        assert_eq!(arg_after(&args, "--port"), Some("8080"));
        assert_eq!(arg_after(&args, "--grpc-port"), Some("8001"));
        assert_eq!(arg_after(&args, "--metrics-port"), Some("9090"));
        assert_eq!(arg_after(&args, "--model-name"), Some("demo"));
        // The model's metadata comes from a model instance: the URI means
        // nothing in the frontend's pod.
        assert_eq!(arg_after(&args, "--model-card"), None);
        assert_eq!(
            arg_after(&args, "--model-service"),
            Some("demo-model.ns1.svc:8080")
        );
        assert_eq!(
            arg_after(&args, "--parity-service"),
            Some("demo-parity.ns1.svc:8080")
        );
        assert!(!args.iter().any(|a| a.ends_with("-endpoints")));
        assert_eq!(arg_after(&args, "--k"), Some("3"));
        assert_eq!(arg_after(&args, "--r"), Some("1"));
        assert_eq!(arg_after(&args, "--encoder"), Some("concat"));
        assert_eq!(arg_after(&args, "--decoder"), Some("subtract"));
        assert_eq!(arg_after(&args, "--reconstruct-policy"), Some("deadline"));
        assert!(!args.contains(&"--prometheus-url".to_string()));
    }

    /// The frontend follows the pools through their Services, so a replica
    /// change leaves its pod template, and the running frontends, alone.
    #[test]
    fn a_replica_change_does_not_change_the_args() {
        let mut cis = cis("demo");
        let before = args(&Owner::new(&cis).expect("owner"), &Settings::default());
        cis.spec.model.replicas = Some(7);
        let after = args(&Owner::new(&cis).expect("owner"), &Settings::default());
        assert_eq!(before, after);
        // The names are those of the headless Services the workers sit behind.
        let owner = Owner::new(&cis).expect("owner");
        for (pool, flag) in [
            (Pool::Model, "--model-service"),
            (Pool::Parity(0), "--parity-service"),
        ] {
            let svc = super::super::worker::headless_service(&owner, pool);
            let name = svc.metadata.name.expect("name");
            let ns = svc.metadata.namespace.expect("namespace");
            let port = svc.spec.and_then(|s| s.ports).expect("ports")[0].port;
            assert_eq!(
                arg_after(&after, flag),
                Some(format!("{name}.{ns}.svc:{port}").as_str())
            );
        }
    }

    #[test]
    fn with_r_two_each_parity_is_named_with_its_index() {
        let mut cis = cis("demo");
        cis.spec.coding.k = 4;
        cis.spec.coding.r = 2;
        let owner = Owner::new(&cis).expect("owner");
        let args = args(&owner, &Settings::default());
        assert_eq!(arg_after(&args, "--r"), Some("2"));
        assert_eq!(
            arg_after(&args, "--parity-service"),
            Some("0=demo-parity.ns1.svc:8080,1=demo-parity-1.ns1.svc:8080")
        );
        // Each entry is the headless Service of that parity's pool.
        let entries = arg_after(&args, "--parity-service").unwrap_or_default();
        for (l, entry) in entries.split(',').enumerate() {
            let svc = super::super::worker::headless_service(&owner, Pool::Parity(l as i32));
            let name = svc.metadata.name.expect("name");
            assert_eq!(entry, format!("{l}={name}.ns1.svc:8080"));
        }
        assert_eq!(
            arg_after(&args, "--model-service"),
            Some("demo-model.ns1.svc:8080")
        );
    }

    #[test]
    fn prometheus_url_is_passed_only_when_set() {
        let mut cis = cis("demo");
        cis.spec.prometheus = Some(PrometheusSpec {
            url: "http://prom.monitoring.svc:9090".into(),
        });
        let owner = Owner::new(&cis).expect("owner");
        let settings = Settings::default();
        assert_eq!(
            arg_after(&args(&owner, &settings), "--prometheus-url"),
            Some("http://prom.monitoring.svc:9090")
        );
        assert_eq!(
            arg_after(&args(&owner, &settings), "--prometheus-selector"),
            Some(r#"namespace="ns1",coded_dev_service="demo""#)
        );
        // The operator's own Prometheus serves resources that name none.
        cis.spec.prometheus = None;
        let owner = Owner::new(&cis).expect("owner");
        assert_eq!(
            arg_after(&args(&owner, &settings), "--prometheus-url"),
            None
        );
        let operator_wide = Settings {
            prometheus_url: Some("http://prom:9090".into()),
            ..Settings::default()
        };
        assert_eq!(
            arg_after(&args(&owner, &operator_wide), "--prometheus-url"),
            Some("http://prom:9090")
        );
    }

    #[test]
    fn service_exposes_the_spec_port_and_selects_frontends() {
        let mut cis = cis("demo");
        cis.spec.frontend.port = 80;
        cis.spec.frontend.grpc_port = 9001;
        cis.spec.frontend.replicas = 3;
        let owner = Owner::new(&cis).expect("owner");
        let svc = service(&owner);
        let spec = svc.spec.expect("spec");
        let ports = spec.ports.expect("ports");
        assert_eq!(ports[0].port, 80);
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("http".into()))
        );
        assert_eq!(ports[1].port, 9001);
        assert_eq!(ports[1].name.as_deref(), Some("grpc"));
        assert_eq!(
            ports[1].target_port,
            Some(IntOrString::String("grpc".into()))
        );
        // The metrics port, by name, for the ServiceMonitor.
        assert_eq!(ports[2].port, 9090);
        assert_eq!(ports[2].name.as_deref(), Some("metrics"));
        assert_eq!(
            ports[2].target_port,
            Some(IntOrString::String("metrics".into()))
        );
        assert_eq!(
            spec.selector.expect("selector")["coded.dev/role"],
            "frontend"
        );
        assert_eq!(svc.metadata.name.as_deref(), Some("demo-frontend"));
        let deploy = deployment(&owner, &Settings::default());
        let dspec = deploy.spec.expect("spec");
        assert_eq!(dspec.replicas, Some(3));
        let pod = dspec.template.spec.expect("pod");
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some(crate::DEFAULT_SIDECAR_IMAGE)
        );
        // The container serves what the Service's metrics port names.
        let metrics = pod.containers[0]
            .ports
            .as_ref()
            .expect("ports")
            .iter()
            .find(|p| p.name.as_deref() == Some("metrics"))
            .expect("metrics container port");
        assert_eq!(metrics.container_port, 9090);
        assert_eq!(
            pod.node_selector, None,
            "frontend needs no accelerator node"
        );
    }

    #[test]
    fn frontend_pods_take_their_own_pod_settings_and_drain() {
        let mut cis = cis("demo");
        cis.spec.frontend = serde_json::from_value(serde_json::json!({
            "env": [{"name": "RUST_LOG", "value": "info"}],
            "envFrom": [{"configMapRef": {"name": "frontend-settings"}}],
            "volumes": [{"name": "tls", "secret": {"secretName": "frontend-tls"}}],
            "volumeMounts": [{"name": "tls", "mountPath": "/etc/tls", "readOnly": true}],
            "serviceAccountName": "frontend",
            "imagePullSecrets": [{"name": "registry"}],
            "imagePullPolicy": "Always",
            "drainSeconds": 10,
            "terminationGracePeriodSeconds": 60,
        }))
        .expect("frontend spec");
        let owner = Owner::new(&cis).expect("owner");
        let pod = deployment(&owner, &Settings::default())
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.env.clone().expect("env")[0].name, "RUST_LOG");
        assert!(c.env_from.is_some());
        assert_eq!(c.volume_mounts.clone().expect("mounts")[0].name, "tls");
        assert_eq!(pod.volumes.clone().expect("volumes")[0].name, "tls");
        assert_eq!(pod.init_containers, None);
        assert_eq!(pod.service_account_name.as_deref(), Some("frontend"));
        assert_eq!(pod.image_pull_secrets.clone().expect("secrets").len(), 1);
        assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
        let sleep = c
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.sleep.as_ref())
            .map(|s| s.seconds);
        assert_eq!(sleep, Some(10));
        let args = c.args.clone().expect("args");
        assert_eq!(arg_after(&args, "--drain-delay-ms"), Some("10000"));
        // Defaults: a 5 s drain, 40 s to stop.
        let defaults = crate::fixtures::cis("demo");
        let owner = Owner::new(&defaults).expect("owner");
        let pod = deployment(&owner, &Settings::default())
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod");
        assert_eq!(pod.termination_grace_period_seconds, Some(40));
        let args = pod.containers[0].args.clone().expect("args");
        assert_eq!(arg_after(&args, "--drain-delay-ms"), Some("5000"));
    }

    #[test]
    fn frontend_takes_worker_tolerations_unless_placed_itself() {
        use k8s_openapi::api::core::v1::Toleration;
        use std::collections::BTreeMap;
        let mut cis = cis("demo");
        let taint = Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: Some("Exists".into()),
            ..Toleration::default()
        };
        cis.spec.scheduling = Some(SchedulingSpec {
            node_selector: BTreeMap::from([("gpu".into(), "a100".into())]),
            tolerations: vec![taint.clone()],
            runtime_class_name: Some("nvidia".into()),
            ..SchedulingSpec::default()
        });
        let pod = |cis: &crate::crd::CodedInferenceService| {
            let owner = Owner::new(cis).expect("owner");
            deployment(&owner, &Settings::default())
                .spec
                .and_then(|s| s.template.spec)
                .expect("pod")
        };
        let inherited = pod(&cis);
        assert_eq!(inherited.tolerations, Some(vec![taint]));
        assert_eq!(inherited.node_selector, None, "not tied to GPU nodes");
        assert_eq!(inherited.runtime_class_name, None);

        cis.spec.frontend.scheduling = Some(SchedulingSpec {
            node_selector: BTreeMap::from([("pool".into(), "cpu".into())]),
            ..SchedulingSpec::default()
        });
        let own = pod(&cis);
        assert_eq!(own.tolerations, None);
        assert_eq!(own.node_selector.expect("selector")["pool"], "cpu");
    }
}
