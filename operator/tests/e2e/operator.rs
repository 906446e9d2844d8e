//! The operator as a local process standing in for a pod of its Deployment
//! (the chart's or `deploy/operator.yaml`'s; kwok only pretends to run it):
//! the Deployment's environment, the pod's name as identity, and a
//! TokenRequest token of the Deployment's ServiceAccount as its only
//! credential, so the RBAC that ships is what is tested.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::{Cluster, TempDir};

/// What a pod of the operator's Deployment would run with.
pub struct Deployed {
    pub namespace: String,
    pub service_account: String,
    /// The container's env; `fieldRef`s are resolved per pod.
    env: Vec<k8s_openapi::api::core::v1::EnvVar>,
    /// The Deployment's pods, as kwok runs them (names only matter).
    pub pods: Vec<String>,
}

impl Deployed {
    /// Reads the Deployment `name` in `namespace` as installed, waiting for
    /// `replicas` pods of it to exist.
    pub async fn read(cluster: &Cluster, namespace: &str, name: &str, replicas: usize) -> Self {
        let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), namespace);
        let deployment = deployments
            .get(name)
            .await
            .expect("the operator Deployment");
        let spec = deployment.spec.expect("spec");
        let pod_spec = spec.template.spec.expect("pod spec");
        let container = pod_spec
            .containers
            .into_iter()
            .find(|c| c.name == "operator")
            .expect("a container named operator");
        let selector = spec
            .selector
            .match_labels
            .expect("matchLabels")
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
        let pods = crate::cluster::wait_for("the operator Deployment's pods", || async {
            let list = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map_err(|e| e.to_string())?;
            let mut names: Vec<String> = list
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.metadata.name)
                .collect();
            names.sort();
            if names.len() == replicas {
                Ok(names)
            } else {
                Err(format!("{names:?}"))
            }
        })
        .await;
        Deployed {
            namespace: namespace.to_string(),
            service_account: pod_spec
                .service_account_name
                .expect("a ServiceAccount of its own"),
            env: container.env.unwrap_or_default(),
            pods,
        }
    }

    /// A plain `value` of the container's env.
    pub fn env(&self, name: &str) -> String {
        let value = self.env_or(name, "");
        assert!(!value.is_empty(), "the operator Deployment sets no {name}");
        value
    }

    /// A plain `value` of the container's env, or what the binary defaults to.
    pub fn env_or(&self, name: &str, default: &str) -> String {
        self.env
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.value.clone())
            .unwrap_or_else(|| default.to_string())
    }

    /// The environment of the pod `pod`.
    fn env_of(&self, pod: &str) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|var| {
                let value = match (&var.value, &var.value_from) {
                    (Some(v), _) => v.clone(),
                    (None, Some(from)) => {
                        let field = from.field_ref.as_ref().map(|f| f.field_path.as_str());
                        match field {
                            Some("metadata.name") => pod.to_string(),
                            Some("metadata.namespace") => self.namespace.clone(),
                            other => panic!("env {} from {other:?}: not simulated", var.name),
                        }
                    }
                    (None, None) => String::new(),
                };
                (var.name.clone(), value)
            })
            .collect()
    }
}

/// A running `coded-operator` process; killed when dropped.
pub struct Operator {
    child: Child,
    pub identity: String,
    pub metrics_addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Operator {
    /// Starts the operator as pod `pod` of `deployed`.
    pub async fn start(cluster: &Cluster, deployed: &Deployed, pod: &str) -> Self {
        let dir = TempDir::new();
        let token = token(cluster, &deployed.namespace, &deployed.service_account).await;
        // A kubeconfig with nothing but the token: no client certificate to fall back on.
        let kubeconfig = dir.path().join("kubeconfig");
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {
                "server": cluster.server,
                "certificate-authority": cluster.ca,
            }}],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {
                "cluster": "e2e", "user": "operator", "namespace": deployed.namespace,
            }}],
            "current-context": "e2e",
        });
        std::fs::write(&kubeconfig, config.to_string()).expect("writing the kubeconfig");
        let metrics_addr = free_addr();
        let log = dir.path().join("operator.log");
        let stdout = File::create(&log).expect("log file");
        let stderr = stdout.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_coded-operator"))
            .arg("--metrics-addr")
            .arg(metrics_addr.to_string())
            // Only what the pod would have, plus the kubeconfig in place of
            // the in-cluster service-account mount.
            .env_clear()
            .envs(deployed.env_of(pod))
            .env("KUBECONFIG", &kubeconfig)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .expect("starting coded-operator");
        Operator {
            child,
            identity: pod.to_string(),
            metrics_addr,
            log,
            _dir: dir,
        }
    }

    /// SIGKILL: no graceful shutdown, no lease release, whatever it was doing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as the kubelet sends; waits for the exit (and SIGKILLs after 30 s).
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        self.child.wait().expect("waiting for the operator")
    }

    /// The body of `GET /metrics`, or an error while the server is not up.
    pub async fn metrics(&self) -> Result<String, String> {
        let mut stream = tokio::net::TcpStream::connect(self.metrics_addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.metrics_addr))?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP body")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(head.to_string());
        }
        Ok(body.to_string())
    }

    /// The value of an unlabelled metric, e.g. `coded_operator_leader`.
    pub async fn gauge(&self, name: &str) -> Result<f64, String> {
        let body = self.metrics().await?;
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .ok_or_else(|| format!("{name} not in /metrics"))
    }

    /// The process's peak resident set (VmHWM), in KiB.
    #[allow(dead_code)] // for tests/scale.rs
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    /// The end of the log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- log of operator {}:\n{}",
                self.identity,
                self.log_tail()
            );
        }
    }
}

/// A token of the ServiceAccount through the TokenRequest API, as
/// `kubectl create token` gets one.
async fn token(cluster: &Cluster, namespace: &str, service_account: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let answer = accounts
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .expect("a TokenRequest for the operator's ServiceAccount");
    answer.status.expect("a token").token
}

/// A loopback address nobody listens on (for the operator's /metrics).
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("its address")
}
