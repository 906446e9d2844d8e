//! The frontend's watcher and the project's dashboard and rules against a
//! real Prometheus (Debian's `prometheus`), started on loopback, scraping
//! real workers and frontends over HTTP.
//!
//! Without a `prometheus` binary the tests say so and pass; `.ci/run`
//! installs it, so CI runs them.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use coded_sidecar::frontend::FrontendOptions;
use coded_sidecar::local::prometheus::{self, LocalPrometheus, PrometheusSpec, ScrapeTarget};
use coded_sidecar::protocol::client::{Client, Encoding};
use coded_sidecar::protocol::{InferRequest, NamedTensor, OutputSelection};
use common::linear::{INPUTS, expected};
use common::{Linear, Running, options, start, start_frontend};
use serde_json::{Value, json};

/// Whether Prometheus is installed; CI (`CODED_REQUIRE_PROMETHEUS=1`)
/// fails rather than skips without it.
fn have_prometheus() -> bool {
    if prometheus::binary().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CODED_REQUIRE_PROMETHEUS").is_none(),
        "CODED_REQUIRE_PROMETHEUS is set but there is no `prometheus` binary"
    );
    eprintln!("skipped: no `prometheus` binary (apt-get install prometheus)");
    false
}

async fn workers(n: usize) -> Vec<Running> {
    let mut admin = options();
    admin.admin = true;
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(start(admin.clone(), Linear::default()).await);
    }
    out
}

/// Starts a frontend in this process; returns its URL.
async fn frontend(
    models: &[Running],
    parity: &Running,
    tweak: impl FnOnce(&mut FrontendOptions),
) -> String {
    start_frontend(models, parity, tweak).await.0
}

fn targets(models: &[Running], parity: &Running) -> Vec<ScrapeTarget> {
    let mut t: Vec<ScrapeTarget> = models
        .iter()
        .enumerate()
        .map(|(i, w)| ScrapeTarget::new(&w.url, "linear", "model", Some(i)).unwrap())
        .collect();
    t.push(ScrapeTarget::new(&parity.url, "linear", "parity", Some(0)).unwrap());
    t
}

fn request(seed: usize) -> (Vec<f32>, InferRequest) {
    let data: Vec<f32> = (0..INPUTS)
        .map(|i| ((i * 7 + seed * 13) % 17) as f32 / 4.0 - 2.0)
        .collect();
    let req = InferRequest {
        id: None,
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![1, INPUTS],
            data: data.clone(),
        }],
        outputs: OutputSelection::default(),
    };
    (data, req)
}

/// Sends `n` one-row queries, 4 at a time, and checks every answer.
async fn queries(url: &str, n: usize) {
    let client = Client::new(url, Duration::from_secs(10)).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(4) {
        let calls = chunk.iter().map(|&i| {
            let client = client.clone();
            async move {
                let (data, req) = request(i);
                let r = client
                    .infer("linear", None, &req, Encoding::Binary)
                    .await
                    .expect("every query is answered");
                let got = &r.outputs[0].data;
                for (w, g) in expected(&data).iter().zip(got) {
                    assert!((w - g).abs() < 1e-3, "{got:?}");
                }
            }
        });
        futures_join(calls).await;
    }
}

async fn futures_join<F: std::future::Future<Output = ()> + Send + 'static>(
    calls: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = calls.map(tokio::spawn).collect();
    for h in handles {
        h.await.expect("query task");
    }
}

