//! The operator's SLO reading against a real Prometheus (Debian's
//! `prometheus`), started on loopback and scraping a frontend-like
//! histogram served by this test with the labels our ServiceMonitor gives
//! pods. Without a `prometheus` binary the test says so and passes;
//! `.ci/run` installs it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use coded_operator::crd::{CodedInferenceService, SloSpec};
use coded_operator::latency::{LatencyReader, SloReading};
use coded_operator::status::{self, Observed, SLO_MET};
use prometheus::{Encoder, Histogram, HistogramOpts, Registry, TextEncoder};

/// Kills Prometheus when the test ends, also on a failed assertion; its
/// data directory goes with the guard.
struct Running(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `prometheus` binary; CI (`CODED_REQUIRE_PROMETHEUS=1`) fails rather
/// than skips without it.
fn binary() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file());
    assert!(
        found.is_some() || std::env::var_os("CODED_REQUIRE_PROMETHEUS").is_none(),
        "CODED_REQUIRE_PROMETHEUS is set but there is no `prometheus` binary"
    );
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Serves `/metrics` with a latency histogram that keeps observing
/// `seconds`, as a busy frontend's would.
async fn frontend_metrics(seconds: f64) -> u16 {
    let registry = Registry::new();
    let h = Histogram::with_opts(
        HistogramOpts::new(
            "coded_frontend_request_duration_seconds",
            "Time to answer a successful infer request",
        )
        .const_label("model", "demo")
        .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1]),
    )
    .unwrap();
    registry.register(Box::new(h.clone())).unwrap();
    tokio::spawn(async move {
        loop {
            for _ in 0..10 {
                h.observe(seconds);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let mut buf = Vec::new();
                TextEncoder::new()
                    .encode(&registry.gather(), &mut buf)
                    .unwrap();
                String::from_utf8(buf).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn start_prometheus(exe: &PathBuf, target_port: u16) -> (Running, String) {
    let dir = tempfile::tempdir().unwrap();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring/prometheus-rules.yaml");
    let config = serde_json::json!({
        "global": {"scrape_interval": "250ms", "scrape_timeout": "250ms", "evaluation_interval": "250ms"},
        "rule_files": [rules],
        "scrape_configs": [{
            "job_name": "frontends",
            "static_configs": [{
                "targets": [format!("127.0.0.1:{target_port}")],
                "labels": {"namespace": "ns1", "coded_dev_service": "demo", "pod": "demo-frontend-abc"},
            }],
        }],
    });
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, config.to_string()).unwrap();
    let port = free_port();
    let child = Command::new(exe)
        .arg(format!("--config.file={}", file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    (Running(child, dir), format!("http://127.0.0.1:{port}"))
}

fn resource(target: &str) -> CodedInferenceService {
    let mut cis: CodedInferenceService = serde_json::from_value(serde_json::json!({
        "apiVersion": "coded.dev/v1alpha1", "kind": "CodedInferenceService",
        "metadata": {"name": "demo", "namespace": "ns1", "generation": 1},
        "spec": {"model": {"uri": "file:///m"}, "parityModel": {"uri": "file:///p"}},
    }))
    .unwrap();
    cis.spec.slo = Some(SloSpec {
        latency_target: target.into(),
        quantile: 0.99,
    });
    cis
}

#[tokio::test]
async fn slo_met_follows_the_frontends_latency_in_prometheus() {
    let Some(exe) = binary() else {
        eprintln!("skipped: no `prometheus` binary (apt-get install prometheus)");
        return;
    };
    let target = frontend_metrics(0.02).await;
    let (_prometheus, url) = start_prometheus(&exe, target);
    let reader = LatencyReader::new("5s", Duration::from_secs(2)).unwrap();

    // Until a few scrapes are in, the reading is NoTraffic or Unreachable.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let seconds = loop {
        match reader.read(&url, "ns1", "demo", 0.99).await {
            SloReading::Observed(s) => break s,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no reading after 30 s: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    // Every request took 20 ms: the p99 lies in the (10 ms, 25 ms] bucket.
    assert!(seconds > 0.01 && seconds <= 0.025, "{seconds}");

    let now = k8s_openapi::jiff::Timestamp::now();
    let with = |cis: &CodedInferenceService, reading: &SloReading| {
        let mut s = status::compute(cis, Observed::default(), "e".into(), now);
        status::set_slo(&mut s, cis, Some(&url), Some(reading), "5s", now);
        s
    };
    let reading = SloReading::Observed(seconds);
    let met = with(&resource("50ms"), &reading);
    let c = status::find(Some(&met), SLO_MET).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "TargetMet")
    );
    assert!(
        met.observed_latency
            .as_deref()
            .is_some_and(|l| l.ends_with("ms"))
    );
    let missed = with(&resource("10ms"), &reading);
    let c = status::find(Some(&missed), SLO_MET).unwrap();
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "TargetMissed")
    );

    // Another resource has no series: no traffic, not a failure.
    assert_eq!(
        reader.read(&url, "ns1", "other", 0.99).await,
        SloReading::NoTraffic
    );
    // No Prometheus there: said, with where it looked.
    let dead = format!("http://127.0.0.1:{}", free_port());
    match reader.read(&dead, "ns1", "demo", 0.99).await {
        SloReading::Unreachable(e) => assert!(e.contains(&dead), "{e}"),
        other => panic!("{other:?}"),
    }
}

/// Serves the operator's own registry (operator/src/metrics.rs) with one
/// resource in its cache, as a running operator would.
async fn operator_metrics() -> u16 {
    use coded_operator::metrics::Metrics;
    let metrics = std::sync::Arc::new(Metrics::new());
    metrics.start_reconcile().finish(true);
    metrics.record_failure(&coded_operator::Error::MissingField("x"));
    let (store, mut writer) = kube::runtime::reflector::store::<CodedInferenceService>();
    let mut cis = resource("50ms");
    let now = k8s_openapi::jiff::Timestamp::now();
    let observed = Observed {
        model_ready: 2,
        parity_ready: 1,
        frontend_ready: 1,
        parities_down: 0,
    };
    let mut s = status::compute(&cis, observed, "e".into(), now);
    status::set_slo(
        &mut s,
        &cis,
        Some("http://p"),
        Some(&SloReading::Observed(0.02)),
        "5m",
        now,
    );
    cis.status = Some(s);
    writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(cis));
    metrics.watch_services(store);
    let ticking = metrics.clone();
    tokio::spawn(async move {
        loop {
            ticking.start_reconcile().finish(true);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { metrics.render() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// An instant query; waits for a Prometheus that is still starting.
async fn query(url: &str, expr: &str) -> serde_json::Value {
    // reqwest has no crypto provider of its own (the operator installs ring).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut target = reqwest::Url::parse(&format!("{url}/api/v1/query")).unwrap();
    target.query_pairs_mut().append_pair("query", expr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // Refused, reset or "not ready" answers while it starts: try again.
        let answer = match reqwest::get(target.clone()).await {
            Ok(r) => r.text().await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
        .and_then(|t| {
            serde_json::from_str::<serde_json::Value>(&t).map_err(|e| format!("{e}: {t}"))
        });
        match answer {
            Ok(v) => return v,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("querying {url}: {e}"),
        }
    }
}

fn has_series(answer: &serde_json::Value) -> bool {
    answer["data"]["result"]
        .as_array()
        .is_some_and(|r| !r.is_empty())
}

/// The operator's side of the dashboard and the rules (`coded_operator_*`,
/// `coded_service_*`); the data plane's are checked in sidecar/tests.
fn operator_side(expr: &str) -> bool {
    expr.contains("coded_operator_") || expr.contains("coded_service_")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operator_panel_and_rule_returns_series() {
    let Some(exe) = binary() else {
        eprintln!("skipped: no `prometheus` binary (apt-get install prometheus)");
        return;
    };
    let target = operator_metrics().await;
    let (_prometheus, url) = start_prometheus(&exe, target);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // A rate needs two scrapes with a change between them.
    while !has_series(&query(&url, "rate(coded_operator_reconciliations_total[1m]) > 0").await) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no scrapes after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/monitoring/grafana-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            if operator_side(expr) {
                exprs.push((panel["title"].as_str().unwrap().to_owned(), expr.to_owned()));
            }
        }
    }
    assert!(exprs.len() >= 6, "operator panels: {exprs:?}");
    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        let e = expr
            .replace("$__rate_interval", "1m")
            .replace("$namespace", ".*")
            .replace("$service", ".*");
        let answer = query(&url, &e).await;
        assert_eq!(answer["status"], "success", "{title}: {e}: {answer}");
        if !has_series(&answer) {
            empty.push(format!("{title}: {e}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without series:\n{}",
        empty.join("\n")
    );

    // Every rule loaded and evaluated without error; every operator-side
    // metric a rule reads exists.
    let rules: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("{url}/api/v1/rules"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let names = regex::Regex::new(r"coded_(operator|service)_[a-z_]+").unwrap();
    let mut checked = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_ne!(rule["health"], "err", "{rule}");
            let expr = rule["query"].as_str().unwrap();
            for m in names.find_iter(expr) {
                checked += 1;
                let answer = query(
                    &url,
                    &format!("count({{__name__=~\"{}(_bucket)?\"}})", m.as_str()),
                )
                .await;
                assert!(
                    has_series(&answer),
                    "{} (rule {}) has no series",
                    m.as_str(),
                    rule["name"]
                );
            }
        }
    }
    assert!(checked >= 5, "operator-side rule metrics: {checked}");
}
