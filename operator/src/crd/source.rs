//! Where a model comes from: the schemes of `uri`, what the worker is given
//! for each, and the checks the schema cannot make.

use super::{InvalidSpec, ModelSpec};

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

/// Names of the volumes the operator adds to worker pods.
pub const MODEL_VOLUMES: [&str; 2] = ["model-cache", "model-pvc"];

impl ModelSpec {
    /// What the schema cannot see: a URI the operator can place, and user
    /// volumes that do not collide with the ones it adds. `field` names the
    /// pool in the message.
    pub(super) fn check(&self, field: &str) -> Result<(), InvalidSpec> {
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
