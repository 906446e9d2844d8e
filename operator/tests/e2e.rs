//! End to end on a real control plane (tier 3, issue 5): the chart installed
//! with the real `helm`, resources applied with the real `kubectl`, the
//! operator binary running with the chart's RBAC, kwok playing the kubelet.
//!
//! Run by `e2e/run.sh` with `CODED_E2E_TESTS=1`, one test at a time; each
//! test has a namespace (and Helm release) of its own. Without a cluster
//! from `e2e/cluster.sh` every test prints why it is skipped and returns.

#[path = "e2e/children.rs"]
mod children;
#[path = "e2e/cluster.rs"]
mod cluster;
#[path = "e2e/fixtures.rs"]
mod fixtures;
#[path = "e2e/operator.rs"]
mod operator;
#[path = "e2e/parities.rs"]
mod parities;
#[path = "e2e/real.rs"]
mod real;
#[path = "e2e/real_node_tests.rs"]
mod real_node_tests;
#[path = "e2e/table.rs"]
mod table;

use coded_operator::crd::CodedInferenceService;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ListParams};
use kube::{CustomResourceExt, ResourceExt};
use serde::Deserialize as _;
use serde_json::{Value, json};

use children::{Expected, condition, wait_ready};
use cluster::{Cluster, Namespace, Node, ensure_crd, kubectl, kubectl_fails, wait_for};
use fixtures::{
    EXAMPLES, Watch, apply, chart_and_operator, cis_api, event_reasons, example, install_chart,
    on_kwok,
};
use operator::{Deployed, Operator};
use table::{RuntimeClassGuard, cell, parse_table};

#[tokio::test]
async fn chart_installs_and_every_example_becomes_ready() {
    let Some(cluster) = cluster::cluster().await else {
        return;
    };
    // Chart defaults (all namespaces watched, leader election on), only
    // tolerations for kwok's nodes.
    let (ns, deployed) = install_chart(&cluster, "e2e-examples", Watch::All, &[], 1).await;
    let _op = Operator::start(&cluster, &deployed, &deployed.pods[0]).await;
    // The namespace enforces the restricted Pod Security Standard (so the
    // chart's pod above and every example's pods below were admitted under
    // it): a pod that is not locked down is refused.
    let refused = kubectl_fails(&[
        "run",
        "not-locked-down",
        "--namespace",
        &ns.name,
        "--image",
        "busybox",
        "--restart=Never",
    ]);
    assert!(refused.contains("violates PodSecurity"), "{refused}");

    // The GPU example needs what a GPU cluster has: a node with GPUs behind a
    // taint, and the `nvidia` RuntimeClass.
    let _gpu_node = Node::create(
        &[("nvidia.com/gpu.present", "true")],
        &[("nvidia.com/gpu", "present")],
        &[("nvidia.com/gpu", "8")],
    );
    let _runtime_class = RuntimeClassGuard::ensure(&cluster, "nvidia").await;

    let objects: Vec<Value> = EXAMPLES.iter().map(|p| on_kwok(example(p))).collect();
    let out = apply(&ns.name, &objects);
    assert_eq!(out.matches(" created").count(), EXAMPLES.len(), "{out}");

    let api = cis_api(&cluster, &ns.name);
    let sidecar_image = deployed.env("CODED_SIDECAR_IMAGE");
    for object in &objects {
        let name = object["metadata"]["name"].as_str().expect("name");
        let cis = wait_ready(&api, name).await;
        let expected = Expected::new(&cis, &sidecar_image);
        children::check(&cluster, &expected).await;
        let status = cis.status.as_ref().expect("status");
        assert_eq!(status.observed_generation, cis.metadata.generation);
        assert_eq!(
            status.endpoint.as_deref(),
            Some(
                format!(
                    "http://{name}-frontend.{}.svc:{}",
                    ns.name, cis.spec.frontend.port
                )
                .as_str()
            )
        );
        // Events need the chart's RBAC too.
        let reasons = wait_for("a Ready event", || async {
            let reasons = event_reasons(&cluster, &ns.name, name).await;
            if reasons.iter().any(|r| r == "Ready") {
                Ok(reasons)
            } else {
                Err(format!("{reasons:?}"))
            }
        })
        .await;
        assert!(!reasons.iter().any(|r| r == "InvalidSpec"), "{reasons:?}");
    }

    // `kubectl get cis` shows the printer columns, filled in.
    let table = kubectl(&["get", "cis", "-n", &ns.name]);
    let crd = CodedInferenceService::crd();
    let mut columns: Vec<String> = vec!["NAME".into()];
    columns.extend(
        crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .expect("printer columns")
            .iter()
            .map(|c| c.name.to_uppercase()),
    );
    let rows = parse_table(&table);
    assert_eq!(rows.len(), EXAMPLES.len(), "{table}");
    for cis in api.list(&ListParams::default()).await.expect("list").items {
        let row = &rows[&cis.name_any()];
        let header: Vec<&String> = row.iter().map(|(c, _)| c).collect();
        assert_eq!(header, columns.iter().collect::<Vec<_>>(), "{table}");
        let status = cis.status.as_ref().expect("status");
        let want = [
            ("READY", "True".to_string()),
            ("K", cis.spec.coding.k.to_string()),
            ("R", cis.spec.coding.r.to_string()),
            ("MODEL READY", status.model_ready.to_string()),
            ("PARITY READY", status.parity_ready.to_string()),
            ("ENDPOINT", status.endpoint.clone().expect("endpoint")),
            // Not measured without traffic: blank.
            ("P99", String::new()),
        ];
        for (column, value) in want {
            assert_eq!(
                cell(row, column),
                value,
                "{column} of {}: {table}",
                cis.name_any()
            );
        }
        assert_eq!(status.model_ready, cis.spec.model_replicas());
        assert_eq!(status.parity_ready, cis.spec.parity_replicas());
    }
}

