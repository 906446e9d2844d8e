//! Scale benchmark of the operator (issue 5, item 3; not a test): N
//! resources applied at once (server-side apply, 32 requests in flight:
//! `kubectl apply` of a list goes one object at a time, and would time
//! itself rather than the operator); how long until all
//! are Ready, how many reconciles per second the operator made meanwhile,
//! and its peak RSS. The setup is the e2e tests' (chart, operator process
//! with the chart's RBAC, kwok nodes), so it needs a cluster:
//!
//! ```sh
//! e2e/cluster.sh up && eval "$(e2e/cluster.sh env)"
//! cargo test --workspace --test scale -- 500 1000
//! e2e/cluster.sh down
//! ```
//!
//! Without sizes on the command line (as in `cargo test --workspace`) it
//! says so and exits; results go to `docs/benchmarks.md` by hand.

#[allow(dead_code)]
#[path = "e2e/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "e2e/operator.rs"]
mod operator;

use std::time::{Duration, Instant};

use coded_operator::crd::CodedInferenceService;
use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use cluster::{Cluster, Namespace, kubectl};
use operator::{Deployed, Operator};

/// How long one size may take before the benchmark gives up.
const LIMIT: Duration = Duration::from_secs(3600);

fn main() {
    // `cargo test -- ...` passes harness flags too; sizes are the numbers.
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    if sizes.is_empty() {
        eprintln!(
            "scale benchmark: not run (needs a cluster and sizes: cargo test --workspace --test scale -- 500 1000)"
        );
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async {
        let Some(cluster) = cluster::cluster().await else {
            return;
        };
        println!("| resources | apply | all Ready | reconciles | reconciles/s | peak RSS |");
        println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
        for n in sizes {
            let row = bench(&cluster, n).await;
            println!("{row}");
        }
    });
}

/// The count of successful and failed reconciles in the operator's metrics.
async fn reconciles(op: &Operator) -> f64 {
    let body = op.metrics().await.expect("/metrics");
    body.lines()
        .filter(|l| l.starts_with("coded_operator_reconciliations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn bench(cluster: &Cluster, n: usize) -> String {
    let mut ns = Namespace::create("scale");
    let release = ns.name.clone();
    ns.helm_install(&release, &[format!("watchNamespace={release}")]);
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

    let text = std::fs::read_to_string(cluster::repo().join("deploy/examples/minimal.yaml"))
        .expect("example");
    let mut template: Value = serde_yaml::from_str(&text).expect("YAML");
    template["spec"]["scheduling"] = json!({"tolerations": [
        {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
    ]});
    let items: Vec<Value> = (0..n)
        .map(|i| {
            let mut cis = template.clone();
            cis["metadata"]["name"] = json!(format!("s-{i:05}"));
            cis
        })
        .collect();
    let api: Api<CodedInferenceService> = Api::namespaced(cluster.client.clone(), &ns.name);
    let params = PatchParams::apply("scale-benchmark");

    let before = reconciles(&op).await;
    let start = Instant::now();
    futures::stream::iter(items)
        .map(|cis| {
            let (api, params) = (&api, &params);
            async move {
                let name = cis["metadata"]["name"].as_str().expect("name").to_string();
                api.patch(&name, params, &Patch::Apply(&cis))
                    .await
                    .expect("applying a resource");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
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
        "| {n} | {:.1} s | {:.1} s | {count:.0} | {:.1} | {:.0} MiB |",
        applied.as_secs_f64(),
        took.as_secs_f64(),
        count / took.as_secs_f64(),
        peak_kib as f64 / 1024.0
    )
}
