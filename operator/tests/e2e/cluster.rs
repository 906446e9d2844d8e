//! The cluster the e2e tests run against (`e2e/cluster.sh up`), and the
//! tools a user would drive it with: `kubectl` and `helm` from `PATH`.

use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kube::Client;

/// How long any one expected change may take. Generous: the machine is
/// shared, and a wait ends as soon as its condition holds.
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// What a test needs of the running cluster.
pub struct Cluster {
    /// An admin client (the KUBECONFIG of `e2e/cluster.sh env`).
    pub client: Client,
    /// The API server's URL and CA, for kubeconfigs holding only a token.
    pub server: String,
    pub ca: PathBuf,
}

/// The cluster from `e2e/cluster.sh env`, or `None` (with a message) when the
/// tests run outside `e2e/run.sh`, e.g. under a plain `cargo test --workspace`;
/// under `CODED_E2E_TESTS=1` a missing cluster fails the test instead.
/// A KUBECONFIG alone is not enough: these tests create and delete cluster
/// objects, so they only run against the throwaway cluster the script made.
pub async fn cluster() -> Option<Cluster> {
    let (Ok(server), Ok(_)) = (
        std::env::var("CODED_E2E_SERVER"),
        std::env::var("KUBECONFIG"),
    ) else {
        // Asked for (`e2e/run.sh` sets CODED_E2E_TESTS=1), a missing
        // cluster is a failure, never a silent pass.
        assert!(
            std::env::var("CODED_E2E_TESTS").as_deref() != Ok("1"),
            "CODED_E2E_TESTS=1 but CODED_E2E_SERVER or KUBECONFIG is unset: run the tests through e2e/run.sh"
        );
        // Straight to stderr, past the test harness's capture, so that a
        // plain `cargo test` shows that these tests did not run.
        let _ = writeln!(std::io::stderr(), "skipped: no cluster (run e2e/run.sh)");
        return None;
    };
    let ca = PathBuf::from(
        std::env::var("CODED_E2E_CA").expect("CODED_E2E_CA is set with CODED_E2E_SERVER"),
    );
    let client = Client::try_default()
        .await
        .expect("a client from KUBECONFIG");
    Some(Cluster { client, server, ca })
}

/// The repository root, where `charts/`, `crds/` and `deploy/` are.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A name unique to this test process: tests may rerun on one cluster.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    run_env(program, args, stdin, &[])
}

fn run_env(program: &str, args: &[&str], stdin: Option<&str>, env: &[(&str, PathBuf)]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(repo())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (is it on PATH? run e2e/run.sh): {e}"));
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("writing stdin");
    }
    child.wait_with_output().expect("waiting for the command")
}

/// Runs `program args`, which must succeed; returns its stdout.
fn run_ok(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    ok(program, args, run(program, args, stdin))
}

