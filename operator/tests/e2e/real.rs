//! What the tests on the real node (`e2e/node.sh`: kubelet, containerd,
//! runc, CNI, kube-proxy, CoreDNS) need: models trained on the host and
//! shipped in ConfigMaps, pods as the kubelet runs them, a client load
//! through the frontend's Service with every answer accounted for, and the
//! stock Python client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

use crate::cluster::{Cluster, kubectl, repo};

/// The real node's name (`CODED_E2E_REAL_NODE`, set by `e2e/node.sh up`), or
/// `None` with a message. With `CODED_E2E_REQUIRE_REAL_NODE=1` (CI) a
/// missing node fails the test instead.
pub fn real_node() -> Option<String> {
    match std::env::var("CODED_E2E_REAL_NODE") {
        Ok(node) if !node.is_empty() => Some(node),
        _ => {
            assert!(
                std::env::var("CODED_E2E_REQUIRE_REAL_NODE").as_deref() != Ok("1"),
                "CODED_E2E_REQUIRE_REAL_NODE=1 but no real node is up (e2e/node.sh)"
            );
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "skipped: no real node (CODED_E2E_REAL_NODE; e2e/run.sh starts one as root)"
            );
            None
        }
    }
}

/// The sidecar image the real node has (imported by `e2e/run.sh` from
/// `scripts/images.sh`'s build).
pub fn sidecar_image() -> String {
    std::env::var("CODED_E2E_SIDECAR_IMAGE")
        .unwrap_or_else(|_| "localhost/coded-sidecar:dev".into())
}

/// `coded-sidecar` as `cargo test --workspace` built it.
fn sidecar_binary() -> PathBuf {
    let bin = repo().join("target/debug/coded-sidecar");
    assert!(
        bin.exists(),
        "{} is missing: `cargo test --workspace` (or `cargo build -p coded-sidecar`) builds it",
        bin.display()
    );
    bin
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A base MLP and its k = 2 `sum` parity model, trained briefly on the host
/// (a few seconds each), in `dir/fashion-mlp` and `dir/fashion-mlp-parity-k2-sum`.
pub fn train_models(dir: &Path) -> (PathBuf, PathBuf) {
    let bin = sidecar_binary();
    let base = dir.join("fashion-mlp");
    let parity = dir.join("fashion-mlp-parity-k2-sum");
    run(Command::new(&bin)
        .args([
            "train", "base", "--arch", "mlp", "--epochs", "1", "--limit", "5000", "--quiet",
            "--out",
        ])
        .arg(&base)
        .env("CODED_THREADS", "1"));
    run(Command::new(&bin)
        .args([
            "train",
            "parity",
            "--k",
            "2",
            "--encoder",
            "sum",
            "--epochs",
            "2",
            "--limit",
            "5000",
            "--quiet",
            "--base",
        ])
        .arg(&base)
        .arg("--out")
        .arg(&parity)
        .env("CODED_THREADS", "1"));
    (base, parity)
}

/// `kubectl create configmap NAME --from-file=DIR/` in `ns`: how the
/// quick-start ships a model this small (~0.7 MB of weights).
pub fn configmap_from_dir(ns: &str, name: &str, dir: &Path) {
    let from = format!("--from-file={}/", dir.display());
    kubectl(&["create", "configmap", name, "-n", ns, &from]);
}

/// The pods of one role of a resource, as the API server has them.
pub async fn pods(cluster: &Cluster, ns: &str, name: &str, role: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let selector = format!("coded.dev/service={name},coded.dev/role={role}");
    let mut list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("listing pods")
        .items;
    list.retain(|p| p.metadata.deletion_timestamp.is_none());
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    list
}

/// Checks that a pod runs for real: on the real node, with an address on
/// the pod network, its containers started by the kubelet and ready.
pub fn assert_running_on(pod: &Pod, node: &str) {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let spec = pod.spec.as_ref().expect("pod spec");
    assert_eq!(
        spec.node_name.as_deref(),
        Some(node),
        "{name} is not on {node}"
    );
    let status = pod.status.as_ref().expect("pod status");
    assert_eq!(
        status.phase.as_deref(),
        Some("Running"),
        "{name}: {status:?}"
    );
    let ip = status.pod_ip.as_deref().unwrap_or("");
    assert!(
        ip.starts_with("10.240.0."),
        "{name}: pod IP {ip:?} is not on the node's pod network"
    );
    for c in status.container_statuses.iter().flatten() {
        assert!(c.ready, "{name}: container {} not ready: {c:?}", c.name);
        let id = c.container_id.as_deref().unwrap_or("");
        assert!(
            id.starts_with("containerd://"),
            "{name}: container id {id:?}"
        );
    }
}

/// `http://CLUSTER-IP:PORT` of the frontend Service: reached from this host
/// through kube-proxy's rules, as any client on a node reaches a Service.
pub async fn service_url(cluster: &Cluster, ns: &str, name: &str) -> String {
    format!("http://{}", service_addr(cluster, ns, name, "http").await)
}

/// `CLUSTER-IP:PORT` of the frontend Service's port named `port_name`
/// (`http` or `grpc`).
pub async fn service_addr(cluster: &Cluster, ns: &str, name: &str, port_name: &str) -> String {
    let api: Api<Service> = Api::namespaced(cluster.client.clone(), ns);
    let svc = api
        .get(&format!("{name}-frontend"))
        .await
        .expect("frontend Service");
    let spec = svc.spec.expect("spec");
    let ip = spec.cluster_ip.expect("a ClusterIP");
    let ports = spec.ports.expect("ports");
    let port = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(port_name))
        .unwrap_or_else(|| panic!("the frontend Service has no port named {port_name}: {ports:?}"))
        .port;
    format!("{ip}:{port}")
}

