//! Scale benchmark of the operator (issue 5, item 3; issue 16, item 6; not
//! a test): N resources applied at once (server-side apply, 32 requests in
//! flight: `kubectl apply` of a list goes one object at a time, and would
//! time itself rather than the operator); how long until all are Ready, how
//! many reconciles per second the operator made meanwhile, and its peak
//! RSS. The setup is the e2e tests' (chart, operator process with the
//! chart's RBAC, kwok nodes), so it needs a cluster:
//!
//! ```sh
//! e2e/cluster.sh up && eval "$(e2e/cluster.sh env)"
//! cargo test --workspace --test scale -- 500 1000 ceiling reconcile.maxConcurrent=16
//! e2e/cluster.sh down
//! ```
//!
//! Arguments: sizes (numbers); `ceiling`, to time the API server alone
//! first at each size (the same resources and the same children, applied
//! by the benchmark itself in a reconcile's order, 32 resources at a time,
//! with no operator running; the clock stops when every workload is ready);
//! `key=value`, a chart value for the operator's release (`helm --set`).
//! Without sizes (as in `cargo test --workspace`) it says so and exits;
//! results go to `docs/benchmarks.md` by hand.

#[allow(dead_code)]
#[path = "e2e/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "e2e/operator.rs"]
mod operator;

use std::time::{Duration, Instant};

use coded_operator::crd::CodedInferenceService;
use coded_operator::reconcile::{self, children::Children, children::Owner, children::Settings};
use coded_operator::{DEFAULT_MONITORING_NAMESPACE, DEFAULT_SIDECAR_IMAGE};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use cluster::{Cluster, Namespace, kubectl};
use operator::{Deployed, Operator};

/// How long one size may take before the benchmark gives up.
const LIMIT: Duration = Duration::from_secs(3600);

fn main() {
    // `cargo test -- ...` passes harness flags too; sizes are the numbers.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let ceiling = args.iter().any(|a| a == "ceiling");
    let set: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with('-') && a.contains('='))
        .cloned()
        .collect();
    if sizes.is_empty() {
        eprintln!(
            "scale benchmark: not run (needs a cluster and sizes: cargo test --workspace --test scale -- 500 1000 [ceiling] [chart.value=x])"
        );
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let Some(cluster) = cluster::cluster().await else {
            return;
        };
        println!("chart values: {set:?}");
        println!("| resources | run | apply | all Ready | reconciles | reconciles/s | peak RSS |");
        println!("| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
        for n in sizes {
            if ceiling {
                println!("{}", api_server_alone(&cluster, n).await);
            }
            println!("{}", bench(&cluster, n, &set).await);
        }
    });
}

