//! `coded-sidecar bench stragglers --quick` end to end, as a user runs it:
//! real worker and frontend processes, a config file, two loads, SIGSTOP
//! stragglers. Checks the report's structure and the figures, not timings
//! (machines are noisy; numbers belong in docs/benchmarks.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_coded-sidecar");

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run coded-sidecar");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Small models, trained on part of the data and laid out as the bench's
/// model cache expects for `--base-epochs 1 --parity-epochs 1`: the base
/// model and a parity model for each of `ks`.
fn cache(dir: &Path, ks: &[usize]) -> PathBuf {
    let cache = dir.join("models");
    let base = cache.join("mlp-e1-s0");
    let b = base.to_str().unwrap();
    run(&[
        "train", "base", "--epochs", "1", "--limit", "5000", "--quiet", "--out", b,
    ]);
    for k in ks {
        let parity = cache.join(format!("mlp-e1-s0-parity-k{k}-sum-e1"));
        run(&[
            "train",
            "parity",
            "--base",
            b,
            "--k",
            &k.to_string(),
            "--epochs",
            "1",
            "--limit",
            "5000",
            "--quiet",
            "--out",
            parity.to_str().unwrap(),
        ]);
    }
    cache
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 1000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

#[test]
fn quick_stragglers_writes_a_complete_report_and_figures() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path(), &[2, 3]);
    let config = dir.path().join("bench.json");
    std::fs::write(
        &config,
        r#"{"rates": [100, 200], "k": [2, 3], "only": ["eager", "equal"], "mode": "sigstop", "quick": true, "seconds": 600, "seeds": [3, 4], "service_time_ms": 2, "service_time_sigma": 0.2}"#,
    )
    .unwrap();
    let out = dir.path().join("report.json");
    let plots = dir.path().join("plots");
    let table = run(&[
        "bench",
        "stragglers",
        "--config",
        config.to_str().unwrap(),
        "--base-epochs",
        "1",
        "--parity-epochs",
        "1",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
    ]);
    // Two seeds: medians and ranges, and no verdict from so few.
    assert!(
        table.contains("| configuration | seeds | offered req/s | p50 ms |"),
        "{table}"
    );
    assert!(table.contains("| coded k=2 eager | 2 |"), "{table}");
    assert!(table.contains("| too few seeds |"), "{table}");
    assert!(
        table
            .contains("workers: emulated accelerators, 2 ms, lognormal σ 0.2, batches of up to 64"),
        "{table}"
    );
    assert!(
        table.contains("100 req/s, median over seeds") && table.contains("200 req/s"),
        "{table}"
    );

    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["rates"], serde_json::json!([100.0, 200.0]));
    assert_eq!(report["ks"], serde_json::json!([2, 3]));
    assert_eq!(report["mode"], "sigstop");
    // --quick wins over the file's 600 s.
    assert_eq!(report["seconds"], 3.0);
    assert!(report["machine"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(report["workers"], "2 ms, lognormal σ 0.2");
    assert_eq!(report["service_time"]["service_time_ms"], 2.0);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(report["seeds"], serde_json::json!([3, 4]));
    let names: Vec<(&str, f64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["config"]["name"].as_str().unwrap(),
                r["rate"].as_f64().unwrap(),
                r["seed"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut expected = Vec::new();
    for seed in [3, 4] {
        for rate in [100.0, 200.0] {
            for name in [
                "coded k=2 eager",
                "equal-resources, 3 workers",
                "coded k=3 eager",
                "equal-resources, 4 workers",
            ] {
                expected.push((name, rate, seed));
            }
        }
    }
    assert_eq!(names, expected);
    for row in rows {
        // Equal resources: coded k runs k models and one parity, the
        // baselines k + 1 models.
        let c = &row["config"];
        let k = c["k"].as_u64().unwrap();
        let (models, parities) = (
            c["models"].as_u64().unwrap(),
            c["parities"].as_u64().unwrap(),
        );
        assert_eq!(models + parities, k + 1, "{c}");
        assert_eq!(
            parities,
            u64::from(c["name"].as_str().unwrap().starts_with("coded"))
        );
        let l = &row["latency"];
        let count = l["count"].as_u64().unwrap();
        let sent = row["sent"].as_u64().unwrap();
        let errors = row["errors"].as_u64().unwrap();
        assert!(count > 0 && count + errors == sent, "{row}");
        let q: Vec<u64> = ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"]
            .iter()
            .map(|k| l[k].as_u64().unwrap())
            .collect();
        assert!(
            q.windows(2).all(|w| w[0] <= w[1]),
            "quantiles in order: {q:?}"
        );
        let tail: Vec<(f64, u64)> = row["tail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_u64().unwrap()))
            .collect();
        assert!(tail.len() >= 5, "{tail:?}");
        assert!(tail.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(tail.last().unwrap(), &(1.0, q[4]));
        let share = row["reconstructed_share"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&share));
        // Coded rows say how many rebuilt answers an idle instance could
        // have given exactly: a part of those rebuilt (counted by the
        // frontend, which also counts queries whose client gave up).
        match row["rebuilt_while_idle_share"].as_f64() {
            Some(idle) => assert!(
                parities > 0 && (0.0..=share + 0.01).contains(&idle),
                "{row}"
            ),
            None => assert_eq!(parities, 0, "{row}"),
        }
        assert!(row["throughput_rps"].as_f64().unwrap() > 0.0);
        if row["config"]["name"]
            .as_str()
            .unwrap()
            .starts_with("equal-resources")
        {
            assert_eq!(share, 0.0, "nothing to rebuild from without parity");
        }
        // Rebuilt answers are checked against the base model's class.
        match row["agreement"].as_f64() {
            Some(a) => assert!(share > 0.0 && (0.0..=1.0).contains(&a), "{row}"),
            None => assert_eq!(share, 0.0, "{row}"),
        }
    }
    for k in [2, 3] {
        assert!(is_png(&plots.join(format!("stragglers-tail-k{k}.png"))));
        assert!(is_png(&plots.join(format!("stragglers-load-k{k}.png"))));
    }
}

#[test]
fn overhead_reports_every_target_and_the_ratios() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path(), &[2]);
    let out = dir.path().join("overhead.json");
    let table = run(&[
        "bench",
        "overhead",
        "--requests",
        "50",
        "--warmup",
        "10",
        "--concurrency",
        "4",
        "--seconds",
        "1",
        "--base-epochs",
        "1",
        "--parity-epochs",
        "1",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(table.contains("loopback hops at p50"), "{table}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let names: Vec<&str> = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "worker (direct)",
            "frontend (k = 2)",
            "echo (one hop)",
            "frontend, forwarding only",
            "frontend (k = 2), 2 I/O threads",
            "worker (direct), gRPC",
            "frontend (k = 2), gRPC"
        ]
    );
    for t in report["targets"].as_array().unwrap() {
        assert_eq!(t["latency"]["count"], 50, "{t}");
        assert!(t["throughput_rps"].as_f64().unwrap() > 0.0, "{t}");
        // Every target is a process of its own, whose CPU time is read.
        assert!(t["cpu_us_per_request"].as_f64().unwrap() >= 0.0, "{t}");
    }
    assert!(table.contains("server CPU µs/req"), "{table}");
    assert!(table.contains("Over gRPC"), "{table}");
    assert!(table.contains("µs at p50 over gRPC"), "{table}");
    for ratio in [
        "added_p50_in_hops",
        "forwarding_added_p50_in_hops",
        "two_threads_added_p50_in_hops",
        "throughput_vs_echo",
        "throughput_vs_worker",
        "cpu_throughput_vs_echo",
        "grpc_vs_http_p50_worker",
        "grpc_vs_http_p50_frontend",
        "grpc_vs_http_throughput_frontend",
        "frontend_added_p50_us_http",
        "frontend_added_p50_us_grpc",
    ] {
        assert!(report[ratio].as_f64().unwrap().is_finite(), "{ratio}");
    }
}

#[test]
fn loads_are_shares_of_the_measured_capacity_of_emulated_accelerators() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path(), &[2]);
    let out = dir.path().join("report.json");
    // 3 workers, one query per 5 ms each: at most 600 req/s, whatever the
    // machine.
    run(&[
        "bench",
        "stragglers",
        "--quick",
        "--k",
        "2",
        "--only",
        "equal,berrut",
        "--loads",
        "0.3",
        "--service-time-ms",
        "5",
        "--worker-max-batch-size",
        "1",
        "--base-epochs",
        "1",
        "--parity-epochs",
        "1",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--plots",
        dir.path().join("plots").to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let capacity = report["capacity_rps"]["2"].as_f64().unwrap();
    assert!(
        capacity > 0.0 && capacity <= 600.0 * 1.02,
        "capacity {capacity} req/s"
    );
    assert_eq!(report["loads"], serde_json::json!([0.3]));
    assert_eq!(report["worker_max_batch_size"], 1);
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in rows {
        assert_eq!(row["load"], 0.3);
        assert!((row["rate"].as_f64().unwrap() - 0.3 * capacity).abs() < 1e-6);
        assert_eq!(row["errors"], 0, "{row}");
    }
    // The Berrut code on the same 3 workers (n = 3, no parity): every
    // answer is interpolated, so every one is marked rebuilt.
    let berrut = rows
        .iter()
        .find(|r| r["config"]["name"] == "berrut k=2 n=3")
        .expect("a Berrut row");
    assert_eq!(berrut["config"]["berrut_n"], 3);
    assert_eq!(berrut["config"]["parities"], 0);
    assert_eq!(berrut["reconstructed_share"], 1.0, "{berrut}");
}

#[test]
fn a_tiny_overload_run_reports_every_phase_and_a_verdict_per_target() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path(), &[2]);
    let out = dir.path().join("overload.json");
    let table = run(&[
        "bench",
        "overload",
        "--duration",
        "2",
        "--unloaded-seconds",
        "1",
        "--capacity-seconds",
        "1",
        "--seed",
        "5",
        "--base-epochs",
        "1",
        "--parity-epochs",
        "1",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        table.contains("| run | offered req/s | offered | answered | refused |"),
        "{table}"
    );
    assert!(
        table.contains("| unloaded |") && table.contains("| overload |"),
        "{table}"
    );
    assert!(table.contains("RSS every second (MiB):"), "{table}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["seed"], 5);
    assert_eq!(report["factor"], 4.0);
    assert!(report["machine"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(
        report["topology"]
            .as_str()
            .unwrap()
            .contains("5 ms, lognormal σ 0.1"),
        "{report}"
    );
    let capacity = report["capacity_rps"].as_f64().unwrap();
    assert!(capacity > 0.0);
    for (phase, share) in [("unloaded", 0.3), ("overload", 4.0)] {
        let p = &report[phase];
        assert!(
            (p["rate"].as_f64().unwrap() - share * capacity).abs() < 1e-6,
            "{p}"
        );
        let offered = p["offered"].as_u64().unwrap();
        let parts: u64 = ["answered", "refused_total", "errors", "timeouts"]
            .iter()
            .map(|k| p[k].as_u64().unwrap())
            .sum();
        assert_eq!(offered, parts, "{phase}: every request accounted for");
        let by_kind: u64 = p["refused"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(by_kind, p["refused_total"].as_u64().unwrap());
        let l = &p["latency"];
        assert_eq!(l["count"], p["answered"]);
        let q: Vec<u64> = ["p50_us", "p99_us", "p999_us", "max_us"]
            .iter()
            .map(|k| l[k].as_u64().unwrap())
            .collect();
        assert!(q.windows(2).all(|w| w[0] <= w[1]), "{q:?}");
    }
    assert!(report["p99_ratio"].as_f64().unwrap().is_finite());
    let rss = &report["rss"];
    assert!(rss["start_kb"].as_u64().unwrap() > 0);
    assert!(rss["peak_kb"].as_u64().unwrap() >= rss["end_kb"].as_u64().unwrap());
    assert!(!rss["samples"].as_array().unwrap().is_empty());
    let targets: Vec<&str> = report["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert!(v["holds"].is_boolean(), "{v}");
            v["target"].as_str().unwrap()
        })
        .collect();
    assert_eq!(targets.len(), 3, "{targets:?}");
    assert!(targets[0].contains("2 × unloaded p99"));
    assert!(targets[1].starts_with("RSS flat"));
    for v in report["verdicts"].as_array().unwrap() {
        let word = if v["holds"].as_bool().unwrap() {
            "HOLDS"
        } else {
            "FAILS"
        };
        assert!(
            table.contains(&format!("{word}: {}", v["target"].as_str().unwrap())),
            "{table}"
        );
    }
}

#[test]
fn bad_bench_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.json");
    std::fs::write(&config, r#"{"rates": [100], "no_such_flag": 1}"#).unwrap();
    for (args, says) in [
        (
            vec!["bench", "stragglers", "--config", config.to_str().unwrap()],
            "no-such-flag",
        ),
        (
            vec!["bench", "stragglers", "--config", "/nonexistent.json"],
            "reading --config",
        ),
        (
            vec!["bench", "stragglers", "--rates", "0"],
            "--rates must be positive",
        ),
        (
            vec!["bench", "stragglers", "--k", "1"],
            "--k must be group sizes from 2",
        ),
        (
            vec!["bench", "stragglers", "--loads", "0.5,3"],
            "--loads must be shares of capacity in (0, 2]",
        ),
        (
            vec!["bench", "overload", "--factor", "0"],
            "--factor must be a positive number",
        ),
        (
            vec!["bench", "overload", "--unloaded-share", "1.5"],
            "--unloaded-share must be a share of capacity",
        ),
        (
            vec!["bench", "stragglers", "--service-time-ms=-1"],
            "--service-time-ms must be a finite number ≥ 0",
        ),
        (
            vec!["bench", "stragglers", "--service-time-sigma", "0.3"],
            "need --service-time-ms > 0",
        ),
        (
            vec![
                "bench",
                "stragglers",
                "--rates",
                "100",
                "--only",
                "nothing-like-this",
                "--quick",
            ],
            "matches no configuration",
        ),
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// `--mode network` needs root (namespaces, veth, tc); CI runs as root.
#[test]
fn network_interference_mode_runs_and_cleans_up() {
    if !nix::unistd::geteuid().is_root() {
        // CI runs as root: there the test must run, not pass by skipping.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but this is not root: --mode network cannot be tested"
        );
        eprintln!("skipped: --mode network needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path(), &[2]);
    let out = dir.path().join("report.json");
    run(&[
        "bench",
        "stragglers",
        "--mode",
        "network",
        "--k",
        "2",
        "--quick",
        "--rates",
        "100",
        "--only",
        "eager",
        "--transfers-per-second",
        "4",
        "--base-epochs",
        "1",
        "--parity-epochs",
        "1",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--plots",
        dir.path().to_str().unwrap(),
    ]);
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(report["mode"], "network");
    let row = &report["rows"][0];
    assert_eq!(row["config"]["name"], "coded k=2 eager");
    assert!(row["latency"]["count"].as_u64().unwrap() > 0, "{row}");
    // Its namespaces and links are gone.
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !listed.contains("coded-"),
        "namespaces left behind: {listed}"
    );
}