/// Calls every worker directly in a loop, as other frontends would,
/// until `stop` is set.
fn background_load(urls: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let clients: Vec<Client> = urls
            .iter()
            .map(|u| Client::new(u, Duration::from_secs(10)).unwrap())
            .collect();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let calls = clients.iter().map(|c| {
                let c = c.clone();
                let (_, req) = request(i);
                async move {
                    let _ = c.infer("linear", None, &req, Encoding::Binary).await;
                }
            });
            futures_join(calls).await;
            i += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

async fn metrics_text(url: &str) -> String {
    reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the one sample whose line starts with `prefix`.
async fn metric(url: &str, prefix: &str) -> Option<f64> {
    metrics_text(url)
        .await
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn set_delay(url: &str, ms: u64) {
    let r = reqwest::Client::new()
        .post(format!("{url}/admin/delay"))
        .body(json!({ "delay_ms": ms }).to_string())
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn straggler_gauge(instance: &str) -> String {
    format!(
        "coded_frontend_instance_straggler{{instance=\"{instance}\",model=\"linear\",role=\"model\"}}"
    )
}

fn calls_to(instance: &str) -> String {
    format!(
        "coded_frontend_instance_request_duration_seconds_count{{instance=\"{instance}\",model=\"linear\",role=\"model\"}}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_slow_for_every_frontend_is_avoided_then_forgiven_and_the_fallback_takes_over() {
    if !have_prometheus() {
        return;
    }
    let models = workers(3).await;
    let parity = workers(1).await.remove(0);
    let prom = LocalPrometheus::start(
        &PrometheusSpec {
            port: 0,
            interval: Duration::from_millis(250),
        },
        &targets(&models, &parity),
    )
    .await
    .expect("prometheus starts");
    prom.wait_for_targets(4, Duration::from_secs(30))
        .await
        .unwrap();
    let url = frontend(&models, &parity, |o| {
        o.prometheus_url = Some(prom.url.clone());
        o.prometheus_interval_ms = 250;
        o.prometheus_window = "2s".into();
    })
    .await;
    let slow = models[2].url.clone();

    // Other clients' calls show worker 2 slow; this frontend has not called anyone.
    set_delay(&slow, 20).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(models.iter().map(|w| w.url.clone()).collect(), stop.clone());
    wait_for(
        "the watcher to mark worker 2 from Prometheus",
        Duration::from_secs(30),
        async || {
            metric(&url, &straggler_gauge(&slow)).await == Some(1.0)
                && metric(
                    &url,
                    "coded_frontend_latency_source{model=\"linear\",source=\"prometheus\"}",
                )
                .await
                    == Some(1.0)
        },
    )
    .await;
    for fast in &models[..2] {
        assert_eq!(metric(&url, &straggler_gauge(&fast.url)).await, Some(0.0));
    }
    assert_eq!(metric(&url, &calls_to(&slow)).await, Some(0.0));
    let observed = metric(&url, "coded_frontend_observed_latency_seconds").await;
    assert!(observed.is_some_and(|s| s > 0.0), "{observed:?}");

    // Dispatch keeps away from it: its first queries never touch worker 2.
    queries(&url, 200).await;
    assert_eq!(
        metric(&url, &calls_to(&slow)).await,
        Some(0.0),
        "a straggler every frontend sees is avoided before this one ever calls it"
    );
    let served: f64 = metric(&url, &calls_to(&models[0].url)).await.unwrap()
        + metric(&url, &calls_to(&models[1].url)).await.unwrap();
    assert!(served >= 100.0, "{served}");

    // Once its calls are fast again, the mark is lifted.
    set_delay(&slow, 0).await;
    wait_for(
        "worker 2's mark to be lifted",
        Duration::from_secs(30),
        async || metric(&url, &straggler_gauge(&slow)).await == Some(0.0),
    )
    .await;

    // Prometheus gone: the frontend's own windows take over and every query is answered.
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    prom.stop().await;
    wait_for(
        "the fallback to local windows",
        Duration::from_secs(15),
        async || {
            metric(
                &url,
                "coded_frontend_latency_source{model=\"linear\",source=\"local\"}",
            )
            .await
                == Some(1.0)
        },
    )
    .await;
    let errors = metric(&url, "coded_frontend_prometheus_query_errors_total").await;
    assert!(errors.is_some_and(|e| e >= 1.0), "{errors:?}");
    queries(&url, 100).await;
}

/// Every PromQL expression of a dashboard panel or rule that is about the
/// data plane (`coded_frontend_*`, `coded_worker_*` and the recording rules
/// made of them); the operator's are checked by the operator's tests.
fn data_plane(expr: &str) -> bool {
    !(expr.contains("coded_operator_") || expr.contains("coded_service_"))
}

fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1m")
        .replace("${namespace}", ".*")
        .replace("$namespace", ".*")
        .replace("${service}", ".*")
        .replace("$service", ".*")
        .replace("${pod}", ".*")
        .replace("$pod", ".*")
}

fn repo_file(path: &str) -> String {
    let at = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&at).unwrap_or_else(|e| panic!("{}: {e}", at.display()))
}

fn panel_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = vec![dashboard];
    while let Some(v) = stack.pop() {
        if let Some(panels) = v["panels"].as_array() {
            stack.extend(panels);
        }
        if let Some(targets) = v["targets"].as_array() {
            let title = v["title"].as_str().unwrap_or("?").to_owned();
            for t in targets {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.clone(), e.to_owned()));
                }
            }
        }
    }
    out
}

