//! `coded-sidecar bench chaos`, short: real worker processes and a
//! frontend on loopback, seeded SIGKILL + restart, SIGSTOP/SIGCONT and two
//! workers at once under open-loop load. The command itself checks every
//! query; this test checks that it ran what it says, that its report holds
//! together, and that every invariant held.

mod common;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_coded-sidecar");

fn n(v: &Value, path: &str) -> u64 {
    v.pointer(path)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{path} missing from the report: {v}"))
}

#[test]
fn a_short_chaos_run_loses_no_query_and_marks_every_rebuilt_answer() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos");
    let (base, parity) = common::models::train_pair(
        BIN,
        &dir.join("models"),
        &["--epochs", "1", "--limit", "10000"],
        &["--epochs", "2", "--limit", "10000"],
    );
    let out = dir.join("chaos.json");
    let _ = std::fs::remove_file(&out);
    let run = Command::new(BIN)
        .args(["bench", "chaos", "--seconds", "24", "--rate", "100"])
        .args(["--faults-per-minute", "60", "--two-at-once", "0.5"])
        .args(["--seed", "1", "--images", "300"])
        .arg("--base-model")
        .arg(&base)
        .arg("--parity-model")
        .arg(&parity)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run bench chaos");
    let stdout = String::from_utf8_lossy(&run.stdout);
    eprintln!("{stdout}");
    assert!(
        run.status.success(),
        "bench chaos failed: {stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("every invariant held"), "{stdout}");
    let report: Value =
        serde_json::from_slice(&std::fs::read(&out).expect("the JSON report")).expect("JSON");

    assert_eq!(report["violations"], Value::Array(Vec::new()));
    assert_eq!(n(&report, "/queries/lost"), 0);
    assert_eq!(n(&report, "/queries/unmarked_wrong"), 0);
    assert_eq!(n(&report, "/queries/early_errors"), 0);
    // ~2,400 arrivals at 100/s for 24 s.
    let sent = n(&report, "/queries/sent");
    assert!((2000..=2800).contains(&sent), "{sent} queries sent");
    let errors: u64 = report["queries"]["errors"]
        .as_object()
        .expect("errors by kind")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(
        n(&report, "/queries/real") + n(&report, "/queries/rebuilt") + errors,
        sent,
        "every query is real, rebuilt or an error"
    );
    assert!(
        n(&report, "/queries/real") > sent / 2,
        "most answers are real ones"
    );
    // 18 s of faults at one a second...
    let faults = n(&report, "/faults/total");
    assert!((15..=18).contains(&faults), "{faults} faults");
    assert!(n(&report, "/faults/kills") >= 1 && n(&report, "/faults/pauses") >= 1);
    // ...half of them two workers at once.
    let two = n(&report, "/faults/two_at_once");
    assert!(two >= 3, "{two} faults hit two workers at once");
    assert_eq!(
        n(&report, "/faults/two_models") + n(&report, "/faults/model_and_parity"),
        two
    );
    assert_eq!(n(&report, "/faults/failed_restarts"), 0);
    // Kills and pauses cost some queries their real answer.
    assert!(n(&report, "/queries/rebuilt") >= 1);
    assert_eq!(n(&report, "/frontend/batches_running_end"), 0);
    assert!(
        n(&report, "/frontend/samples") > 100,
        "sampled every 100 ms"
    );
    let latency = |q: &str| {
        report["latency_ms"][q]
            .as_f64()
            .unwrap_or_else(|| panic!("latency_ms.{q} missing"))
    };
    assert!(latency("p50") > 0.0 && latency("p50") <= latency("p99"));
    assert!(
        latency("max") < 2000.0 + 5000.0,
        "no answer later than the deadline plus the slack"
    );
    let warm = n(&report, "/frontend/rss_warm_kb");
    let peak = n(&report, "/frontend/rss_peak_kb");
    let end = n(&report, "/frontend/rss_end_kb");
    assert!(
        warm > 0 && warm <= peak && end <= peak,
        "{warm} {peak} {end}"
    );
}
