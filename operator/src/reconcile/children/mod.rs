//! The objects a `CodedInferenceService` owns, built as plain values from its
//! spec. Nothing here talks to the API server, so every field that matters is
//! unit-tested; [`super`] applies them.

pub mod frontend;
pub mod gpu;
pub mod network_policy;
pub mod pdb;
pub mod security;
pub mod service_monitor;
pub mod storage;
pub mod worker;

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, Lifecycle, LifecycleHandler,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecurityContext,
    Service, ServicePort, SleepAction, Volume,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt};

use crate::crd::{CodedInferenceService, PodOverrides, SchedulingSpec};
use crate::{Error, Result, SIDECAR_GRPC_PORT, SIDECAR_PORT};

/// Label naming the `CodedInferenceService` an object belongs to.
pub const SERVICE_LABEL: &str = "coded.dev/service";
/// Label naming the role of a pod: `model`, `parity` (parity 0; `parity-<l>`
/// for parity l ≥ 1, see [`Pool`]) or `frontend`.
pub const ROLE_LABEL: &str = "coded.dev/role";
/// Label carrying `l` on the pods and children of parity l, set when
/// `coding.r` ≥ 2 (and how stale parity pools are found: [`super::prune`]).
pub const PARITY_INDEX_LABEL: &str = "coded.dev/parity-index";
/// Label the operator's watches filter children by.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Name of the container port every sidecar serves on.
pub const PORT_NAME: &str = "http";
/// Name of the container (and Service) port of the v2 gRPC service.
pub const GRPC_PORT_NAME: &str = "grpc";
/// Name of the frontend's container (and Service) port of `/metrics` alone.
pub const METRICS_PORT_NAME: &str = "metrics";

/// The three kinds of pods of a coded service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Model,
    Parity,
    Frontend,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Model => "model",
            Role::Parity => "parity",
            Role::Frontend => "frontend",
        }
    }
}

/// A pool of workers: the model's, or the one of parity l (0..r).
///
/// Parity 0 keeps the names and selector it has with r = 1 (StatefulSet
/// selectors are immutable). Parity l ≥ 1 gets `<name>-parity-<l>` and the
/// role label `parity-<l>`: selectors only match labels equal to a value,
/// so a distinct role is what keeps parity 0's selector `role=parity`
/// (and its Service and PDB) from matching parity l's pods. All parity
/// pods share `app.kubernetes.io/component: parity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    Model,
    Parity(i32),
}

impl Pool {
    pub fn role(self) -> Role {
        match self {
            Pool::Model => Role::Model,
            Pool::Parity(_) => Role::Parity,
        }
    }

    /// The value of [`ROLE_LABEL`] on its pods: `model`, `parity`, `parity-<l>`.
    pub fn role_value(self) -> String {
        match self {
            Pool::Parity(l) if l > 0 => format!("{}-{l}", Role::Parity.as_str()),
            _ => self.role().as_str().to_string(),
        }
    }

    /// Every worker pool of a resource: the model's, then parity 0..r.
    pub fn all(r: i32) -> impl Iterator<Item = Pool> {
        std::iter::once(Pool::Model).chain((0..r.max(1)).map(Pool::Parity))
    }
}

/// Operator-wide settings the children depend on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Image of `coded-sidecar` used when the resource names none.
    pub sidecar_image: String,
    /// Prometheus for resources whose spec names none.
    pub prometheus_url: Option<String>,
    /// The namespace whose pods may scrape workers' `/metrics` through
    /// their NetworkPolicy; None: only the frontend reaches them.
    pub monitoring_namespace: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            sidecar_image: crate::DEFAULT_SIDECAR_IMAGE.to_string(),
            prometheus_url: None,
            monitoring_namespace: Some(crate::DEFAULT_MONITORING_NAMESPACE.to_string()),
        }
    }
}

impl Settings {
    /// The Prometheus a resource's latency is read from: its own, or the operator's.
    pub fn prometheus_url<'a>(&'a self, cis: &'a CodedInferenceService) -> Option<&'a str> {
        cis.spec
            .prometheus
            .as_ref()
            .map(|p| p.url.as_str())
            .or(self.prometheus_url.as_deref())
    }
}

