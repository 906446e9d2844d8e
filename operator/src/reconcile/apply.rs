//! Server-side apply of children with the operator's single field manager.
//! Forcing takes over fields another manager (say, a `kubectl edit`) set on
//! a child, so the resource's spec stays the source of truth.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::{Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Error, FIELD_MANAGER, Result};

pub fn params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies a typed namespaced object; returns the object as stored, status included.
pub async fn apply<K>(client: &Client, namespace: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = obj
        .meta()
        .name
        .as_deref()
        .ok_or(Error::MissingField("name"))?;
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    Ok(api.patch(name, &params(), &Patch::Apply(obj)).await?)
}

/// Applies an object of a kind known only at run time (a ServiceMonitor).
pub async fn apply_dynamic(
    client: &Client,
    namespace: &str,
    resource: &ApiResource,
    obj: &DynamicObject,
) -> Result<DynamicObject> {
    let name = obj
        .metadata
        .name
        .as_deref()
        .ok_or(Error::MissingField("name"))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
    Ok(api.patch(name, &params(), &Patch::Apply(obj)).await?)
}
