//! The train → eval pipeline as a user runs it: the real binary on the real
//! Fashion-MNIST files (Debian's dataset-fashion-mnist), on a subset so it
//! takes seconds.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn sidecar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_coded-sidecar"))
        .args(args)
        .env("CODED_THREADS", "1")
        .output()
        .expect("run coded-sidecar")
}

fn ok(args: &[&str]) -> String {
    let out = sidecar(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "coded-sidecar {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn fails(args: &[&str]) -> String {
    let out = sidecar(args);
    assert!(!out.status.success(), "coded-sidecar {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn card(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("card.json")).unwrap()).unwrap()
}

#[test]
fn train_then_eval_beats_chance() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    let parity = tmp.path().join("parity");
    let report = tmp.path().join("report.json");
    let (b, p, r) = (
        base.to_str().unwrap(),
        parity.to_str().unwrap(),
        report.to_str().unwrap(),
    );

    let out = ok(&[
        "train", "base", "--arch", "mlp", "--epochs", "2", "--limit", "3000", "--quiet", "--out", b,
    ]);
    assert!(out.contains("test accuracy"), "{out}");
    let base_card = card(&base);
    let test_acc = base_card["training"]["test_accuracy"].as_f64().unwrap();
    assert!(
        test_acc > 0.6,
        "base MLP on 4000 images should be far above chance, got {test_acc}"
    );
    assert_eq!(base_card["role"]["kind"], "base");
    assert_eq!(base_card["weights"]["sha256"].as_str().unwrap().len(), 64);

    ok(&[
        "train",
        "parity",
        "--base",
        b,
        "--k",
        "2",
        "--encoder",
        "sum",
        "--epochs",
        "4",
        "--limit",
        "4000",
        "--quiet",
        "--out",
        p,
    ]);
    let parity_card = card(&parity);
    assert_eq!(parity_card["role"]["kind"], "parity");
    assert_eq!(parity_card["role"]["k"], 2);
    assert_eq!(
        parity_card["role"]["base_sha256"],
        base_card["weights"]["sha256"]
    );

    let table = ok(&[
        "eval", "--base", b, "--parity", p, "--limit", "2000", "--json", r,
    ]);
    assert!(table.contains("degraded (parity model)"), "{table}");
    let rep: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let available = rep["available_accuracy"].as_f64().unwrap();
    let degraded = rep["degraded"]["overall"].as_f64().unwrap();
    let recon = rep["degraded"]["reconstruction"].as_f64().unwrap();
    assert_eq!(rep["degraded"]["groups"], 1000);
    assert!(
        degraded > 0.3,
        "degraded accuracy {degraded} should be well above chance (0.1)"
    );
    // A barely trained base model is nearly linear, so its floor (base as
    // parity model) is high: beating it is measured in docs/accuracy.md.
    assert!(
        recon > 0.4,
        "reconstruction accuracy {recon} should be well above chance"
    );
    assert!(rep["floor"]["overall"].is_f64());
    assert!(
        available > degraded,
        "available {available} vs degraded {degraded}"
    );

    // Swapped roles and mismatched pairs are refused with a reason.
    let err = fails(&["eval", "--base", p, "--parity", b]);
    assert!(err.contains("is a parity model"), "{err}");
    let other = tmp.path().join("other");
    ok(&[
        "train",
        "base",
        "--epochs",
        "1",
        "--limit",
        "500",
        "--seed",
        "9",
        "--quiet",
        "--out",
        other.to_str().unwrap(),
    ]);
    let err = fails(&["eval", "--base", other.to_str().unwrap(), "--parity", p]);
    assert!(err.contains("was trained for base weights"), "{err}");

    // Tampered weights are refused.
    let w = base.join("model.safetensors");
    let mut bytes = std::fs::read(&w).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&w, bytes).unwrap();
    let err = fails(&["eval", "--base", b, "--parity", p]);
    assert!(err.contains("tampered"), "{err}");
}