fn ok(program: &str, args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn kubectl(args: &[&str]) -> String {
    run_ok("kubectl", args, None)
}

/// `kubectl` reading a manifest on stdin (`-f -`).
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> String {
    run_ok("kubectl", args, Some(stdin))
}

/// `kubectl` expected to fail: returns its stderr.
pub fn kubectl_fails(args: &[&str]) -> String {
    let out = run("kubectl", args, None);
    assert!(
        !out.status.success(),
        "`kubectl {}` succeeded, expected a refusal:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `helm`, with its cache, config and data under `home`, so that nothing
/// outside the test's temp dir is touched.
pub fn helm(home: &Path, args: &[&str]) -> String {
    ok("helm", args, run_env("helm", args, None, &helm_env(home)))
}

fn helm_env(home: &Path) -> [(&'static str, PathBuf); 3] {
    [
        ("HELM_CACHE_HOME", home.join("cache")),
        ("HELM_CONFIG_HOME", home.join("config")),
        ("HELM_DATA_HOME", home.join("data")),
    ]
}

/// Polls `check` until it returns `Ok`; the `Err` it returns while waiting is
/// the last observation, shown if the wait times out.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if start.elapsed() > TIMEOUT => {
                panic!("timed out after {TIMEOUT:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// A directory removed when the test ends, pass or fail.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("coded-e2e-test"));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A namespace of one test, deleted when the test ends, with any Helm
/// release installed in it (their cluster-scoped RBAC would outlive it).
pub struct Namespace {
    pub name: String,
    releases: Vec<String>,
    pub helm_home: TempDir,
}

impl Namespace {
    pub fn create(prefix: &str) -> Self {
        let name = unique(prefix);
        kubectl(&["create", "namespace", &name]);
        Namespace {
            name,
            releases: Vec::new(),
            helm_home: TempDir::new(),
        }
    }

    /// Enforces Kubernetes' `restricted` Pod Security Standard here: the API
    /// server then refuses any pod of the chart or of the operator that is
    /// not locked down (root, privilege escalation, capabilities, seccomp,
    /// host volumes), and a Deployment with such pods never becomes ready.
    pub fn enforce_restricted(&self) {
        kubectl(&[
            "label",
            "namespace",
            &self.name,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        ]);
    }

    /// `helm install` the repository's chart as `release` (waiting for its
    /// Deployment, whose pods kwok runs); `set` are `--set` values.
    pub fn helm_install(&mut self, release: &str, set: &[String]) -> String {
        let chart = repo().join("charts/coded-serving");
        let chart = chart.to_str().expect("UTF-8 path");
        let mut args = vec![
            "install",
            release,
            chart,
            "--namespace",
            &self.name,
            "--wait",
            "--timeout",
            "120s",
        ];
        // The Deployment's pods land on kwok's fake nodes, which are tainted
        // (and not on the real node, which would try to pull its image).
        let kwok = [
            "--set",
            "nodeSelector.type=kwok",
            "--set",
            "tolerations[0].key=kwok.x-k8s.io/node",
            "--set",
            "tolerations[0].operator=Exists",
            "--set",
            "tolerations[0].effect=NoSchedule",
        ];
        args.extend(kwok);
        for s in set {
            args.extend(["--set", s]);
        }
        self.releases.push(release.to_string());
        helm(self.helm_home.path(), &args)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // Best effort, and not waited for: the next test uses a new namespace.
        for release in &self.releases {
            let _ = run_env(
                "helm",
                &["uninstall", release, "--namespace", &self.name],
                None,
                &helm_env(self.helm_home.path()),
            );
        }
        let _ = run(
            "kubectl",
            &[
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ],
            None,
        );
    }
}

/// Installs the CRD the way the plain manifests do (tests that need no operator).
pub fn ensure_crd() {
    kubectl(&["apply", "-f", "crds/codedinferenceservice.yaml"]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/codedinferenceservices.coded.dev",
        "--timeout=60s",
    ]);
}

/// A kwok node of this test's own, for tests that make it unschedulable or
/// need a label no other node has; deleted when the test ends.
pub struct Node {
    pub name: String,
}

impl Node {
    /// A Ready node with these labels, `NoSchedule` taints (key, value) and
    /// extended resources (e.g. `("nvidia.com/gpu", "8")`) besides kwok's.
    pub fn create(
        labels: &[(&str, &str)],
        taints: &[(&str, &str)],
        capacity: &[(&str, &str)],
    ) -> Self {
        let name = unique("e2e-node");
        let mut labels_yaml = format!(
            "type: kwok\n    kubernetes.io/hostname: {name}\n    kubernetes.io/os: linux\n"
        );
        for (k, v) in labels {
            labels_yaml.push_str(&format!("    {k}: \"{v}\"\n"));
        }
        let mut taints_yaml =
            "  - {key: kwok.x-k8s.io/node, value: fake, effect: NoSchedule}\n".to_string();
        for (k, v) in taints {
            taints_yaml.push_str(&format!(
                "  - {{key: {k}, value: \"{v}\", effect: NoSchedule}}\n"
            ));
        }
        let mut resources = "cpu: \"1000\", memory: 4Ti, pods: \"200\"".to_string();
        for (k, v) in capacity {
            resources.push_str(&format!(", {k}: \"{v}\""));
        }
        let manifest = format!(
            "apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    {labels_yaml}spec:
  taints:
{taints_yaml}status:
  allocatable: {{{resources}}}
  capacity: {{{resources}}}
"
        );
        kubectl_stdin(&["apply", "-f", "-"], &manifest);
        kubectl(&[
            "wait",
            "--for=condition=Ready",
            &format!("node/{name}"),
            "--timeout=60s",
        ]);
        Node { name }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = run(
            "kubectl",
            &[
                "delete",
                "node",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ],
            None,
        );
    }
}
