//! A Prometheus on loopback beside a local topology (`local --prometheus`,
//! `bench stragglers --prometheus`, the tests), with the project's rules
//! loaded and targets labelled as the operator's ServiceMonitor labels pods
//! in a cluster (`namespace`, `pod`, `coded_dev_service`, `coded_dev_role`),
//! so that the dashboard's and the rules' queries work unchanged.
//!
//! Targets live in a file Prometheus watches (`file_sd`), so the frontend,
//! whose port is known only once it runs, can be added after Prometheus
//! starts and the frontend can be told Prometheus' URL first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::json;

use super::process::Child;

/// The project's recording and alerting rules (`deploy/monitoring`).
pub const RULES: &str = include_str!("../../../deploy/monitoring/prometheus-rules.yaml");

/// How long Prometheus may take to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One `/metrics` endpoint to scrape.
#[derive(Debug, Clone)]
pub struct ScrapeTarget {
    /// `host:port`.
    pub address: String,
    pub labels: BTreeMap<String, String>,
}

impl ScrapeTarget {
    /// The target of a child serving at `url`, labelled like the pod that
    /// would run it: `<service>-<role>-<index>` (the frontend has no index).
    pub fn new(url: &str, service: &str, role: &str, index: Option<usize>) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("target URL {url}"))?;
        let host = parsed.host_str().context("target URL has no host")?;
        let port = parsed
            .port_or_known_default()
            .context("target URL has no port")?;
        let pod = match index {
            Some(i) => format!("{service}-{role}-{i}"),
            None => format!("{service}-{role}"),
        };
        let labels = [
            ("namespace", "local".to_owned()),
            ("pod", pod),
            ("coded_dev_service", service.to_owned()),
            ("coded_dev_role", role.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Ok(ScrapeTarget {
            address: format!("{host}:{port}"),
            labels,
        })
    }
}

#[derive(Debug, Clone)]
pub struct PrometheusSpec {
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// Scrape and rule evaluation interval.
    pub interval: Duration,
}

impl Default for PrometheusSpec {
    fn default() -> Self {
        PrometheusSpec {
            port: 0,
            interval: Duration::from_secs(1),
        }
    }
}

/// A running Prometheus; its data lives in a temporary directory removed
/// when this is dropped.
pub struct LocalPrometheus {
    pub url: String,
    child: Child,
    targets_file: PathBuf,
    dir: tempfile::TempDir,
}

/// The `prometheus` binary: `$PROMETHEUS`, or `prometheus` on the PATH.
pub fn binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROMETHEUS") {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}

impl LocalPrometheus {
    pub async fn start(spec: &PrometheusSpec, targets: &[ScrapeTarget]) -> anyhow::Result<Self> {
        let exe = binary().context(
            "no `prometheus` on the PATH: install it (Debian: `apt-get install prometheus`) \
             or set PROMETHEUS to its path",
        )?;
        let dir = tempfile::Builder::new()
            .prefix("coded-prometheus-")
            .tempdir()
            .context("creating Prometheus' data directory")?;
        let targets_file = dir.path().join("targets.json");
        write_targets(&targets_file, targets)?;
        let rules = dir.path().join("rules.yaml");
        std::fs::write(&rules, RULES).context("writing the rules")?;
        let interval = format!("{}ms", spec.interval.as_millis().max(100));
        let config = json!({
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "rule_files": [rules],
            "scrape_configs": [{
                "job_name": "coded-serving",
                "file_sd_configs": [{ "files": [targets_file], "refresh_interval": "1s" }],
            }],
        });
        let config_file = dir.path().join("prometheus.yml");
        // JSON is YAML, which is what Prometheus reads.
        std::fs::write(&config_file, serde_json::to_vec_pretty(&config)?)
            .context("writing the Prometheus config")?;

        let port = match spec.port {
            0 => free_port()?,
            p => p,
        };
        let address = format!("127.0.0.1:{port}");
        let log = dir.path().join("prometheus.log");
        let log_file = std::fs::File::create(&log).context("creating Prometheus' log")?;
        let mut command = tokio::process::Command::new(&exe);
        super::process::die_with_parent(&mut command);
        let child = command
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let url = format!("http://{address}");
        let mut child = Child::adopt("prometheus", url.clone(), child);
        if let Err(e) = wait_ready(&url, &mut child).await {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            child.stop().await;
            let said: Vec<&str> = tail.into_iter().rev().collect();
            bail!("{e:#}; Prometheus said:\n{}", said.join("\n"));
        }
        Ok(LocalPrometheus {
            url,
            child,
            targets_file,
            dir,
        })
    }

    /// Replaces the scrape targets; Prometheus picks the file up within a
    /// second or two.
    pub fn set_targets(&self, targets: &[ScrapeTarget]) -> anyhow::Result<()> {
        write_targets(&self.targets_file, targets)
    }

    /// Waits until `n` targets are scraped successfully.
    pub async fn wait_for_targets(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let up = async {
                let text = http
                    .get(format!("{}/api/v1/targets?state=active", self.url))
                    .send()
                    .await?
                    .text()
                    .await?;
                let body: serde_json::Value = serde_json::from_str(&text)?;
                anyhow::Ok(
                    body["data"]["activeTargets"]
                        .as_array()
                        .map(|t| t.iter().filter(|t| t["health"] == "up").count())
                        .unwrap_or(0),
                )
            }
            .await
            .unwrap_or(0);
            if up >= n {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("Prometheus scrapes {up} of {n} targets after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// For fault injection (e.g. SIGSTOP to make it unreachable).
    pub fn child(&self) -> &Child {
        &self.child
    }

    pub async fn stop(self) {
        self.child.stop().await;
    }
}

fn write_targets(path: &Path, targets: &[ScrapeTarget]) -> anyhow::Result<()> {
    let groups: Vec<serde_json::Value> = targets
        .iter()
        .map(|t| json!({ "targets": [t.address], "labels": t.labels }))
        .collect();
    // Written aside and renamed, so Prometheus never reads half a file.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::to_vec_pretty(&groups)?)
        .context("writing Prometheus targets")?;
    std::fs::rename(&partial, path).context("writing Prometheus targets")?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port for Prometheus")?;
    Ok(listener.local_addr()?.port())
}

async fn wait_ready(url: &str, child: &mut Child) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = child.exited() {
            bail!("Prometheus exited ({status})");
        }
        if let Ok(r) = http.get(format!("{url}/-/ready")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("Prometheus was not ready at {url} within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
