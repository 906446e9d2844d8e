//! Removing the pools of parities a lowered `coding.r` no longer has.
//! Everything else a resource owns keeps its name whatever the spec says
//! and goes only with the resource (garbage collection); parity l ≥ r's
//! StatefulSet, Service and PodDisruptionBudget must go while it lives.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::info;

use super::children::{Owner, PARITY_INDEX_LABEL, SERVICE_LABEL};
use crate::Result;

/// Deletes the parity pools this resource made whose index is r or more.
/// One list call when there are none. Found by their StatefulSet: its
/// Service and PDB are deleted first, so that a failure part way leaves
/// the StatefulSet to be found again on the next pass.
pub async fn stale_parities(client: &Client, owner: &Owner<'_>) -> Result<()> {
    let r = owner.cis.spec.coding.r;
    let uid = owner.cis.uid();
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &owner.namespace);
    let selector = format!("{SERVICE_LABEL}={},{PARITY_INDEX_LABEL}", owner.name);
    let listed = sets
        .list_metadata(&ListParams::default().labels(&selector))
        .await?;
    for set in listed.items {
        let ours = set
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref());
        let index = set
            .labels()
            .get(PARITY_INDEX_LABEL)
            .and_then(|l| l.parse::<i32>().ok());
        let Some(index) = index.filter(|&l| ours && l >= r) else {
            continue;
        };
        let name = set.name_any();
        info!(%name, index, r, "deleting the pool of a parity beyond coding.r");
        delete::<PodDisruptionBudget>(client, &owner.namespace, &name).await?;
        delete::<Service>(client, &owner.namespace, &name).await?;
        delete::<StatefulSet>(client, &owner.namespace, &name).await?;
    }
    Ok(())
}

/// Deletes one object (its dependents, the pods, in the background); gone already is fine.
async fn delete<K>(client: &Client, namespace: &str, name: &str) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