/// `train parity --r 2` trains both parity models of the code, each card
/// saying which parity it is; `eval` scores every pattern of one and two
/// losses with both.
#[test]
fn two_parities_train_and_eval_under_every_pattern_of_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, parity) = (tmp.path().join("base"), tmp.path().join("parity"));
    let report = tmp.path().join("report.json");
    let (b, p, r) = (
        base.to_str().unwrap(),
        parity.to_str().unwrap(),
        report.to_str().unwrap(),
    );
    ok(&[
        "train", "base", "--epochs", "2", "--limit", "3000", "--quiet", "--out", b,
    ]);
    let out = ok(&[
        "train", "parity", "--base", b, "--k", "2", "--r", "2", "--epochs", "2", "--limit", "3000",
        "--quiet", "--out", p,
    ]);
    assert_eq!(out.matches("trained ").count(), 2, "{out}");
    let (p0, p1) = (parity.join("0"), parity.join("1"));
    for (l, dir) in [(0, &p0), (1, &p1)] {
        let c = card(dir);
        assert_eq!(c["role"]["r"], 2);
        assert_eq!(c["role"]["index"], l);
        let coefficients: Vec<f64> = c["role"]["coefficients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(coefficients.len(), 2);
        // Parity 0 is the plain sum; parity 1 another combination.
        assert_eq!(coefficients == [1.0, 1.0], l == 0, "{coefficients:?}");
    }
    let (s0, s1) = (p0.to_str().unwrap(), p1.to_str().unwrap());
    // Given in any order.
    let table = ok(&[
        "eval", "--base", b, "--parity", s1, "--parity", s0, "--limit", "2000", "--json", r,
    ]);
    assert!(table.contains("degraded, 2 lost"), "{table}");
    let rep: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(rep["r"], 2);
    let rows = rep["by_losses"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["losses"], i + 1);
        assert_eq!(row["degraded"]["groups"], 1000);
        let overall = row["degraded"]["overall"].as_f64().unwrap();
        assert!(overall > 0.2, "{} lost: {overall} is near chance", i + 1);
    }
    assert_eq!(rep["degraded"], rows[0]["degraded"]);

    // One card of two, the same parity twice, and concat with r = 2 are
    // refused with a reason.
    let err = fails(&["eval", "--base", b, "--parity", s0]);
    assert!(err.contains("pass all 2"), "{err}");
    let err = fails(&["eval", "--base", b, "--parity", &format!("{s0},{s0}")]);
    assert!(err.contains("two --parity cards are parity 0"), "{err}");
    let err = fails(&[
        "train",
        "parity",
        "--base",
        b,
        "--r",
        "2",
        "--encoder",
        "concat",
    ]);
    assert!(err.contains("one parity per group"), "{err}");
    let err = fails(&[
        "train",
        "parity",
        "--base",
        b,
        "--r",
        "2",
        "--parity-index",
        "2",
    ]);
    assert!(err.contains("not a parity of r = 2"), "{err}");
}

#[test]
fn same_seed_gives_the_same_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let sha = |name: &str, seed: &str| {
        let dir = tmp.path().join(name);
        ok(&[
            "train",
            "base",
            "--epochs",
            "1",
            "--limit",
            "300",
            "--seed",
            seed,
            "--quiet",
            "--out",
            dir.to_str().unwrap(),
        ]);
        card(&dir)["weights"]["sha256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(sha("a", "5"), sha("b", "5"));
    assert_ne!(sha("a", "5"), sha("c", "6"));
}

#[test]
fn bad_input_gives_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let err = fails(&[
        "train",
        "base",
        "--data-dir",
        tmp.path().to_str().unwrap(),
        "--quiet",
    ]);
    assert!(
        err.contains("apt-get install dataset-fashion-mnist"),
        "{err}"
    );

    let err = fails(&[
        "train",
        "parity",
        "--base",
        tmp.path().to_str().unwrap(),
        "--k",
        "1",
    ]);
    assert!(err.contains("k must be at least 2"), "{err}");

    let err = fails(&[
        "train",
        "parity",
        "--base",
        tmp.path().join("missing").to_str().unwrap(),
    ]);
    assert!(err.contains("loading the base model"), "{err}");

    let err = fails(&["train", "base", "--arch", "vgg"]);
    assert!(err.contains("possible values: mlp, cnn, resnet18"), "{err}");
}

/// This binary is built without the `cuda` feature (the default): every
/// subcommand that takes `--device` refuses CUDA at start, in one line,
/// before reading a model or the dataset.
#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_from_a_cpu_build_fails_at_start_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let missing = missing.to_str().unwrap();
    let commands: [&[&str]; 5] = [
        &["worker", "--model", missing, "--device", "cuda"],
        &[
            "train",
            "base",
            "--quiet",
            "--device",
            "cuda:1",
            "--data-dir",
            missing,
        ],
        &[
            "eval", "--base", missing, "--parity", missing, "--device", "cuda",
        ],
        &["local", "--cache-dir", missing, "--device", "cuda"],
        &[
            "worker", "--model", missing, "--dtype", "f16", "--device", "cuda",
        ],
    ];
    for args in commands {
        let err = fails(args);
        assert!(
            err.contains(
                "needs CUDA, but this coded-sidecar was built without it (cargo feature `cuda`)"
            ),
            "{args:?}: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
    }
    // The environment variable works like the flag.
    let out = Command::new(env!("CARGO_BIN_EXE_coded-sidecar"))
        .args(["worker", "--model", missing])
        .env("CODED_DEVICE", "cuda")
        .output()
        .expect("run coded-sidecar");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("--device cuda:0 needs CUDA"), "{err}");
    // A device that does not exist is a usage error.
    let err = fails(&["worker", "--model", missing, "--device", "tpu"]);
    assert!(
        err.contains("'tpu' is not a device: use cpu, cuda or cuda:N"),
        "{err}"
    );
    let err = fails(&["worker", "--model", missing, "--dtype", "f64"]);
    assert!(err.contains("possible values: f32, f16, bf16"), "{err}");
}
