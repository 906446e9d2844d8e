//! The tests on the real node (`e2e/node.sh`): the operator's pods run by
//! the kubelet from our images, served through the frontend's Service under
//! kills, pauses and rollouts, and docs/operations.md's quick start as written.

use super::*;

/// The resource the real-node tests serve: the MLP and its parity model
/// from ConfigMaps (as the quick-start ships them), small CPU requests so
/// that a rolling update fits on the one 2-core node.
fn real_mlp() -> Value {
    let pool = |uri: &str, configmap: &str, replicas: i32| {
        json!({
            "uri": uri,
            "replicas": replicas,
            "volumes": [{"name": "model", "configMap": {"name": configmap}}],
            "volumeMounts": [{"name": "model", "mountPath": uri, "readOnly": true}],
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
        })
    };
    json!({
        "apiVersion": "coded.dev/v1alpha1",
        "kind": "CodedInferenceService",
        "metadata": {"name": "fashion-mlp"},
        "spec": {
            "model": pool("/models/fashion-mlp", "fashion-mlp", 2),
            "parityModel": pool("/models/fashion-mlp-parity-k2-sum", "fashion-mlp-parity-k2-sum", 1),
            "coding": {"k": 2, "r": 1, "encoder": "sum", "reconstructPolicy": "eager"},
            "frontend": {"replicas": 1, "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
        },
    })
}

/// A line for the e2e log, past the test harness's capture (the load
/// figures of a passing run are worth reading).
fn report(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Polls the resource until `Degraded` is True, in the background of a load.
fn watch_degraded(
    api: Api<CodedInferenceService>,
    name: &'static str,
) -> tokio::task::JoinHandle<bool> {
    tokio::spawn(async move {
        for _ in 0..240 {
            if let Ok(cis) = api.get(name).await
                && condition(&cis, "Degraded").map(|c| c.0) == Some("True")
            {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        false
    })
}

#[tokio::test]
async fn real_pods_serve_through_the_service_and_lose_no_query_to_kills_pauses_and_rollouts() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;
    let never = || Arc::new(AtomicBool::new(false));

    let Some(cluster) = cluster::cluster().await else {
        return;
    };
    let Some(node) = real::real_node() else {
        return;
    };
    let image = real::sidecar_image();
    let (repository, tag) = image.rsplit_once(':').expect("image:tag");
    let (ns, deployed) = install_chart(
        &cluster,
        "e2e-real",
        Watch::Own,
        &[
            &format!("sidecarImage.repository={repository}"),
            &format!("sidecarImage.tag={tag}"),
        ],
        1,
    )
    .await;
    let _op = Operator::start(&cluster, &deployed, &deployed.pods[0]).await;
    let models = cluster::TempDir::new();
    let (base, parity) = real::train_models(models.path());
    real::configmap_from_dir(&ns.name, "fashion-mlp", &base);
    real::configmap_from_dir(&ns.name, "fashion-mlp-parity-k2-sum", &parity);
    apply(&ns.name, &[real_mlp()]);
    let api = cis_api(&cluster, &ns.name);
    let ready = wait_ready(&api, "fashion-mlp").await;

    // Every pod runs on the real node, started by the kubelet.
    for role in ["model", "parity", "frontend"] {
        let pods = real::pods(&cluster, &ns.name, "fashion-mlp", role).await;
        let want = match role {
            "model" => ready.spec.model_replicas(),
            "parity" => ready.spec.parity_replicas(),
            _ => ready.spec.frontend.replicas,
        };
        assert_eq!(pods.len(), want as usize, "{role} pods");
        for pod in &pods {
            real::assert_running_on(pod, &node);
        }
    }
    let table = kubectl(&["get", "cis", "fashion-mlp", "-n", &ns.name]);
    let row = &parse_table(&table)["fashion-mlp"];
    assert_eq!(cell(row, "MODEL READY"), "2", "{table}");
    assert_eq!(cell(row, "PARITY READY"), "1", "{table}");

    // The stock client through the Service (ClusterIP, kube-proxy), over HTTP
    // and over gRPC, gives the answers a model pod gives directly.
    let url = real::service_url(&cluster, &ns.name, "fashion-mlp").await;
    let grpc = real::service_addr(&cluster, &ns.name, "fashion-mlp", "grpc").await;
    let model_pods = real::pods(&cluster, &ns.name, "fashion-mlp", "model").await;
    let worker_ip = model_pods[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP");
    let check = real::tritonclient_check(&url, &grpc, &worker_ip, "fashion-mlp");
    for protocol in ["http", "grpc"] {
        assert_eq!(check[protocol]["queries"], 16, "{check}");
        assert!(
            check[protocol]["equal"].as_u64().unwrap_or(0) >= 8,
            "{check}"
        );
    }

    // 1. A model pod killed (no grace) under load.
    let progress = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn(real::load(
        url.clone(),
        "fashion-mlp",
        1500,
        6,
        Duration::from_millis(5),
        progress.clone(),
        never(),
    ));
    real::until_answered(&progress, 300).await;
    kubectl(&[
        "delete",
        "pod",
        "fashion-mlp-model-0",
        "-n",
        &ns.name,
        "--grace-period=0",
        "--force",
    ]);
    let killed = run.await.expect("load");
    report(&format!("model pod killed: {killed:?}"));
    assert_eq!(killed.resent, 0, "client connections were cut: {killed:?}");
    assert!(
        killed.failed.is_empty(),
        "queries lost to a killed pod: {:?}",
        killed.failed
    );
    assert_eq!(killed.answered, 1500);
    wait_ready(&api, "fashion-mlp").await;

    // 2. A model container frozen (runc pause) under load, long enough for
    // its readiness probe to fail: answers rebuilt and marked, the resource
    // Degraded, then Ready again once it is thawed.
    let frozen = real::pods(&cluster, &ns.name, "fashion-mlp", "model").await;
    let id = real::container_id(&frozen[1]);
    let progress = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn(real::load(
        url.clone(),
        "fashion-mlp",
        2000,
        4,
        Duration::from_millis(20),
        progress.clone(),
        never(),
    ));
    real::until_answered(&progress, 100).await;
    let degraded = watch_degraded(api.clone(), "fashion-mlp");
    real::ctr_task("pause", &id);
    let saw_degraded = degraded.await.expect("watch");
    real::ctr_task("resume", &id);
    let paused = run.await.expect("load");
    report(&format!("model container paused: {paused:?}"));
    assert!(
        saw_degraded,
        "the resource never became Degraded while a model instance was frozen"
    );
    assert_eq!(paused.resent, 0, "client connections were cut: {paused:?}");
    assert!(
        paused.failed.is_empty(),
        "queries lost to a frozen pod: {:?}",
        paused.failed
    );
    assert_eq!(paused.answered, 2000);
    assert!(
        paused.reconstructed >= 1,
        "no answer was rebuilt while a model instance was frozen: {paused:?}"
    );
    wait_ready(&api, "fashion-mlp").await;

    // 3. A spec edit that rolls the frontend (its arguments) and both worker
    // pools (their pod templates), under load until every rollout is done.
    let progress = Arc::new(AtomicUsize::new(0));
    let stop = never();
    let run = tokio::spawn(real::load(
        url.clone(),
        "fashion-mlp",
        100_000,
        4,
        Duration::from_millis(20),
        progress.clone(),
        stop.clone(),
    ));
    real::until_answered(&progress, 100).await;
    let before = api
        .get("fashion-mlp")
        .await
        .expect("cis")
        .metadata
        .generation;
    kubectl(&[
        "patch",
        "cis",
        "fashion-mlp",
        "-n",
        &ns.name,
        "--type",
        "merge",
        "-p",
        r#"{"spec": {"coding": {"reconstructPolicy": "deadline"}, "model": {"resources": {"requests": {"cpu": "110m"}}}, "parityModel": {"resources": {"requests": {"cpu": "110m"}}}}}"#,
    ]);
    wait_for("the edit to be observed", || async {
        let cis = api.get("fashion-mlp").await.map_err(|e| e.to_string())?;
        let seen = cis.status.as_ref().and_then(|s| s.observed_generation);
        if seen > before {
            Ok(())
        } else {
            Err(format!("observedGeneration {seen:?}"))
        }
    })
    .await;
    for object in [
        "statefulset/fashion-mlp-model",
        "statefulset/fashion-mlp-parity",
        "deployment/fashion-mlp-frontend",
    ] {
        kubectl(&[
            "rollout",
            "status",
            object,
            "-n",
            &ns.name,
            "--timeout=240s",
        ]);
    }
    wait_ready(&api, "fashion-mlp").await;
    // more answers from the new pods (and at least 1,000 in all), then stop
    let after = progress.load(Ordering::Relaxed);
    real::until_answered(&progress, (after + 100).max(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let rolling = run.await.expect("load");
    report(&format!("rollout: {rolling:?}"));
    // Draining pods answer with `Connection: close`, so most kept-alive
    // connections move to the new frontend between two queries; a few may
    // still be cut when the old pod stops (0 to 4 per rollout in the runs so
    // far), and the client sends those queries again: counted in the
    // report above, not lost.
    assert!(
        rolling.failed.is_empty(),
        "queries lost in a rollout: {:?}",
        rolling.failed
    );
    assert!(rolling.answered >= 1000, "{rolling:?}");
    for role in ["model", "parity", "frontend"] {
        for pod in real::pods(&cluster, &ns.name, "fashion-mlp", role).await {
            real::assert_running_on(&pod, &node);
        }
    }
}

/// The fenced `sh` blocks of docs/operations.md that follow a
/// `<!-- e2e: quick-start -->` marker, in order: the quick-start as a user
/// copies it.
fn quick_start_blocks() -> String {
    let docs = std::fs::read_to_string(cluster::repo().join("docs/operations.md"))
        .expect("docs/operations.md");
    let mut script = String::new();
    let mut lines = docs.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "<!-- e2e: quick-start -->" {
            continue;
        }
        let fence = lines.find(|l| !l.trim().is_empty()).unwrap_or_default();
        assert_eq!(
            fence.trim(),
            "```sh",
            "a quick-start marker must precede a ```sh block"
        );
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            script.push_str(l);
            script.push('\n');
        }
    }
    assert!(
        !script.is_empty(),
        "docs/operations.md has no quick-start blocks"
    );
    script
}

/// Undoes what the quick-start made, pass or fail.
struct QuickStartCleanup;

impl Drop for QuickStartCleanup {
    fn drop(&mut self) {
        let sh = "kubectl delete cis fashion-mlp --ignore-not-found --wait=false; \
                  kubectl delete configmap fashion-mlp fashion-mlp-parity-k2-sum --ignore-not-found; \
                  helm uninstall coded-serving --namespace coded-system --wait --timeout 60s; \
                  kubectl delete namespace coded-system --ignore-not-found --timeout=90s";
        let _ = std::process::Command::new("bash")
            .args(["-c", sh])
            .current_dir(cluster::repo())
            .output();
    }
}

#[tokio::test]
async fn the_quick_start_of_docs_operations_md_runs_as_written() {
    let Some(_cluster) = cluster::cluster().await else {
        return;
    };
    let Some(_node) = real::real_node() else {
        return;
    };
    let script = quick_start_blocks();
    let _cleanup = QuickStartCleanup;
    // The commands as written, from the repository root, with `coded-sidecar`
    // on PATH (a user installs it; here cargo built it) and the cluster's
    // kubectl and helm. Helm's state stays in a temp dir.
    let helm_home = cluster::TempDir::new();
    let bin = cluster::repo().join("target/debug");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(cluster::repo())
        .env("PATH", path)
        .env("HELM_CACHE_HOME", helm_home.path().join("cache"))
        .env("HELM_CONFIG_HOME", helm_home.path().join("config"))
        .env("HELM_DATA_HOME", helm_home.path().join("data"))
        .env("CODED_THREADS", "1")
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the quick-start failed:\n--- script\n{script}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    // Its last command asks the frontend for a prediction.
    assert!(stdout.contains("\"outputs\""), "no v2 answer in:\n{stdout}");
}