/// N copies of `deploy/examples/minimal.yaml`, placed on the kwok nodes.
fn resources(n: usize) -> Vec<Value> {
    let text = std::fs::read_to_string(cluster::repo().join("deploy/examples/minimal.yaml"))
        .expect("example");
    let mut template: Value = serde_yaml::from_str(&text).expect("YAML");
    template["spec"]["scheduling"] = json!({"tolerations": [
        {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
    ]});
    (0..n)
        .map(|i| {
            let mut cis = template.clone();
            cis["metadata"]["name"] = json!(format!("s-{i:05}"));
            cis
        })
        .collect()
}

/// Applies the resources, 32 in flight; returns them as stored.
async fn apply_all(
    api: &Api<CodedInferenceService>,
    items: Vec<Value>,
) -> Vec<CodedInferenceService> {
    let params = PatchParams::apply("scale-benchmark");
    futures::stream::iter(items)
        .map(|cis| {
            let params = &params;
            async move {
                let name = cis["metadata"]["name"].as_str().expect("name").to_string();
                api.patch(&name, params, &Patch::Apply(&cis))
                    .await
                    .expect("applying a resource")
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// The ceiling: the same resources and children with no operator, the
/// benchmark applying each resource's children as a reconcile does.
async fn api_server_alone(cluster: &Cluster, n: usize) -> String {
    let crd = cluster::repo().join("crds/codedinferenceservice.yaml");
    kubectl(&[
        "apply",
        "--server-side",
        "-f",
        crd.to_str().expect("UTF-8 path"),
    ]);
    let all: Api<CodedInferenceService> = Api::all(cluster.client.clone());
    cluster::wait_for("the CRD to be served", || async {
        all.list(&ListParams::default().limit(1))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await;
    let ns = Namespace::create("ceiling");
    let api: Api<CodedInferenceService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let settings = Settings {
        sidecar_image: DEFAULT_SIDECAR_IMAGE.to_string(),
        prometheus_url: None,
        monitoring_namespace: Some(DEFAULT_MONITORING_NAMESPACE.to_string()),
    };
    let start = Instant::now();
    let stored = apply_all(&api, resources(n)).await;
    futures::stream::iter(stored)
        .map(|cis| {
            let (client, ns, settings) = (&cluster.client, &ns.name, &settings);
            async move {
                let owner = Owner::new(&cis).expect("a stored resource");
                let children = Children::build(&owner, settings);
                // Retried as the operator's error policy would (the API
                // server times requests out under this load).
                let mut wait = Duration::from_millis(500);
                while let Err(e) = reconcile::apply_children(client, ns, &children).await {
                    eprintln!("{}: {e}; again in {wait:?}", owner.name);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let applied = start.elapsed();
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    loop {
        let sets = sets.list(&ListParams::default()).await.expect("list").items;
        let deployments = deployments
            .list(&ListParams::default())
            .await
            .expect("list")
            .items;
        let ready_sets = sets
            .iter()
            .filter(|s| {
                let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                s.status.as_ref().and_then(|s| s.ready_replicas) == Some(want)
            })
            .count();
        let ready_deployments = deployments
            .iter()
            .filter(|d| {
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                d.status.as_ref().and_then(|s| s.ready_replicas) == Some(want)
            })
            .count();
        if ready_sets == 2 * n && ready_deployments == n {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{ready_sets} of {} StatefulSets and {ready_deployments} of {n} Deployments ready after {LIMIT:?}",
            2 * n
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = start.elapsed();
    kubectl(&["delete", "namespace", &ns.name, "--timeout=1800s"]);
    format!(
        "| {n} | API server alone | {:.1} s | {:.1} s | | | |",
        applied.as_secs_f64(),
        took.as_secs_f64(),
    )
}

/// The count of successful and failed reconciles in the operator's metrics.
async fn reconciles(op: &Operator) -> f64 {
    let body = op.metrics().await.expect("/metrics");
    body.lines()
        .filter(|l| l.starts_with("coded_operator_reconciliations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn bench(cluster: &Cluster, n: usize, set: &[String]) -> String {
    let mut ns = Namespace::create("scale");
    let release = ns.name.clone();
    let mut values = vec![format!("watchNamespace={release}")];
    values.extend(set.iter().cloned());
    ns.helm_install(&release, &values);
    let deployed = Deployed::read(cluster, &ns.name, &format!("{release}-coded-serving"), 1).await;
    let op = Operator::start(cluster, &deployed, &deployed.pods[0]).await;
    // Started and leading before the clock starts.
    cluster::wait_for("the operator to lead", || async {
        match op.gauge("coded_operator_leader").await? {
            1.0 => Ok(()),
            other => Err(format!("leader={other}")),
        }
    })
    .await;

    let api: Api<CodedInferenceService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let items = resources(n);

    let before = reconciles(&op).await;
    let start = Instant::now();
    apply_all(&api, items).await;
    let applied = start.elapsed();
    loop {
        let all = api.list(&ListParams::default()).await.expect("list").items;
        let ready = all
            .iter()
            .filter(|c| {
                c.status.as_ref().is_some_and(|s| {
                    s.observed_generation == c.metadata.generation
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.reason == "AllInstancesReady")
                })
            })
            .count();
        if ready == n {
            break;
        }
        assert!(
            start.elapsed() < LIMIT,
            "{ready} of {n} Ready after {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = start.elapsed();
    let count = reconciles(&op).await - before;
    let peak_kib = op.peak_rss_kib().expect("VmHWM of the operator");
    drop(op);
    // Gone before the next size, so that it starts on an idle cluster.
    kubectl(&["delete", "namespace", &ns.name, "--timeout=1800s"]);
    format!(
        "| {n} | operator | {:.1} s | {:.1} s | {count:.0} | {:.1} | {:.0} MiB |",
        applied.as_secs_f64(),
        took.as_secs_f64(),
        count / took.as_secs_f64(),
        peak_kib as f64 / 1024.0
    )
}
