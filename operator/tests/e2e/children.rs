//! What a `CodedInferenceService` should own, read back from the API server:
//! the spec each child was stored with, counts of children, and the status.

use std::collections::BTreeSet;

use coded_operator::crd::CodedInferenceService;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::cluster::{Cluster, wait_for};

/// `(status, reason)` of a condition of the resource.
pub fn condition<'a>(cis: &'a CodedInferenceService, type_: &str) -> Option<(&'a str, &'a str)> {
    cis.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.as_str(), c.reason.as_str()))
}

/// Waits until the status describes the current generation with every
/// instance ready and full redundancy; returns the resource as then stored.
pub async fn wait_ready(api: &Api<CodedInferenceService>, name: &str) -> CodedInferenceService {
    wait_for(
        &format!("{name} to be Ready with every instance"),
        || async {
            let cis = api.get(name).await.map_err(|e| e.to_string())?;
            let Some(status) = cis.status.clone() else {
                return Err("no status".to_string());
            };
            let spec = &cis.spec;
            let want = (
                cis.metadata.generation,
                spec.model_replicas(),
                spec.parity_replicas(),
                spec.frontend.replicas,
            );
            let seen = (
                status.observed_generation,
                status.model_ready,
                status.parity_ready,
                status.frontend_ready,
            );
            if seen == want
                && condition(&cis, "Ready") == Some(("True", "AllInstancesReady"))
                && condition(&cis, "Degraded").map(|c| c.0) == Some("False")
            {
                Ok(cis)
            } else {
                Err(format!(
                    "(generation, model, parity, frontend) {seen:?} of {want:?}, conditions {:?}",
                    status.conditions
                ))
            }
        },
    )
    .await
}

/// The children one resource should have, from its spec as stored.
pub struct Expected<'a> {
    pub cis: &'a CodedInferenceService,
    pub name: String,
    pub namespace: String,
    /// The operator's default `coded-sidecar` image (its CODED_SIDECAR_IMAGE).
    pub sidecar_image: &'a str,
}

impl<'a> Expected<'a> {
    pub fn new(cis: &'a CodedInferenceService, sidecar_image: &'a str) -> Self {
        Expected {
            cis,
            name: cis.name_any(),
            namespace: cis.namespace().expect("namespaced"),
            sidecar_image,
        }
    }

    /// A worker pool's headless Service, which the frontend resolves.
    fn service(&self, role: &str) -> String {
        format!("{}-{role}.{}.svc:8080", self.name, self.namespace)
    }

    /// The role label of parity l's pool: `parity`, then `parity-<l>`.
    fn parity_role(l: i32) -> String {
        match l {
            0 => "parity".to_string(),
            l => format!("parity-{l}"),
        }
    }

    /// Role labels of the worker pools: `model`, then one per parity.
    pub fn worker_roles(&self) -> Vec<String> {
        let mut roles = vec!["model".to_string()];
        roles.extend((0..self.cis.spec.coding.r).map(Self::parity_role));
        roles
    }

    /// What `--parity-service` should be: the one Service with r = 1,
    /// `l=` each Service with r ≥ 2.
    fn parity_services(&self) -> String {
        let r = self.cis.spec.coding.r;
        if r == 1 {
            return self.service("parity");
        }
        (0..r)
            .map(|l| format!("{l}={}", self.service(&Self::parity_role(l))))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The value after `flag` in a container's arguments.
fn flag<'c>(container: &'c Container, name: &str) -> Option<&'c str> {
    let args = container.args.as_ref()?;
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1).map(String::as_str)
}

fn get<K>(cluster: &Cluster, ns: &str) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::namespaced(cluster.client.clone(), ns)
}

/// The only controller owner of a child is the resource.
fn owned_by(meta: &ObjectMeta, cis: &CodedInferenceService) {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    assert_eq!(refs.len(), 1, "{:?}: {refs:?}", meta.name);
    let r = &refs[0];
    assert_eq!(
        (r.kind.as_str(), r.name.as_str(), Some(&r.uid), r.controller),
        (
            "CodedInferenceService",
            cis.name_any().as_str(),
            cis.uid().as_ref(),
            Some(true)
        ),
        "{:?}",
        meta.name
    );
}

fn pod_spec<'p>(template: &'p Option<PodSpec>, what: &str) -> &'p PodSpec {
    template
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: pod spec"))
}

