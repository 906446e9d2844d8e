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

fn binary() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
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
    let config = serde_json::json!({
        "global": {"scrape_interval": "250ms", "scrape_timeout": "250ms"},
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
