//! r ≥ 2 on the real control plane: a pool per parity, and the pools of
//! parities a lowered `coding.r` no longer has removed by the operator.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use super::*;

/// Names of the objects of kind `K` of resource `name` that are parity pools.
async fn parity_pools<K>(cluster: &Cluster, ns: &str, name: &str) -> Vec<String>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(cluster.client.clone(), ns);
    let selector = format!("coded.dev/service={name},app.kubernetes.io/component=parity");
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("list")
        .items
        .into_iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .map(|o| o.name_any())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn an_r_two_service_becomes_ready_with_a_parity_pool_each_and_lowering_r_removes_one() {
    let Some(cluster) = cluster::cluster().await else {
        return;
    };
    let (ns, deployed, _op) = chart_and_operator(&cluster, "e2e-r2").await;
    let sidecar_image = deployed.env("CODED_SIDECAR_IMAGE");
    let api = cis_api(&cluster, &ns.name);
    let mut cis = on_kwok(example("deploy/examples/mlp-k4-r2.yaml"));
    let name = "fashion-mlp-r2";
    apply(&ns.name, &[cis.clone()]);

    let ready = wait_ready(&api, name).await;
    assert_eq!(ready.spec.coding.r, 2);
    children::check(&cluster, &Expected::new(&ready, &sidecar_image)).await;
    let status = ready.status.as_ref().expect("status");
    assert_eq!(status.parity_ready, 2, "one ready instance per parity");
    let pools = [format!("{name}-parity"), format!("{name}-parity-1")];
    let sets = parity_pools::<StatefulSet>(&cluster, &ns.name, name).await;
    assert_eq!(sets, pools);
    assert_eq!(
        parity_pools::<Service>(&cluster, &ns.name, name).await,
        pools
    );
    assert_eq!(
        parity_pools::<PodDisruptionBudget>(&cluster, &ns.name, name).await,
        pools
    );
    // Each parity StatefulSet owns only its own pods: parity 0's selector
    // (role=parity) does not take parity 1's (role=parity-1).
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    for (l, set) in pools.iter().enumerate() {
        let sts = stateful_sets.get(set).await.expect("parity set");
        let selector = sts
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .expect("selector");
        let selector: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let selected = pods
            .list(&ListParams::default().labels(&selector.join(",")))
            .await
            .expect("pods")
            .items;
        assert_eq!(selected.len(), 1, "{set}: {selector:?}");
        let pod = &selected[0];
        assert_eq!(pod.name_any(), format!("{set}-0"));
        assert_eq!(
            pod.labels()
                .get("coded.dev/parity-index")
                .map(String::as_str),
            Some(l.to_string().as_str())
        );
    }
    let table = kubectl(&["get", "cis", name, "-n", &ns.name]);
    let row = &parse_table(&table)[name];
    assert_eq!(cell(row, "R"), "2", "{table}");
    assert_eq!(cell(row, "PARITY READY"), "2", "{table}");

    // r = 2 -> 1: parity 1's pool goes (the operator deletes it), parity 0's
    // takes both parity instances, and the resource is Ready again.
    cis["spec"]["coding"]["r"] = json!(1);
    apply(&ns.name, &[cis]);
    let lowered = wait_for("parity 1's pool and pods to be deleted", || async {
        let parity_1_pods = pods
            .list(
                &ListParams::default()
                    .labels(&format!("coded.dev/service={name},coded.dev/role=parity-1")),
            )
            .await
            .map_err(|e| e.to_string())?
            .items;
        let now = (
            parity_pools::<StatefulSet>(&cluster, &ns.name, name).await,
            parity_pools::<Service>(&cluster, &ns.name, name).await,
            parity_pools::<PodDisruptionBudget>(&cluster, &ns.name, name).await,
            parity_1_pods.len(),
        );
        let want = vec![pools[0].clone()];
        if now.0 == want && now.1 == want && now.2 == want && now.3 == 0 {
            Ok(now)
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
    assert_eq!(lowered.0, [pools[0].clone()]);
    let ready = wait_ready(&api, name).await;
    assert_eq!(ready.spec.coding.r, 1);
    assert_eq!(ready.status.as_ref().map(|s| s.parity_ready), Some(2));
    children::check(&cluster, &Expected::new(&ready, &sidecar_image)).await;
    children::check_single_owner(&cluster, &ns.name).await;
}