/// Every child exists with the spec the resource asks for.
pub async fn check(cluster: &Cluster, want: &Expected<'_>) {
    let ns = want.namespace.as_str();
    let spec = &want.cis.spec;
    let scheduling = spec.scheduling.clone().unwrap_or_default();
    let sets: Api<StatefulSet> = get(cluster, ns);
    let r = spec.coding.r;
    let mut pools = vec![(
        "model".to_string(),
        spec.model.clone(),
        spec.model_replicas(),
    )];
    for l in 0..r {
        // With r ≥ 2, parity l's model is at `<uri>/<l>`.
        let mut model = spec.parity_model.clone();
        if r > 1 {
            model.uri = format!("{}/{l}", model.uri.trim_end_matches('/'));
        }
        pools.push((Expected::parity_role(l), model, spec.parity_replicas_of(l)));
    }
    for (role, model, replicas) in &pools {
        let (model, replicas) = (model, *replicas);
        let name = format!("{}-{role}", want.name);
        // Workers serve under their pool's name, the model's under the resource's.
        let served = if role == "model" {
            want.name.clone()
        } else {
            name.clone()
        };
        let sts = sets
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("StatefulSet {name}: {e}"));
        owned_by(&sts.metadata, want.cis);
        let s = sts.spec.as_ref().expect("spec");
        assert_eq!(s.replicas, Some(replicas), "{name}");
        assert_eq!(s.service_name.as_deref(), Some(name.as_str()), "{name}");
        let pod = pod_spec(&s.template.spec, &name);
        let c = &pod.containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some(model.image.as_deref().unwrap_or(want.sidecar_image)),
            "{name}"
        );
        assert_eq!(
            c.args.as_ref().and_then(|a| a.first()).map(String::as_str),
            Some("worker")
        );
        // Where the model is in the pod: the URI's path, the claim at
        // /mnt/models, or the emptyDir the storage-initializer fills.
        let source = model.source().expect("a URI the schema admits");
        assert_eq!(
            flag(c, "--model"),
            Some(source.model_path().as_str()),
            "{name}"
        );
        let initializers: Vec<&str> = pod
            .init_containers
            .iter()
            .flatten()
            .map(|i| i.name.as_str())
            .collect();
        let remote = matches!(source, coded_operator::crd::ModelSource::Remote(_));
        let want_init: &[&str] = if remote {
            &["storage-initializer"]
        } else {
            &[]
        };
        assert_eq!(initializers, want_init, "{name}");
        let drain = model.pod.drain_seconds();
        assert_eq!(
            flag(c, "--drain-delay-ms"),
            Some((drain * 1000).to_string().as_str()),
            "{name}"
        );
        assert_eq!(
            pod.termination_grace_period_seconds,
            Some(model.pod.termination_grace_period_seconds()),
            "{name}"
        );
        let volumes: Vec<&str> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        for v in &model.pod.volumes {
            assert!(
                volumes.contains(&v.name.as_str()),
                "{name}: volume {}",
                v.name
            );
        }
        assert_eq!(flag(c, "--model-name"), Some(served.as_str()), "{name}");
        // A pool that requests a GPU runs its workers on CUDA.
        let gpu = coded_operator::reconcile::children::gpu::wants_gpu(model);
        assert_eq!(flag(c, "--device"), gpu.then_some("cuda"), "{name}");
        assert_eq!(
            c.resources.as_ref().filter(|r| **r != Default::default()),
            model.resources.as_ref(),
            "{name}"
        );
        assert_eq!(
            pod.node_selector.clone().unwrap_or_default(),
            scheduling.node_selector,
            "{name}"
        );
        assert_eq!(
            pod.tolerations.clone().unwrap_or_default(),
            scheduling.tolerations,
            "{name}"
        );
        assert_eq!(
            pod.runtime_class_name, scheduling.runtime_class_name,
            "{name}"
        );
    }

    let deployments: Api<Deployment> = get(cluster, ns);
    let name = format!("{}-frontend", want.name);
    let frontend = deployments
        .get(&name)
        .await
        .unwrap_or_else(|e| panic!("Deployment {name}: {e}"));
    owned_by(&frontend.metadata, want.cis);
    let s = frontend.spec.as_ref().expect("spec");
    assert_eq!(s.replicas, Some(spec.frontend.replicas));
    let pod = pod_spec(&s.template.spec, &name);
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(spec.frontend.image.as_deref().unwrap_or(want.sidecar_image))
    );
    let coding = &spec.coding;
    let expected_args = [
        ("--model-name", want.name.clone()),
        ("--k", coding.k.to_string()),
        ("--r", coding.r.to_string()),
        ("--encoder", json_str(&coding.encoder)),
        ("--decoder", json_str(&coding.decoder)),
        ("--reconstruct-policy", json_str(&coding.reconstruct_policy)),
        ("--model-service", want.service("model")),
        ("--parity-service", want.parity_services()),
    ];
    for (f, value) in expected_args {
        assert_eq!(flag(c, f), Some(value.as_str()), "{name} {f}");
    }
    assert_eq!(
        flag(c, "--model-card"),
        None,
        "{name}: metadata from an instance"
    );
    assert_eq!(
        flag(c, "--prometheus-url"),
        spec.prometheus.as_ref().map(|p| p.url.as_str()),
        "{name}"
    );
    // Frontends are placed by `frontend.scheduling`; without it they follow
    // the workers' tolerations but not their node selector (they need no GPU).
    match &spec.frontend.scheduling {
        Some(own) => {
            assert_eq!(
                pod.tolerations.clone().unwrap_or_default(),
                own.tolerations,
                "{name}"
            );
            let selector = (!own.node_selector.is_empty()).then(|| own.node_selector.clone());
            assert_eq!(pod.node_selector, selector, "{name}");
        }
        None => {
            assert_eq!(
                pod.tolerations.clone().unwrap_or_default(),
                scheduling.tolerations,
                "{name}"
            );
            assert_eq!(pod.node_selector, None, "{name}");
        }
    }

    let mut roles = want.worker_roles();
    roles.push("frontend".to_string());
    let services: Api<Service> = get(cluster, ns);
    for role in &roles {
        let role = role.as_str();
        let name = format!("{}-{role}", want.name);
        let svc = services
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("Service {name}: {e}"));
        owned_by(&svc.metadata, want.cis);
        let s = svc.spec.expect("spec");
        let port = &s.ports.as_deref().expect("ports")[0];
        assert_eq!(
            port.target_port,
            Some(IntOrString::String("http".into())),
            "{name}"
        );
        if role == "frontend" {
            assert_ne!(
                s.cluster_ip.as_deref(),
                Some("None"),
                "{name} has a virtual IP"
            );
            assert_eq!(port.port, spec.frontend.port, "{name}");
        } else {
            assert_eq!(s.cluster_ip.as_deref(), Some("None"), "{name} is headless");
        }
        let selector = s.selector.expect("selector");
        assert_eq!(
            selector.get("coded.dev/role").map(String::as_str),
            Some(role)
        );
    }

    let pdbs: Api<PodDisruptionBudget> = get(cluster, ns);
    for role in &roles {
        let name = format!("{}-{role}", want.name);
        let pdb = pdbs
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("PDB {name}: {e}"));
        owned_by(&pdb.metadata, want.cis);
        assert_eq!(
            pdb.spec.and_then(|s| s.max_unavailable),
            Some(IntOrString::Int(1)),
            "{name}"
        );
    }

    // The workers' fence, as the API server stored it: their pods, reached
    // by the frontend's only (and the monitoring namespace's).
    let name = format!("{}-workers", want.name);
    let np = get::<NetworkPolicy>(cluster, ns)
        .get(&name)
        .await
        .unwrap_or_else(|e| panic!("NetworkPolicy {name}: {e}"));
    owned_by(&np.metadata, want.cis);
    let np = np.spec.expect("spec");
    let fenced = np.pod_selector.expect("pod selector");
    let fenced_roles = fenced.match_expressions.expect("role expression");
    assert_eq!(
        fenced_roles[0].values.as_deref(),
        Some(&want.worker_roles()[..]),
        "{name}"
    );
    let from = np.ingress.expect("ingress")[0].from.clone().expect("from");
    let frontend = from[0].pod_selector.clone().expect("frontend pods");
    assert_eq!(
        frontend
            .match_labels
            .expect("labels")
            .get("coded.dev/role")
            .map(String::as_str),
        Some("frontend")
    );

    // The frontend's: serving ports from anywhere, metrics from monitoring.
    let name = format!("{}-frontend", want.name);
    let np = get::<NetworkPolicy>(cluster, ns)
        .get(&name)
        .await
        .unwrap_or_else(|e| panic!("NetworkPolicy {name}: {e}"));
    owned_by(&np.metadata, want.cis);
    let rules = np.spec.expect("spec").ingress.expect("ingress");
    assert_eq!(rules[0].from, None, "{name}: queries from anywhere");
    assert!(
        rules[1..].iter().all(|r| {
            r.ports
                .iter()
                .flatten()
                .all(|p| p.port == Some(IntOrString::String("metrics".into())))
        }),
        "{name}: only the metrics port is fenced"
    );

    // The pods themselves, made by the StatefulSet and ReplicaSet controllers.
    let pods: Api<Pod> = get(cluster, ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("coded.dev/service={}", want.name)))
        .await
        .expect("pods");
    let running: Vec<&Pod> = list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let count = |role: &str| {
        running
            .iter()
            .filter(|p| p.labels().get("coded.dev/role").map(String::as_str) == Some(role))
            .count() as i32
    };
    assert_eq!(
        (count("model"), count("frontend")),
        (spec.model_replicas(), spec.frontend.replicas),
        "pods of {}",
        want.name
    );
    for l in 0..r {
        let role = Expected::parity_role(l);
        assert_eq!(
            count(&role),
            spec.parity_replicas_of(l),
            "{role} pods of {}",
            want.name
        );
    }
    let parity_pods = running
        .iter()
        .filter(|p| {
            p.labels()
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some("parity")
        })
        .count() as i32;
    assert_eq!(
        parity_pods,
        spec.parity_replicas(),
        "parity pods of {}",
        want.name
    );
}