async fn query(prom: &str, expr: &str) -> Value {
    let text = reqwest::Client::new()
        .post(format!("{prom}/api/v1/query"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("query={}", urlencode(expr)))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_plane_panel_and_rule_returns_series() {
    if !have_prometheus() {
        return;
    }
    let models = workers(2).await;
    let parity = workers(1).await.remove(0);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = frontend(&models, &parity, |o| {
        o.prometheus_url = Some(format!("http://127.0.0.1:{port}"));
        o.prometheus_interval_ms = 500;
        o.prometheus_window = "5s".into();
    })
    .await;
    let mut all = targets(&models, &parity);
    all.push(ScrapeTarget::new(&url, "linear", "frontend", None).unwrap());
    let prom = LocalPrometheus::start(
        &PrometheusSpec {
            port,
            interval: Duration::from_millis(500),
        },
        &all,
    )
    .await
    .expect("prometheus starts with the project's rules");
    prom.wait_for_targets(4, Duration::from_secs(30))
        .await
        .unwrap();

    // Traffic, a straggler spell (reconstructions), and bad requests (errors).
    queries(&url, 100).await;
    set_delay(&models[1].url, 30).await;
    queries(&url, 60).await;
    set_delay(&models[1].url, 0).await;
    for target in [&url, &models[0].url] {
        let r = reqwest::Client::new()
            .post(format!("{target}/v2/models/linear/infer"))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
    }
    assert!(
        metric(&url, "coded_frontend_reconstructions_total")
            .await
            .unwrap()
            >= 1.0
    );
    // A few scrapes and rule evaluations after the last event.
    let prom_url = prom.url.clone();
    wait_for(
        "the frontend's counters in Prometheus",
        Duration::from_secs(30),
        async || {
            query(&prom_url, "coded_frontend_request_errors_total").await["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
        },
    )
    .await;
    queries(&url, 40).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let dashboard: Value =
        serde_json::from_str(&repo_file("deploy/monitoring/grafana-dashboard.json")).unwrap();
    let exprs: Vec<(String, String)> = panel_exprs(&dashboard)
        .into_iter()
        .filter(|(_, e)| data_plane(e))
        .collect();
    assert!(
        exprs.len() >= 10,
        "the dashboard has data-plane panels: {exprs:?}"
    );
    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        let answer = query(&prom.url, &substitute(expr)).await;
        assert_eq!(
            answer["status"], "success",
            "panel {title:?}: {expr}: {answer}"
        );
        if answer["data"]["result"]
            .as_array()
            .is_none_or(|r| r.is_empty())
        {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without series:\n{}",
        empty.join("\n")
    );

    // Rules: every one loaded and healthy; every recording rule's series and
    // every metric an alert reads exists.
    let rules = query_rules(&prom.url).await;
    let mut names = BTreeSet::new();
    let mut checked = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["query"].as_str().unwrap();
            assert_eq!(rule["health"], "ok", "{rule}");
            if !data_plane(expr) {
                continue;
            }
            checked += 1;
            if rule["type"] == "recording" {
                names.insert(rule["name"].as_str().unwrap().to_owned());
            }
            names.extend(metric_names(expr));
        }
    }
    assert!(checked >= 4, "data-plane rules: {checked}");
    let mut missing = Vec::new();
    for name in &names {
        let answer = query(&prom.url, &format!("count({{__name__=\"{name}\"}})")).await;
        if answer["data"]["result"]
            .as_array()
            .is_none_or(|r| r.is_empty())
        {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "rules read series that do not exist: {missing:?}"
    );
    prom.stop().await;
}

async fn query_rules(prom: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(format!("{prom}/api/v1/rules"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        // Rules report health once evaluated.
        let evaluated = v["data"]["groups"].as_array().is_some_and(|g| {
            g.iter()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .all(|r| r["health"] != "unknown")
        });
        if evaluated || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Metric and recording-rule names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if expr[i..].starts_with("coded") && (i == 0 || !is_name_byte(bytes[i - 1])) {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |e| i + e);
            // `coded_dev_*` are the pods' labels, not metrics.
            if !expr[i..end].starts_with("coded_dev_") {
                out.push(expr[i..end].to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

#[test]
fn promtool_accepts_the_rules_and_the_chart_carries_the_same_files() {
    for file in ["grafana-dashboard.json", "prometheus-rules.yaml"] {
        assert_eq!(
            repo_file(&format!("deploy/monitoring/{file}")),
            repo_file(&format!("charts/coded-serving/files/{file}")),
            "deploy/monitoring/{file} and the chart's copy differ"
        );
    }
    if !have_prometheus() {
        return;
    }
    let Some(promtool) = prometheus::binary().map(|p| p.with_file_name("promtool")) else {
        return;
    };
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring/prometheus-rules.yaml");
    let out = std::process::Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
