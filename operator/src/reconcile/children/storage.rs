//! How a worker pod gets its model, in the shape of KServe's storage
//! initializer: the scheme of `uri` decides.
//!
//! | uri | pod gets | worker's `--model` |
//! | --- | --- | --- |
//! | `/path`, `file:///path` | nothing: the user's `volumes`/`volumeMounts` hold it | `/path` |
//! | `pvc://<claim>/<path>` | the claim as volume `model-pvc`, read-only at `/mnt/models` | `/mnt/models/<path>` |
//! | `http(s)://`, `s3://`, `gs://`, `az://` | an emptyDir `model-cache` at `/mnt/models` and an init container `storage-initializer` that fetches into it | `/mnt/models` |
//!
//! The emptyDir outlives container restarts, and `coded-sidecar fetch` does
//! nothing when it already holds a copy matching the card's sha256, so only
//! a new pod downloads the model again.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PersistentVolumeClaimVolumeSource, ResourceRequirements,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::hardened;
use crate::crd::{MODEL_DIR, ModelSource, ModelSpec};

/// Name of the emptyDir a remote model is fetched into.
pub const CACHE_VOLUME: &str = "model-cache";
/// Name of the volume of a `pvc://` model's claim.
pub const PVC_VOLUME: &str = "model-pvc";
/// Name of the init container that fetches a remote model.
pub const INITIALIZER: &str = "storage-initializer";

/// What a worker pod needs for its model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelStorage {
    /// The worker's `--model`: where the model is inside the pod.
    pub model_arg: String,
    /// Volumes the operator adds to the pod.
    pub volumes: Vec<Volume>,
    /// Mounts the operator adds to the sidecar container.
    pub mounts: Vec<VolumeMount>,
    /// The `storage-initializer`, for a remote model.
    pub init_container: Option<Container>,
}