/// The resource being reconciled, with what every child needs from it.
pub struct Owner<'a> {
    pub cis: &'a CodedInferenceService,
    pub name: String,
    pub namespace: String,
    owner_ref: OwnerReference,
}

impl<'a> Owner<'a> {
    pub fn new(cis: &'a CodedInferenceService) -> Result<Self> {
        let namespace = cis.namespace().ok_or(Error::MissingField("namespace"))?;
        // controller_owner_ref is None only without a uid, i.e. never for an object read from the API.
        let owner_ref = cis
            .controller_owner_ref(&())
            .ok_or(Error::MissingField("uid"))?;
        Ok(Self {
            cis,
            name: cis.name_any(),
            namespace,
            owner_ref,
        })
    }

    /// Name of the children of one role, e.g. `<name>-model`.
    pub fn child_name(&self, role: Role) -> String {
        format!("{}-{}", self.name, role.as_str())
    }

    /// Labels every pod of a role carries; also the selector of its workload.
    pub fn selector_labels(&self, role: Role) -> BTreeMap<String, String> {
        BTreeMap::from([
            (SERVICE_LABEL.to_string(), self.name.clone()),
            (ROLE_LABEL.to_string(), role.as_str().to_string()),
        ])
    }

    /// Labels of every child regardless of role.
    pub fn common_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (SERVICE_LABEL.to_string(), self.name.clone()),
            (
                "app.kubernetes.io/name".to_string(),
                "coded-serving".to_string(),
            ),
            ("app.kubernetes.io/instance".to_string(), self.name.clone()),
            (
                MANAGED_BY_LABEL.to_string(),
                crate::FIELD_MANAGER.to_string(),
            ),
        ])
    }

    /// Selector labels plus the recommended `app.kubernetes.io` ones.
    pub fn labels(&self, role: Role) -> BTreeMap<String, String> {
        let mut labels = self.common_labels();
        labels.extend(self.selector_labels(role));
        labels.insert(
            "app.kubernetes.io/component".to_string(),
            role.as_str().to_string(),
        );
        labels
    }

    /// Name of a worker pool's StatefulSet, headless Service and PDB:
    /// `<name>-model`, `<name>-parity`, `<name>-parity-<l>`.
    pub fn pool_name(&self, pool: Pool) -> String {
        format!("{}-{}", self.name, pool.role_value())
    }

    /// Labels selecting a pool's pods (its StatefulSet, Service and PDB).
    pub fn pool_selector_labels(&self, pool: Pool) -> BTreeMap<String, String> {
        BTreeMap::from([
            (SERVICE_LABEL.to_string(), self.name.clone()),
            (ROLE_LABEL.to_string(), pool.role_value()),
        ])
    }

    /// Labels of a pool's pods and children: for the model and, with
    /// r = 1, the parity exactly [`Self::labels`] of its role.
    pub fn pool_labels(&self, pool: Pool) -> BTreeMap<String, String> {
        let mut labels = self.labels(pool.role());
        labels.extend(self.pool_selector_labels(pool));
        if let Pool::Parity(l) = pool
            && self.cis.spec.coding.r > 1
        {
            labels.insert(PARITY_INDEX_LABEL.to_string(), l.to_string());
        }
        labels
    }

    /// Metadata of a worker pool's children.
    pub fn pool_meta(&self, pool: Pool) -> ObjectMeta {
        self.meta_with(self.pool_name(pool), self.pool_labels(pool))
    }

    /// Metadata of a child of one role: name, namespace, labels and the
    /// controller owner reference.
    pub fn meta(&self, role: Role) -> ObjectMeta {
        self.meta_with(self.child_name(role), self.labels(role))
    }

    /// Metadata of a child with the given name and labels.
    pub fn meta_with(&self, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner_ref.clone()]),
            ..ObjectMeta::default()
        }
    }

    /// URL of the frontend Service.
    pub fn endpoint(&self) -> String {
        let scheme = if self.cis.spec.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!(
            "{scheme}://{}.{}.svc:{}",
            self.child_name(Role::Frontend),
            self.namespace,
            self.cis.spec.frontend.port
        )
    }
}

