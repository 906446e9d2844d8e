//! The parity pools with r ≥ 2, and r = 1 exactly as before them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;

use super::*;
use crate::crd::CodedInferenceService;
use crate::fixtures::cis;
use crate::reconcile::children::{
    Children, PARITY_INDEX_LABEL, ROLE_LABEL, SERVICE_LABEL, Settings,
};

fn cis_r(r: i32) -> CodedInferenceService {
    let mut cis = cis("demo");
    cis.spec.coding.k = 4;
    cis.spec.coding.r = r;
    cis
}

fn pod_spec(sts: &StatefulSet) -> &PodSpec {
    sts.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec")
}

fn pod_labels(sts: &StatefulSet) -> BTreeMap<String, String> {
    sts.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("pod labels")
}

fn selector(sts: &StatefulSet) -> BTreeMap<String, String> {
    let spec = sts.spec.as_ref().expect("spec");
    assert_eq!(spec.selector.match_expressions, None);
    spec.selector.match_labels.clone().expect("match labels")
}

fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn arg_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1).map(String::as_str)
}

#[test]
fn r_two_makes_a_pool_per_parity_with_its_own_model_and_name() {
    let cis = cis_r(2);
    let owner = Owner::new(&cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    assert_eq!(c.parities.len(), 2);
    let want = [
        (
            "demo-parity",
            "parity",
            "/models/mlp-parity-k2/0",
            "demo-parity",
        ),
        (
            "demo-parity-1",
            "parity-1",
            "/models/mlp-parity-k2/1",
            "demo-parity-1",
        ),
    ];
    for (l, (p, (name, role, model, served))) in c.parities.iter().zip(want).enumerate() {
        let sts = &p.stateful_set;
        assert_eq!(sts.metadata.name.as_deref(), Some(name));
        assert_eq!(p.service.metadata.name.as_deref(), Some(name));
        let spec = sts.spec.as_ref().expect("spec");
        assert_eq!(spec.service_name.as_deref(), Some(name), "pods' DNS names");
        assert_eq!(spec.replicas, Some(1), "r instances by default, one each");
        let labels = pod_labels(sts);
        assert_eq!(labels[ROLE_LABEL], role);
        assert_eq!(labels[SERVICE_LABEL], "demo");
        assert_eq!(labels[PARITY_INDEX_LABEL], l.to_string());
        assert_eq!(labels["app.kubernetes.io/component"], "parity");
        // The StatefulSet and Service carry the index too (pruning finds them by it).
        for meta in [&sts.metadata, &p.service.metadata] {
            let labels = meta.labels.as_ref().expect("labels");
            assert_eq!(labels[PARITY_INDEX_LABEL], l.to_string());
        }
        let args = pod_spec(sts).containers[0].args.clone().expect("args");
        assert_eq!(arg_after(&args, "--model"), Some(model));
        assert_eq!(arg_after(&args, "--model-name"), Some(served));
        // The headless Service selects exactly the StatefulSet's pods.
        let svc_selector = p
            .service
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .expect("service selector");
        assert_eq!(svc_selector, selector(sts));
        assert_eq!(
            endpoints(&owner, Pool::Parity(l as i32), 1),
            [format!("http://{name}-0.{name}.ns1.svc:8080")]
        );
    }
    assert_eq!(c.model.metadata.name.as_deref(), Some("demo-model"));
}

/// No selector of one pool (StatefulSet, Service or PDB) matches the pods
/// of another: parity 0's `role=parity` does not take parity 1's pods.
#[test]
fn selectors_of_the_pools_are_disjoint() {
    let cis = cis_r(4);
    let owner = Owner::new(&cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    let mut sets = vec![&c.model];
    sets.extend(c.parities.iter().map(|p| &p.stateful_set));
    let frontend_labels = c
        .frontend
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("frontend labels");
    for (i, a) in sets.iter().enumerate() {
        let sel = selector(a);
        assert!(!matches(&sel, &frontend_labels));
        for (j, b) in sets.iter().enumerate() {
            assert_eq!(
                matches(&sel, &pod_labels(b)),
                i == j,
                "{:?} selects {:?}",
                a.metadata.name,
                b.metadata.name
            );
        }
        // The pool's PDB selects what its StatefulSet does.
        let pdb = c
            .pdbs
            .iter()
            .find(|p| p.metadata.name == a.metadata.name)
            .expect("a PDB per pool");
        let pdb_sel = pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.match_labels.clone());
        assert_eq!(pdb_sel, Some(sel));
    }
}

#[test]
fn parity_zero_keeps_its_selector_whatever_r() {
    let sel = |r: i32| {
        let cis = cis_r(r);
        let owner = Owner::new(&cis).expect("owner");
        selector(&Children::build(&owner, &Settings::default()).parities[0].stateful_set)
    };
    let one = sel(1);
    assert_eq!(one[ROLE_LABEL], "parity");
    assert_eq!(one.len(), 2);
    for r in 2..=4 {
        assert_eq!(sel(r), one, "r = {r}");
    }
}

#[test]
fn parity_instances_are_shared_out_and_uris_get_the_index() {
    let mut cis = cis_r(3);
    cis.spec.parity_model.replicas = Some(5);
    cis.spec.parity_model.uri = "s3://bucket/parity-k4-r3/".into();
    let owner = Owner::new(&cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    let replicas: Vec<_> = c
        .parities
        .iter()
        .map(|p| p.stateful_set.spec.as_ref().and_then(|s| s.replicas))
        .collect();
    assert_eq!(replicas, [Some(2), Some(2), Some(1)]);
    // A remote model: each parity's initializer fetches its own directory.
    for (l, p) in c.parities.iter().enumerate() {
        let pod = pod_spec(&p.stateful_set);
        let init = pod.init_containers.clone().expect("initializer");
        let args = init[0].args.clone().expect("args");
        assert_eq!(
            arg_after(&args, "--uri"),
            Some(format!("s3://bucket/parity-k4-r3/{l}").as_str())
        );
    }
    // A claim: the path inside it.
    cis.spec.parity_model.uri = "pvc://models/parity".into();
    let owner = Owner::new(&cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    let args = pod_spec(&c.parities[2].stateful_set).containers[0]
        .args
        .clone()
        .expect("args");
    assert_eq!(arg_after(&args, "--model"), Some("/mnt/models/parity/2"));
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("serializable")
}

/// Every child of a resource, as JSON, in the order they are applied.
fn children_json(cis: &CodedInferenceService) -> Value {
    let owner = Owner::new(cis).expect("owner");
    let c = Children::build(&owner, &Settings::default());
    assert_eq!(c.parities.len(), 1);
    let mut all = vec![
        json(&c.model),
        json(&c.model_service),
        json(&c.parities[0].stateful_set),
        json(&c.parities[0].service),
        json(&c.frontend),
        json(&c.frontend_service),
    ];
    all.extend(c.pdbs.iter().map(json));
    all.extend([
        json(&c.network_policy),
        json(&c.frontend_network_policy),
        json(&c.service_monitor),
    ]);
    Value::Array(all)
}

/// The resources whose r = 1 children are recorded in `testdata`.
fn r1_samples() -> Vec<CodedInferenceService> {
    let plain = cis("demo");
    let mut varied = cis("demo");
    varied.spec = serde_json::from_value(serde_json::json!({
        "model": {"uri": "pvc://models/mlp", "replicas": 3},
        "parityModel": {
            "uri": "https://models.example/parity-k2",
            "replicas": 2,
            "resources": {"limits": {"nvidia.com/gpu": "1"}},
        },
        "coding": {"k": 2, "r": 1, "encoder": "concat"},
        "frontend": {"replicas": 2},
        "tls": {"secretName": "demo-tls"},
    }))
    .expect("spec");
    vec![plain, varied]
}

const R1_CHILDREN: &str = "src/reconcile/children/worker/testdata/r1-children.json";

/// r = 1 children field for field as the operator built them before parity
/// pools came (the file was written by that operator, commit e7707e4, from
/// these samples; do not regenerate it from this code), so upgrading the
/// operator changes no existing resource's children.
#[test]
fn r_one_children_are_unchanged() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(R1_CHILDREN);
    let now = Value::Array(r1_samples().iter().map(children_json).collect());
    let recorded: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("recorded children"))
            .expect("json");
    assert_eq!(now, recorded);
}