/// The storage of `model`, whose sidecar runs `image`. `sidecar` is the
/// pool's sidecar container with the user's settings only (before the
/// operator's own env): the initializer takes its env and envFrom
/// (credentials), mounts, pull policy, and CPU and memory.
pub fn model_storage(model: &ModelSpec, image: &str, sidecar: &Container) -> ModelStorage {
    let Some(source) = model.source() else {
        // The schema and `check` refuse such a URI; pass it on unchanged.
        return ModelStorage {
            model_arg: model.uri.clone(),
            ..ModelStorage::default()
        };
    };
    let model_arg = source.model_path();
    match source {
        ModelSource::Path(_) => ModelStorage {
            model_arg,
            ..ModelStorage::default()
        },
        ModelSource::Pvc { claim, .. } => ModelStorage {
            model_arg,
            volumes: vec![Volume {
                name: PVC_VOLUME.to_string(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.to_string(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            }],
            mounts: vec![mount(PVC_VOLUME, true)],
            init_container: None,
        },
        ModelSource::Remote(uri) => ModelStorage {
            model_arg,
            volumes: vec![Volume {
                name: CACHE_VOLUME.to_string(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            }],
            mounts: vec![mount(CACHE_VOLUME, true)],
            init_container: Some(initializer(uri, image, sidecar)),
        },
    }
}

fn mount(volume: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.to_string(),
        mount_path: MODEL_DIR.to_string(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// `coded-sidecar fetch --uri <uri> --out /mnt/models`: downloads the card
/// and weights, checks the weights' sha256, and leaves a matching copy alone.
fn initializer(uri: &str, image: &str, sidecar: &Container) -> Container {
    let mut mounts = vec![mount(CACHE_VOLUME, false)];
    mounts.extend(sidecar.volume_mounts.iter().flatten().cloned());
    Container {
        name: INITIALIZER.to_string(),
        image: Some(image.to_string()),
        image_pull_policy: sidecar.image_pull_policy.clone(),
        command: Some(vec!["coded-sidecar".to_string()]),
        args: Some(
            ["fetch", "--uri", uri, "--out", MODEL_DIR]
                .map(String::from)
                .to_vec(),
        ),
        env: sidecar.env.clone(),
        env_from: sidecar.env_from.clone(),
        volume_mounts: Some(mounts),
        resources: sidecar.resources.as_ref().map(cpu_and_memory),
        security_context: Some(hardened()),
        ..Container::default()
    }
}

/// The CPU and memory of `resources`: a download needs no accelerator, but a
/// namespace's quota may require limits of every container.
fn cpu_and_memory(resources: &ResourceRequirements) -> ResourceRequirements {
    fn keep(amounts: Option<&BTreeMap<String, Quantity>>) -> Option<BTreeMap<String, Quantity>> {
        let kept: BTreeMap<String, Quantity> = amounts?
            .iter()
            .filter(|(name, _)| matches!(name.as_str(), "cpu" | "memory" | "ephemeral-storage"))
            .map(|(name, amount)| (name.clone(), amount.clone()))
            .collect();
        (!kept.is_empty()).then_some(kept)
    }
    ResourceRequirements {
        limits: keep(resources.limits.as_ref()),
        requests: keep(resources.requests.as_ref()),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, SecretEnvSource};

    fn model(uri: &str) -> ModelSpec {
        ModelSpec {
            uri: uri.to_string(),
            ..ModelSpec::default()
        }
    }

    fn sidecar() -> Container {
        Container {
            name: "sidecar".into(),
            ..Container::default()
        }
    }

    #[test]
    fn paths_are_read_where_the_user_mounts_them() {
        for uri in ["/models/fashion-mlp", "file:///models/fashion-mlp"] {
            let s = model_storage(&model(uri), "img", &sidecar());
            assert_eq!(s.model_arg, "/models/fashion-mlp", "{uri}");
            assert!(s.volumes.is_empty() && s.mounts.is_empty());
            assert_eq!(s.init_container, None);
        }
    }

    #[test]
    fn a_pvc_is_mounted_read_only_at_mnt_models() {
        let s = model_storage(&model("pvc://models/fashion/mlp"), "img", &sidecar());
        assert_eq!(s.model_arg, "/mnt/models/fashion/mlp");
        assert_eq!(s.volumes.len(), 1);
        assert_eq!(s.volumes[0].name, "model-pvc");
        let pvc = s.volumes[0]
            .persistent_volume_claim
            .as_ref()
            .expect("pvc volume");
        assert_eq!(pvc.claim_name, "models");
        assert_eq!(pvc.read_only, Some(true));
        assert_eq!(s.mounts, vec![mount("model-pvc", true)]);
        assert_eq!(s.mounts[0].mount_path, "/mnt/models");
        assert_eq!(s.init_container, None);
        // The claim's root.
        let root = model_storage(&model("pvc://models"), "img", &sidecar());
        assert_eq!(root.model_arg, "/mnt/models");
        let root = model_storage(&model("pvc://models/"), "img", &sidecar());
        assert_eq!(root.model_arg, "/mnt/models");
    }

    #[test]
    fn remote_models_are_fetched_into_an_empty_dir_by_an_init_container() {
        let mut side = sidecar();
        side.env = Some(vec![EnvVar {
            name: "AWS_REGION".into(),
            value: Some("eu-west-1".into()),
            ..EnvVar::default()
        }]);
        side.env_from = Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: "s3-credentials".into(),
                ..SecretEnvSource::default()
            }),
            ..EnvFromSource::default()
        }]);
        side.volume_mounts = Some(vec![VolumeMount {
            name: "ca".into(),
            mount_path: "/etc/ssl/extra".into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]);
        side.image_pull_policy = Some("Always".into());
        side.resources = Some(ResourceRequirements {
            limits: Some(BTreeMap::from([
                ("cpu".into(), Quantity("2".into())),
                ("nvidia.com/gpu".into(), Quantity("1".into())),
            ])),
            ..ResourceRequirements::default()
        });
        for uri in [
            "http://models.example/fashion-mlp",
            "https://models.example/fashion-mlp",
            "s3://bucket/fashion-mlp",
            "gs://bucket/fashion-mlp",
            "az://container/fashion-mlp",
        ] {
            let s = model_storage(&model(uri), "registry/sidecar:1", &side);
            assert_eq!(s.model_arg, "/mnt/models", "{uri}");
            assert_eq!(s.volumes.len(), 1);
            assert_eq!(s.volumes[0].name, "model-cache");
            assert!(s.volumes[0].empty_dir.is_some());
            assert_eq!(s.mounts, vec![mount("model-cache", true)]);
            let init = s.init_container.expect("storage-initializer");
            assert_eq!(init.name, "storage-initializer");
            assert_eq!(init.image.as_deref(), Some("registry/sidecar:1"));
            assert_eq!(init.command, Some(vec!["coded-sidecar".to_string()]));
            assert_eq!(
                init.args.expect("args"),
                ["fetch", "--uri", uri, "--out", "/mnt/models"]
            );
            assert_eq!(init.env, side.env, "credentials");
            assert_eq!(init.env_from, side.env_from, "credentials");
            let mounts = init.volume_mounts.expect("mounts");
            assert_eq!(mounts[0].name, "model-cache");
            assert_eq!(mounts[0].mount_path, "/mnt/models");
            assert_eq!(mounts[0].read_only, Some(false), "it writes there");
            assert_eq!(mounts[1].name, "ca", "the user's mounts too");
            assert_eq!(init.image_pull_policy.as_deref(), Some("Always"));
            let limits = init.resources.and_then(|r| r.limits).expect("limits");
            assert_eq!(limits.keys().collect::<Vec<_>>(), ["cpu"], "no GPU");
            assert_eq!(init.security_context, Some(hardened()));
        }
    }
}