/// What a pool's pod is made of before it becomes a template.
pub struct PodParts {
    /// The `coded-sidecar` container.
    pub sidecar: Container,
    /// Run before it, e.g. the `storage-initializer`.
    pub init_containers: Vec<Container>,
    /// Volumes the operator adds to the user's.
    pub volumes: Vec<Volume>,
}

/// The pod template of every sidecar pod: its labels, containers, volumes
/// (the operator's, then the user's), where it may be scheduled, and the
/// user's pod settings. Service-account tokens are not mounted: the sidecar
/// never calls the API server (cloud identities such as IRSA or workload
/// identity do not need the token).
pub fn pod_template(
    labels: BTreeMap<String, String>,
    parts: PodParts,
    scheduling: SchedulingSpec,
    pod: &PodOverrides,
) -> PodTemplateSpec {
    let mut volumes = parts.volumes;
    volumes.extend(pod.volumes.iter().cloned());
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            init_containers: non_empty(parts.init_containers),
            containers: vec![parts.sidecar],
            volumes: non_empty(volumes),
            node_selector: (!scheduling.node_selector.is_empty())
                .then_some(scheduling.node_selector),
            tolerations: non_empty(scheduling.tolerations),
            runtime_class_name: scheduling.runtime_class_name,
            affinity: scheduling.affinity,
            topology_spread_constraints: non_empty(scheduling.topology_spread_constraints),
            service_account_name: pod.service_account_name.clone(),
            image_pull_secrets: non_empty(pod.image_pull_secrets.clone()),
            termination_grace_period_seconds: Some(pod.termination_grace_period_seconds()),
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        }),
    }
}

/// `None` for an empty list: what the API server stores for one left out.
fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

/// The security context of every container the operator writes: no root,
/// no privilege escalation, no capabilities, the runtime's seccomp profile,
/// and a read-only root filesystem (the sidecar writes only to the model
/// cache, an emptyDir, and to paths a user mounts).
pub fn hardened() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_string(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

/// `defaults` (the operator's variables) then `user`'s; a user variable of
/// the same name replaces the operator's.
pub fn merge_env(defaults: Vec<EnvVar>, user: &[EnvVar]) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = defaults
        .into_iter()
        .filter(|d| user.iter().all(|u| u.name != d.name))
        .collect();
    env.extend(user.iter().cloned());
    env
}

/// The sidecar's own drain flag: after SIGTERM it reports not ready for
/// `drainSeconds` before it stops accepting requests.
pub fn drain_args(pod: &PodOverrides) -> [String; 2] {
    [
        "--drain-delay-ms".to_string(),
        (i64::from(pod.drain_seconds()) * 1000).to_string(),
    ]
}