/// An enum's wire value, e.g. `"sum"`.
fn json_str<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .expect("a string enum")
}

/// Counts of the objects in a namespace that belong to coded services.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub stateful_sets: usize,
    pub services: usize,
    pub deployments: usize,
    pub pdbs: usize,
    pub network_policies: usize,
    pub replica_sets: usize,
    pub pods: usize,
}

impl Inventory {
    pub fn total(&self) -> usize {
        self.stateful_sets
            + self.services
            + self.deployments
            + self.pdbs
            + self.network_policies
            + self.replica_sets
            + self.pods
    }
}

async fn count<K>(cluster: &Cluster, ns: &str, selector: &str) -> usize
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = get(cluster, ns);
    api.list(&ListParams::default().labels(selector))
        .await
        .expect("list")
        .items
        .iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .count()
}

async fn inventory_of(cluster: &Cluster, ns: &str, selector: &str) -> Inventory {
    Inventory {
        stateful_sets: count::<StatefulSet>(cluster, ns, selector).await,
        services: count::<Service>(cluster, ns, selector).await,
        deployments: count::<Deployment>(cluster, ns, selector).await,
        pdbs: count::<PodDisruptionBudget>(cluster, ns, selector).await,
        network_policies: count::<NetworkPolicy>(cluster, ns, selector).await,
        replica_sets: count::<ReplicaSet>(cluster, ns, selector).await,
        pods: count::<Pod>(cluster, ns, selector).await,
    }
}

