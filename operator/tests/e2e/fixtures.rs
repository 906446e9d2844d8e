//! What the e2e tests share: the examples, their kwok variant, `kubectl
//! apply`, the chart installed with an operator process, Events.

use coded_operator::crd::CodedInferenceService;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use super::cluster::{self, Cluster, Namespace, kubectl_stdin};
use super::operator::{Deployed, Operator};

/// The good examples a user applies first.
pub const EXAMPLES: [&str; 6] = [
    "deploy/examples/minimal.yaml",
    "deploy/examples/mlp-k2-cpu.yaml",
    "deploy/examples/mlp-k2-concat.yaml",
    "deploy/examples/mlp-k2-http.yaml",
    "deploy/examples/resnet-k4-gpu.yaml",
    "deploy/examples/mlp-k4-r2.yaml",
];

/// The toleration every pod needs to land on kwok's fake nodes.
pub fn kwok_toleration() -> Value {
    json!({"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"})
}

/// An example resource as a JSON value.
pub fn example(path: &str) -> Value {
    let text = std::fs::read_to_string(cluster::repo().join(path)).expect("example file");
    serde_yaml::from_str(&text).expect("example YAML")
}

/// The resource with its pods (workers and frontends) sent to kwok's fake
/// nodes: the kwok toleration and a `type: kwok` node selector, the one
/// change a real cluster would not need. Without the selector they could
/// land on the real node (`e2e/node.sh`), which would try to run their images.
pub fn on_kwok(mut cis: Value) -> Value {
    let spec = cis["spec"].as_object_mut().expect("spec");
    let frontend = spec
        .entry("frontend")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("frontend");
    if !frontend.contains_key("scheduling") {
        // What the operator gives frontends by default (the workers'
        // tolerations), plus the selector.
        let tolerations = cis["spec"]["scheduling"]["tolerations"].clone();
        let mut scheduling = json!({});
        if tolerations.is_array() {
            scheduling["tolerations"] = tolerations;
        }
        cis["spec"]["frontend"]["scheduling"] = scheduling;
    }
    for path in [&["scheduling"][..], &["frontend", "scheduling"][..]] {
        let mut at = &mut cis["spec"];
        for key in path {
            if at.get(*key).is_none() {
                at[*key] = json!({});
            }
            at = &mut at[*key];
        }
        let scheduling = at.as_object_mut().expect("scheduling");
        scheduling
            .entry("tolerations")
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .expect("tolerations")
            .push(kwok_toleration());
        scheduling
            .entry("nodeSelector")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("nodeSelector")
            .insert("type".to_string(), json!("kwok"));
    }
    cis
}

/// `kubectl apply` of the given objects into `ns`.
pub fn apply(ns: &str, objects: &[Value]) -> String {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &list.to_string())
}

pub fn cis_api(cluster: &Cluster, ns: &str) -> Api<CodedInferenceService> {
    Api::namespaced(cluster.client.clone(), ns)
}

/// Which namespaces the chart's operator watches.
#[derive(PartialEq)]
pub enum Watch {
    /// The chart's default.
    All,
    /// Only the test's own (`watchNamespace`), so that tests stay independent.
    Own,
}

/// The chart installed (release and namespace of their own, `set` as
/// `--set` values), and its operator Deployment as installed with `replicas`
/// pods.
pub async fn install_chart(
    cluster: &Cluster,
    prefix: &str,
    watch: Watch,
    set: &[&str],
    replicas: usize,
) -> (Namespace, Deployed) {
    let mut ns = Namespace::create(prefix);
    // Every chart test runs under the restricted profile: the operator's
    // pod and every pod it writes must be admitted there.
    ns.enforce_restricted();
    let release = ns.name.clone();
    let mut values: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    if watch == Watch::Own {
        values.push(format!("watchNamespace={release}"));
    }
    ns.helm_install(&release, &values);
    let fullname = format!("{release}-coded-serving");
    let deployed = Deployed::read(cluster, &ns.name, &fullname, replicas).await;
    (ns, deployed)
}

/// The chart watching only its namespace, and one operator process.
pub async fn chart_and_operator(
    cluster: &Cluster,
    prefix: &str,
) -> (Namespace, Deployed, Operator) {
    let (ns, deployed) = install_chart(cluster, prefix, Watch::Own, &[], 1).await;
    let op = Operator::start(cluster, &deployed, &deployed.pods[0]).await;
    (ns, deployed, op)
}

/// Names of the kube Events recorded on a resource, by reason.
pub async fn event_reasons(cluster: &Cluster, ns: &str, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), ns);
    let list = events
        .list(&ListParams::default())
        .await
        .expect("listing events");
    list.items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("CodedInferenceService")
                    && r.name.as_deref() == Some(name)
            })
        })
        .filter_map(|e| e.reason)
        .collect()
}