#[tokio::test]
async fn bad_resources_are_refused_by_kubectl_apply_with_the_schema_message() {
    let Some(cluster) = cluster::cluster().await else {
        return;
    };
    ensure_crd();
    let ns = Namespace::create("e2e-bad");
    let api = cis_api(&cluster, &ns.name);
    let mut checked = 0;
    for dir in ["deploy/examples/bad", "deploy/examples/illegal"] {
        let mut files: Vec<_> = std::fs::read_dir(cluster::repo().join(dir))
            .expect("examples dir")
            .map(|e| e.expect("entry").path())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("example");
            let expect = text
                .lines()
                .find_map(|l| l.strip_prefix("# expect: "))
                .expect("an `# expect:` line");
            let path = file.to_str().expect("UTF-8 path");
            let stderr = kubectl_fails(&["apply", "-n", &ns.name, "-f", path]);
            if dir.ends_with("bad") {
                // CEL rules: the API server answers with the rule's own message.
                assert!(
                    stderr.contains(expect),
                    "{path}: expected {expect:?} in {stderr}"
                );
            } else {
                // Structural schema: the API server words it its own way
                // (e.g. `Unsupported value: "xor"`), but names the field.
                let field = expect.split_once(": ").expect("field: message").0;
                assert!(
                    stderr.contains(field),
                    "{path}: expected {field} in {stderr}"
                );
                assert!(stderr.contains("is invalid"), "{path}: {stderr}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 4,
        "k=1, r>k, too few model replicas, unknown encoder at least"
    );
    let left = api.list(&ListParams::default()).await.expect("list").items;
    assert!(
        left.is_empty(),
        "nothing was stored: {:?}",
        left.iter().map(|c| c.name_any()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn deleting_a_model_pod_degrades_the_service_until_it_is_replaced() {
    let Some(cluster) = cluster::cluster().await else {
        return;
    };
    let (ns, _deployed, _op) = chart_and_operator(&cluster, "e2e-degraded").await;
    // Model pods on a node of this test's own, so that cordoning it keeps the
    // replacement of a deleted pod Pending for as long as the test needs.
    let node = Node::create(&[], &[], &[]);
    let mut cis = on_kwok(example("deploy/examples/minimal.yaml"));
    cis["spec"]["scheduling"]["nodeSelector"] = json!({"kubernetes.io/hostname": node.name});
    apply(&ns.name, &[cis]);
    let api = cis_api(&cluster, &ns.name);
    let ready = wait_ready(&api, "minimal").await;
    let k = ready.spec.coding.k;

    kubectl(&["cordon", &node.name]);
    kubectl(&["delete", "pod", "-n", &ns.name, "minimal-model-0"]);
    let degraded = wait_for("Degraded=True", || async {
        let cis = api.get("minimal").await.map_err(|e| e.to_string())?;
        let status = cis.status.clone().unwrap_or_default();
        match condition(&cis, "Degraded") {
            Some(("True", _)) if status.model_ready == k - 1 => Ok(cis),
            other => Err(format!(
                "Degraded {other:?}, {} model ready",
                status.model_ready
            )),
        }
    })
    .await;
    // One of k model instances down: still serving (parity rebuilds its
    // answers), but no longer protected.
    assert_eq!(condition(&degraded, "Ready"), Some(("True", "Serving")));
    let table = kubectl(&["get", "cis", "minimal", "-n", &ns.name]);
    let row = &parse_table(&table)["minimal"];
    assert_eq!(cell(row, "READY"), "True", "{table}");
    assert_eq!(cell(row, "MODEL READY"), (k - 1).to_string(), "{table}");

    kubectl(&["uncordon", &node.name]);
    let recovered = wait_ready(&api, "minimal").await;
    assert_eq!(
        condition(&recovered, "Degraded").map(|c| c.0),
        Some("False")
    );
    let reasons = wait_for("Degraded and Recovered events", || async {
        let reasons = event_reasons(&cluster, &ns.name, "minimal").await;
        if reasons.iter().any(|r| r == "Degraded") && reasons.iter().any(|r| r == "Recovered") {
            Ok(reasons)
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await;
    assert!(reasons.iter().any(|r| r == "Ready"), "{reasons:?}");
}

#[tokio::test]
async fn editing_the_spec_rolls_the_children_and_bumps_observed_generation() {
    let Some(cluster) = cluster::cluster().await else {
        return;
    };
    let (ns, deployed, _op) = chart_and_operator(&cluster, "e2e-edit").await;
    let sidecar_image = deployed.env("CODED_SIDECAR_IMAGE");
    let api = cis_api(&cluster, &ns.name);
    let mut cis = on_kwok(example("deploy/examples/mlp-k2-cpu.yaml"));
    apply(&ns.name, &[cis.clone()]);
    let first = wait_ready(&api, "fashion-mlp").await;
    assert_eq!(
        first.status.as_ref().and_then(|s| s.observed_generation),
        Some(1)
    );
    let frontend_rs = frontend_replica_sets(&cluster, &ns.name, "fashion-mlp").await;
    assert_eq!(frontend_rs.len(), 1);

    // The user edits the file and applies it again: one more model replica...
    cis["spec"]["model"]["replicas"] = json!(3);
    apply(&ns.name, &[cis.clone()]);
    let second = wait_ready(&api, "fashion-mlp").await;
    assert_eq!(second.metadata.generation, Some(2));
    assert_eq!(
        second.status.as_ref().and_then(|s| s.observed_generation),
        Some(2)
    );
    assert_eq!(second.status.as_ref().map(|s| s.model_ready), Some(3));
    children::check(&cluster, &Expected::new(&second, &sidecar_image)).await;
    // Frontends find model instances through the pool's Service: a replica
    // change leaves them as they are.
    let after_scale = frontend_replica_sets(&cluster, &ns.name, "fashion-mlp").await;
    assert_eq!(
        after_scale, frontend_rs,
        "a replica change rolled the frontends"
    );

    // ... then a bigger coding group, k = 3 (3 model replicas allow it).
    cis["spec"]["coding"]["k"] = json!(3);
    apply(&ns.name, &[cis]);
    let third = wait_ready(&api, "fashion-mlp").await;
    assert_eq!(
        third.status.as_ref().and_then(|s| s.observed_generation),
        Some(3)
    );
    assert_eq!(third.spec.coding.k, 3);
    children::check(&cluster, &Expected::new(&third, &sidecar_image)).await;

    // The frontend rolled (its arguments changed with k): a new ReplicaSet,
    // the old one scaled to zero, every replica on the latest template.
    let sets = wait_for("the frontend rollout to finish", || async {
        let sets = frontend_replica_sets(&cluster, &ns.name, "fashion-mlp").await;
        let live: Vec<_> = sets.iter().filter(|(_, replicas)| *replicas > 0).collect();
        if sets.len() == 2 && live.len() == 1 {
            Ok(sets)
        } else {
            Err(format!("{sets:?}"))
        }
    })
    .await;
    assert!(
        !sets
            .iter()
            .any(|(name, r)| *r > 0 && name == &frontend_rs[0].0),
        "{sets:?}"
    );
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns.name);
    let frontend = deployments
        .get("fashion-mlp-frontend")
        .await
        .expect("frontend");
    let status = frontend.status.expect("status");
    assert_eq!(status.observed_generation, frontend.metadata.generation);
    assert_eq!(status.updated_replicas, Some(third.spec.frontend.replicas));
}

/// The frontend's ReplicaSets (name, desired replicas), oldest first.
async fn frontend_replica_sets(cluster: &Cluster, ns: &str, name: &str) -> Vec<(String, i32)> {
    let api: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), ns);
    let mut list = api
        .list(
            &ListParams::default()
                .labels(&format!("coded.dev/service={name},coded.dev/role=frontend")),
        )
        .await
        .expect("list replicasets")
        .items;
    list.sort_by_key(|rs| rs.metadata.creation_timestamp.clone().map(|t| t.0));
    list.into_iter()
        .map(|rs| (rs.name_any(), rs.spec.and_then(|s| s.replicas).unwrap_or(0)))
        .collect()
}

#[tokio::test]
async fn deleting_the_resource_garbage_collects_every_child() {
    let Some(cluster) = cluster::cluster().await else {
        return;
    };
    let (ns, _deployed, mut op) = chart_and_operator(&cluster, "e2e-gc").await;
    apply(
        &ns.name,
        &[on_kwok(example("deploy/examples/mlp-k2-cpu.yaml"))],
    );
    let api = cis_api(&cluster, &ns.name);
    wait_ready(&api, "fashion-mlp").await;
    let before = children::inventory(&cluster, &ns.name, "fashion-mlp").await;
    assert_eq!(before.stateful_sets, 2);
    assert_eq!(before.services, 3);
    assert_eq!(before.deployments, 1);
    assert_eq!(before.pdbs, 3);
    assert_eq!(before.network_policies, 2, "workers and frontend");
    assert!(before.replica_sets >= 1 && before.pods >= 4, "{before:?}");

    // The operator deletes nothing but the pools of parities beyond r;
    // stop it anyway, so that only the garbage collector is at work.
    let exit = op.terminate();
    assert!(exit.success(), "{exit}");
    kubectl(&[
        "delete",
        "cis",
        "fashion-mlp",
        "-n",
        &ns.name,
        "--cascade=background",
    ]);
    let after = wait_for("every child to be garbage-collected", || async {
        let now = children::inventory(&cluster, &ns.name, "fashion-mlp").await;
        if now.total() == 0 {
            Ok(now)
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
    assert_eq!(after.total(), 0);
}

#[tokio::test]
async fn an_operator_killed_mid_reconcile_converges_without_duplicates_on_restart() {
    let Some(cluster) = cluster::cluster().await else {
        return;
    };
    let (ns, deployed) = install_chart(&cluster, "e2e-kill", Watch::Own, &[], 1).await;

    // Many resources waiting before the operator starts, so that it is busy
    // with them all when it is killed.
    const N: usize = 12;
    let template = on_kwok(example("deploy/examples/minimal.yaml"));
    let objects: Vec<Value> = (0..N)
        .map(|i| {
            let mut cis = template.clone();
            cis["metadata"]["name"] = json!(format!("svc-{i}"));
            cis
        })
        .collect();
    apply(&ns.name, &objects);

    let mut op = Operator::start(&cluster, &deployed, &deployed.pods[0]).await;
    // Polled tightly (not with `wait_for`'s pace): the kill should land early.
    let sets: Api<StatefulSet> = Api::namespaced(cluster.client.clone(), &ns.name);
    let start = std::time::Instant::now();
    while sets
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .is_empty()
    {
        assert!(
            start.elapsed() < cluster::TIMEOUT,
            "no child appeared:\n{}",
            op.log_tail()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    op.kill();
    let at_kill = children::inventory_all(&cluster, &ns.name).await;
    let expected_children = N * (2 + 3 + 1 + 3);
    let present = at_kill.stateful_sets + at_kill.services + at_kill.deployments + at_kill.pdbs;
    println!("killed with {present} of {expected_children} children applied: {at_kill:?}");
    assert!(
        present < expected_children,
        "the kill came after the operator had finished; the test would prove nothing"
    );

    // A new process for the same pod, as the kubelet restarts a container.
    let _op = Operator::start(&cluster, &deployed, &deployed.pods[0]).await;
    let api = cis_api(&cluster, &ns.name);
    for i in 0..N {
        let cis = wait_ready(&api, &format!("svc-{i}")).await;
        assert_eq!(
            cis.status.as_ref().and_then(|s| s.observed_generation),
            Some(1)
        );
    }
    let all = children::inventory_all(&cluster, &ns.name).await;
    let minimal: CodedInferenceService = serde_json::from_value(template).expect("a resource");
    let pods = minimal.spec.model_replicas()
        + minimal.spec.parity_replicas()
        + minimal.spec.frontend.replicas;
    assert_eq!(all.stateful_sets, 2 * N, "{all:?}");
    assert_eq!(all.services, 3 * N, "{all:?}");
    assert_eq!(all.deployments, N, "{all:?}");
    assert_eq!(all.pdbs, 3 * N, "{all:?}");
    assert_eq!(all.network_policies, 2 * N, "{all:?}");
    assert_eq!(all.replica_sets, N, "one frontend ReplicaSet each: {all:?}");
    // Pods settle once every StatefulSet and ReplicaSet has made its own.
    wait_for("every pod, once", || async {
        let now = children::inventory_all(&cluster, &ns.name).await;
        if now.pods == N * pods as usize {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    })
    .await;
    children::check_single_owner(&cluster, &ns.name).await;
}

#[tokio::test]
async fn two_operator_replicas_elect_one_leader_and_hand_over() {
    let Some(cluster) = cluster::cluster().await else {
        return;
    };
    let (ns, deployed) =
        install_chart(&cluster, "e2e-leader", Watch::Own, &["replicas=2"], 2).await;
    let mut ops = vec![
        Operator::start(&cluster, &deployed, &deployed.pods[0]).await,
        Operator::start(&cluster, &deployed, &deployed.pods[1]).await,
    ];
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), &ns.name);
    let lease_name = deployed.env_or("CODED_LEASE_NAME", "coded-operator");

    let leader = wait_for("one leader", || leader_of(&leases, &lease_name, &ops)).await;
    let standby = 1 - leader;
    let api = cis_api(&cluster, &ns.name);
    let mut first = on_kwok(example("deploy/examples/minimal.yaml"));
    first["metadata"]["name"] = json!("first");
    apply(&ns.name, &[first]);
    wait_ready(&api, "first").await;
    // Only the leader reconciled; the standby still reports itself as one.
    let standby_metrics = ops[standby].metrics().await.expect("standby /metrics");
    assert!(
        standby_metrics.contains("coded_operator_leader 0"),
        "{standby_metrics}"
    );
    assert!(
        !standby_metrics.contains("coded_operator_reconciliations_total{"),
        "{standby_metrics}"
    );
    let leader_metrics = ops[leader].metrics().await.expect("leader /metrics");
    assert!(
        leader_metrics.contains("coded_operator_reconciliations_total{result=\"success\"}"),
        "{leader_metrics}"
    );

    // The leader goes away (SIGTERM, as at a rollout): it releases the Lease
    // and the standby takes over.
    let exit = ops[leader].terminate();
    assert!(exit.success(), "the leader shuts down cleanly: {exit}");
    // (Asked of the standby alone: the old leader's /metrics is gone.)
    wait_for("the standby to lead", || {
        leader_of(&leases, &lease_name, std::slice::from_ref(&ops[standby]))
    })
    .await;
    let mut second = on_kwok(example("deploy/examples/minimal.yaml"));
    second["metadata"]["name"] = json!("second");
    apply(&ns.name, &[second]);
    wait_ready(&api, "second").await;
}

/// The index in `ops` of the one that holds the Lease and says so in its
/// metrics, while every other one says it does not.
async fn leader_of(
    leases: &Api<Lease>,
    lease_name: &str,
    ops: &[Operator],
) -> Result<usize, String> {
    let lease = leases.get(lease_name).await.map_err(|e| e.to_string())?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .ok_or("no holder")?;
    let index = ops
        .iter()
        .position(|o| o.identity == holder)
        .ok_or_else(|| format!("holder {holder} is none of ours"))?;
    for (i, op) in ops.iter().enumerate() {
        let gauge = op.gauge("coded_operator_leader").await?;
        let want = if i == index { 1.0 } else { 0.0 };
        if gauge != want {
            return Err(format!("{} reports leader={gauge}", op.identity));
        }
    }
    Ok(index)
}

#[tokio::test]
async fn the_plain_manifests_install_an_operator_that_works_like_the_chart() {
    let Some(cluster) = cluster::cluster().await else {
        return;
    };
    let _manifests = PlainManifests::apply();
    let deployed = Deployed::read(&cluster, "coded-system", "coded-operator", 1).await;
    let _op = Operator::start(&cluster, &deployed, &deployed.pods[0]).await;
    let ns = Namespace::create("e2e-plain");
    let objects: Vec<Value> = EXAMPLES[..2].iter().map(|p| on_kwok(example(p))).collect();
    apply(&ns.name, &objects);
    let api = cis_api(&cluster, &ns.name);
    let sidecar_image = deployed.env("CODED_SIDECAR_IMAGE");
    for object in &objects {
        let cis = wait_ready(&api, object["metadata"]["name"].as_str().expect("name")).await;
        children::check(&cluster, &Expected::new(&cis, &sidecar_image)).await;
    }
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "coded-system");
    let lease = leases
        .get("coded-operator")
        .await
        .expect("the leader Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.holder_identity).as_deref(),
        Some(deployed.pods[0].as_str())
    );
}

/// `deploy/` applied as its header says; deleted again after the test. The
/// operator's pod goes to a kwok node (selector and toleration added), not
/// to the real node, which would try to pull its image.
struct PlainManifests;

impl PlainManifests {
    fn apply() -> Self {
        ensure_crd();
        let text = std::fs::read_to_string(cluster::repo().join("deploy/operator.yaml"))
            .expect("deploy/operator.yaml");
        let mut docs = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let mut object = Value::deserialize(doc).expect("a YAML document");
            if object.is_null() {
                continue;
            }
            if object["kind"] == "Deployment" {
                let pod = &mut object["spec"]["template"]["spec"];
                pod["nodeSelector"] = json!({"type": "kwok"});
                pod["tolerations"] = json!([fixtures::kwok_toleration()]);
            }
            docs.push(object);
        }
        let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
        cluster::kubectl_stdin(&["apply", "-f", "-"], &list.to_string());
        PlainManifests
    }
}

impl Drop for PlainManifests {
    fn drop(&mut self) {
        // Waited for: the fixed namespace must be gone before anyone applies it again.
        let _ = std::process::Command::new("kubectl")
            .args([
                "delete",
                "-f",
                "deploy/operator.yaml",
                "--ignore-not-found",
                "--timeout=90s",
            ])
            .current_dir(cluster::repo())
            .output();
    }
}