/// The containerd task id of a pod's first container.
pub fn container_id(pod: &Pod) -> String {
    let status = pod.status.as_ref().expect("status");
    let id = status
        .container_statuses
        .as_ref()
        .expect("container statuses")[0]
        .container_id
        .clone()
        .expect("a container id");
    id.trim_start_matches("containerd://").to_string()
}

/// `ctr tasks pause|resume ID` on the node's containerd: the container's
/// processes frozen (runc pause, the cgroup freezer) as a hung model server.
pub fn ctr_task(action: &str, id: &str) {
    let dir = std::env::var("CODED_E2E_NODE_DIR").expect("CODED_E2E_NODE_DIR (e2e/node.sh up)");
    let sock = format!("{dir}/containerd/containerd.sock");
    run(Command::new("ctr").args([
        "--address",
        &sock,
        "--namespace",
        "k8s.io",
        "tasks",
        action,
        id,
    ]));
}

/// One Fashion-MNIST-shaped query, different for every `i`.
pub fn query(i: usize) -> Value {
    let data: Vec<f32> = (0..784)
        .map(|p| ((p * 7 + i * 13) % 256) as f32 / 255.0)
        .collect();
    json!({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": data}]})
}

/// What a load run saw: every query is answered, failed, or never sent.
#[derive(Debug, Default)]
pub struct Load {
    pub answered: usize,
    pub reconstructed: usize,
    /// Queries that got no answer: HTTP errors or bad bodies, with the reason.
    pub failed: Vec<String>,
    /// Connections the client had to open again (a frontend pod went away
    /// between two requests on a kept-alive connection); the query was then
    /// sent again and is counted once.
    pub resent: usize,
}

/// Sends `total` queries to `url`'s `/v2/models/MODEL/infer`, `concurrency`
/// at a time, each sender pausing `pace` between its queries; `progress`
/// counts answered queries so a test can act mid-run; once `stop` is set,
/// senders finish the query they are on and send no more.
pub async fn load(
    url: String,
    model: &'static str,
    total: usize,
    concurrency: usize,
    pace: Duration,
    progress: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Load {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let next = Arc::new(AtomicUsize::new(0));
    let infer = format!("{url}/v2/models/{model}/infer");
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, next, infer, progress, stop) = (
            client.clone(),
            next.clone(),
            infer.clone(),
            progress.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seen = Load::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || stop.load(Ordering::Relaxed) {
                    return seen;
                }
                let body = query(i).to_string();
                let mut attempt = 0;
                let response = loop {
                    attempt += 1;
                    match client
                        .post(&infer)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                    {
                        Ok(r) => break Ok(r),
                        // No response at all: the connection went away
                        // (a pod stopped). A client sends such a query again.
                        Err(e) if attempt < 4 && (e.is_connect() || e.is_request()) => {
                            seen.resent += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => break Err(format!("query {i}: {e}")),
                    }
                };
                let outcome = match response {
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        if status.is_success() {
                            match serde_json::from_str::<Value>(&text) {
                                Ok(v)
                                    if v["outputs"][0]["data"]
                                        .as_array()
                                        .is_some_and(|d| d.len() == 10) =>
                                {
                                    Ok(v["parameters"]["reconstructed"].as_bool() == Some(true))
                                }
                                _ => Err(format!("query {i}: bad body {text:.200}")),
                            }
                        } else {
                            Err(format!("query {i}: HTTP {status}: {text:.200}"))
                        }
                    }
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(rebuilt) => {
                        seen.answered += 1;
                        seen.reconstructed += usize::from(rebuilt);
                        progress.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => seen.failed.push(e),
                }
                tokio::time::sleep(pace).await;
            }
        }));
    }
    let mut all = Load::default();
    for t in tasks {
        let part = t.await.expect("load task");
        all.answered += part.answered;
        all.reconstructed += part.reconstructed;
        all.failed.extend(part.failed);
        all.resent += part.resent;
    }
    all
}

/// Waits until `progress` reaches `n` (the load is well under way).
pub async fn until_answered(progress: &AtomicUsize, n: usize) {
    for _ in 0..1200 {
        if progress.load(Ordering::Relaxed) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the load never reached {n} answers");
}

/// Runs the stock `tritonclient` check (tritonclient_check.py: HTTP and
/// gRPC) with the virtualenv `scripts/client-tests.sh` made, against the
/// frontend Service's two ports and a model pod's; returns its JSON line.
pub fn tritonclient_check(
    frontend_http: &str,
    frontend_grpc: &str,
    worker_ip: &str,
    model: &str,
) -> Value {
    let venv = std::env::var("CODED_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/coded-serving/venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/client-tests.sh installs tritonclient[http,grpc] there",
        python.display()
    );
    let script = repo().join("operator/tests/e2e/tritonclient_check.py");
    let out = run(Command::new(python).arg(script).args([
        frontend_http.trim_start_matches("http://").to_string(),
        frontend_grpc.to_string(),
        format!("{worker_ip}:8080"),
        format!("{worker_ip}:8001"),
        model.to_string(),
        "16".to_string(),
    ]));
    serde_json::from_str(out.trim()).expect("the check's JSON line")
}
