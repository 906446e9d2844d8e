//! Models the integration tests train with the real `coded-sidecar` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A base MLP in `dir/base` and its k = 2 `sum` parity model in
/// `dir/parity`, trained by `bin`, each with its extra arguments (epochs,
/// image limit).
pub fn train_pair(
    bin: &str,
    dir: &Path,
    base_args: &[&str],
    parity_args: &[&str],
) -> (PathBuf, PathBuf) {
    let (base, parity) = (dir.join("base"), dir.join("parity"));
    let run = |args: Vec<&str>| {
        let out = Command::new(bin)
            .args(&args)
            .output()
            .expect("run coded-sidecar");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (b, p) = (
        base.to_str().expect("UTF-8 path"),
        parity.to_str().expect("UTF-8 path"),
    );
    run([&["train", "base", "--quiet", "--out", b][..], base_args].concat());
    run([
        &[
            "train", "parity", "--base", b, "--k", "2", "--quiet", "--out", p,
        ][..],
        parity_args,
    ]
    .concat());
    (base, parity)
}