/// A `coded-sidecar` container: the shared ports (HTTP, which the probes
/// use, and gRPC), probes and hardening, the
/// user's env, envFrom, mounts and pull policy, and a `preStop` sleep of
/// `drainSeconds` (the kubelet's own sleep: no binary needed in the image)
/// while Kubernetes takes the pod out of its Services.
pub fn sidecar_container(
    image: &str,
    args: Vec<String>,
    resources: Option<&ResourceRequirements>,
    pod: &PodOverrides,
) -> Container {
    let http_get = |path: &str| HTTPGetAction {
        path: Some(path.to_string()),
        port: IntOrString::String(PORT_NAME.to_string()),
        ..HTTPGetAction::default()
    };
    let drain = pod.drain_seconds();
    Container {
        name: "sidecar".to_string(),
        image: Some(image.to_string()),
        image_pull_policy: pod.image_pull_policy.map(|p| p.as_str().to_string()),
        command: Some(vec!["coded-sidecar".to_string()]),
        args: Some(args),
        env: non_empty(pod.env.clone()),
        env_from: non_empty(pod.env_from.clone()),
        volume_mounts: non_empty(pod.volume_mounts.clone()),
        ports: Some(vec![
            ContainerPort {
                name: Some(PORT_NAME.to_string()),
                container_port: SIDECAR_PORT,
                protocol: Some("TCP".to_string()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(GRPC_PORT_NAME.to_string()),
                container_port: SIDECAR_GRPC_PORT,
                protocol: Some("TCP".to_string()),
                ..ContainerPort::default()
            },
        ]),
        resources: resources.cloned(),
        // Two failed probes 5 s apart take a pod that stopped answering out
        // of its Service within ~10 s.
        readiness_probe: Some(Probe {
            http_get: Some(http_get("/v2/health/ready")),
            period_seconds: Some(5),
            failure_threshold: Some(2),
            ..Probe::default()
        }),
        // Restart after ~30 s without an answer; a busy worker still answers
        // its health route (default timeout 1 s).
        liveness_probe: Some(Probe {
            http_get: Some(http_get("/v2/health/live")),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        // Weights may take minutes to load (a remote model is fetched by the
        // init container, before this counts); liveness starts only after
        // this succeeds.
        startup_probe: Some(Probe {
            http_get: Some(http_get("/v2/health/live")),
            period_seconds: Some(5),
            failure_threshold: Some(60),
            ..Probe::default()
        }),
        lifecycle: (drain > 0).then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: i64::from(drain),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        security_context: Some(hardened()),
        ..Container::default()
    }
}

/// A Service's two ports, HTTP and gRPC, each sent to the container port
/// of the same name.
pub fn service_ports(http: i32, grpc: i32) -> Vec<ServicePort> {
    [(PORT_NAME, http), (GRPC_PORT_NAME, grpc)]
        .map(|(name, port)| ServicePort {
            name: Some(name.to_string()),
            port,
            target_port: Some(IntOrString::String(name.to_string())),
            protocol: Some("TCP".to_string()),
            ..ServicePort::default()
        })
        .to_vec()
}

/// A parity's StatefulSet and headless Service.
pub struct ParityPool {
    pub stateful_set: StatefulSet,
    pub service: Service,
}

/// Everything one `CodedInferenceService` owns.
pub struct Children {
    pub model: StatefulSet,
    pub model_service: Service,
    /// Parity l's pool at l, r of them.
    pub parities: Vec<ParityPool>,
    pub frontend: Deployment,
    pub frontend_service: Service,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub network_policy: NetworkPolicy,
    pub frontend_network_policy: NetworkPolicy,
    /// Applied only where the Prometheus operator's CRD exists.
    pub service_monitor: DynamicObject,
}

impl Children {
    pub fn build(owner: &Owner<'_>, settings: &Settings) -> Children {
        let spec = &owner.cis.spec;
        let r = spec.coding.r.max(1);
        let parities = (0..r)
            .map(|l| {
                let pool = Pool::Parity(l);
                ParityPool {
                    stateful_set: worker::stateful_set(
                        owner,
                        pool,
                        &worker::parity_model(spec, l),
                        spec.parity_replicas_of(l),
                        settings,
                    ),
                    service: worker::headless_service(owner, pool),
                }
            })
            .collect();
        // Model, parity 0..r, frontend: with r = 1 the order it always had.
        let mut pdbs: Vec<PodDisruptionBudget> = Pool::all(r)
            .map(|pool| pdb::pod_disruption_budget(owner, pool))
            .collect();
        pdbs.push(pdb::frontend_pod_disruption_budget(owner));
        Children {
            model: worker::stateful_set(
                owner,
                Pool::Model,
                &spec.model,
                spec.model_replicas(),
                settings,
            ),
            model_service: worker::headless_service(owner, Pool::Model),
            parities,
            frontend: frontend::deployment(owner, settings),
            frontend_service: frontend::service(owner),
            pdbs,
            network_policy: network_policy::network_policy(owner, settings),
            frontend_network_policy: network_policy::frontend_network_policy(owner, settings),
            service_monitor: service_monitor::service_monitor(owner),
        }
    }
}

#[cfg(test)]
mod tests;