/// Everything labelled as belonging to the resource `name`, pods included.
pub async fn inventory(cluster: &Cluster, ns: &str, name: &str) -> Inventory {
    inventory_of(cluster, ns, &format!("coded.dev/service={name}")).await
}

/// Everything of every coded service in the namespace.
pub async fn inventory_all(cluster: &Cluster, ns: &str) -> Inventory {
    inventory_of(cluster, ns, "coded.dev/service").await
}

/// Every child the operator made has one owner, its own resource, and each
/// resource owns exactly one child per kind and role.
pub async fn check_single_owner(cluster: &Cluster, ns: &str) {
    let all: Vec<CodedInferenceService> = get::<CodedInferenceService>(cluster, ns)
        .list(&ListParams::default())
        .await
        .expect("list")
        .items;
    let mut seen = BTreeSet::new();
    let metas: Vec<(String, ObjectMeta)> = [
        metas::<StatefulSet>(cluster, ns, "StatefulSet").await,
        metas::<Service>(cluster, ns, "Service").await,
        metas::<Deployment>(cluster, ns, "Deployment").await,
        metas::<PodDisruptionBudget>(cluster, ns, "PodDisruptionBudget").await,
        metas::<NetworkPolicy>(cluster, ns, "NetworkPolicy").await,
    ]
    .concat();
    for (kind, meta) in metas {
        let service = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("coded.dev/service"))
            .cloned()
            .expect("label");
        let cis = all
            .iter()
            .find(|c| c.name_any() == service)
            .expect("its resource exists");
        owned_by(&meta, cis);
        let role = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("coded.dev/role"))
            .cloned()
            // The two NetworkPolicies (NAME-workers, NAME-frontend) carry no
            // role: each is one of a kind by its name.
            .or_else(|| (kind == "NetworkPolicy").then(|| meta.name.clone().unwrap_or_default()))
            .expect("role label");
        assert!(
            seen.insert((kind.clone(), service.clone(), role.clone())),
            "two {kind}s of {service}/{role}"
        );
    }
}

async fn metas<K>(cluster: &Cluster, ns: &str, kind: &str) -> Vec<(String, ObjectMeta)>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    get::<K>(cluster, ns)
        .list(&ListParams::default().labels("coded.dev/service"))
        .await
        .expect("list")
        .items
        .into_iter()
        .map(|o| (kind.to_string(), o.meta().clone()))
        .collect()
}
