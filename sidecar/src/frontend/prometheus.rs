//! Worker latency as Prometheus sees it: `histogram_quantile` over the
//! workers' `coded_worker_request_duration_seconds` buckets, per instance
//! and over all model instances. Workers time every call they answer, from
//! every frontend, so this is the service-wide view; the frontend's own
//! windows only see its own calls.
//!
//! A series belongs to an instance when its `instance` label is the
//! instance's `host:port` (a static scrape config, `coded-sidecar local`)
//! or its `pod` label is the first DNS label of the instance's host (a
//! StatefulSet pod behind a headless Service, as the operator runs them).
//! Instances found through a Service's addresses (`--model-service`) are
//! `http://<pod IP>:<port>`, which the `instance` label of a pod scraped
//! by its address matches.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The workers' latency histogram.
pub const WORKER_LATENCY: &str = "coded_worker_request_duration_seconds_bucket";

#[derive(Debug, thiserror::Error)]
pub enum PromError {
    #[error("Prometheus URL {0:?} is not http(s)://host[:port]")]
    BadUrl(String),
    #[error("Prometheus window {0:?} is not a duration such as 30s, 2m or 500ms")]
    BadWindow(String),
    #[error("querying Prometheus at {url}: {source}")]
    Transport {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("Prometheus at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("Prometheus refused the query {query:?}: {error}")]
    Query { query: String, error: String },
}

/// Where and what to ask.
#[derive(Debug, Clone)]
pub struct PromConfig {
    /// Base URL of the HTTP API, e.g. `http://prometheus:9090`.
    pub url: String,
    /// Label matchers (without braces) added to every selector, e.g.
    /// `namespace="prod"`, so that other services' pods of the same name
    /// are not mixed in.
    pub selector: String,
    /// The `rate()` window, a Prometheus duration such as `30s`.
    pub window: String,
    /// The quantile the `deadline` policy waits for.
    pub quantile: f64,
    /// Bounds every query.
    pub timeout: Duration,
}

/// What one poll learned.
#[derive(Debug, Clone, PartialEq)]
pub struct PromView {
    pub at: Instant,
    /// Median latency of model instances, then of parity instances, by
    /// URL; absent where Prometheus has no recent calls of that instance.
    /// By URL, not by place: discovery may change the instances between a
    /// poll and its use.
    pub model_medians: HashMap<String, f64>,
    pub parity_medians: HashMap<String, f64>,
    /// The configured quantile over every model instance's calls.
    pub tail: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

pub struct PromSource {
    config: PromConfig,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct AnswerData {
    #[serde(default)]
    result: Vec<VectorSample>,
}

#[derive(Deserialize)]
struct VectorSample {
    metric: BTreeMap<String, String>,
    /// `[unix time, "value"]`.
    value: (f64, String),
}

impl PromSource {
    pub fn new(mut config: PromConfig) -> Result<Self, PromError> {
        config.url = config.url.trim_end_matches('/').to_owned();
        if reqwest::Url::parse(&config.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .is_none()
        {
            return Err(PromError::BadUrl(config.url));
        }
        if !is_duration(&config.window) {
            return Err(PromError::BadWindow(config.window));
        }
        crate::tls::init();
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|source| PromError::Transport {
                url: config.url.clone(),
                source,
            })?;
        Ok(PromSource { config, http })
    }

    pub fn config(&self) -> &PromConfig {
        &self.config
    }

    /// An instant query; NaN values (no calls in the window) are dropped.
    pub async fn query(&self, query: &str) -> Result<Vec<Series>, PromError> {
        let url = format!("{}/api/v1/query", self.config.url);
        let transport = |source| PromError::Transport {
            url: url.clone(),
            source,
        };
        let mut target = reqwest::Url::parse(&url).map_err(|_| PromError::BadUrl(url.clone()))?;
        target.query_pairs_mut().append_pair("query", query);
        let response = self.http.get(target).send().await.map_err(transport)?;
        let status = response.status();
        let body = response.text().await.map_err(transport)?;
        let answer: Answer = match serde_json::from_str(&body) {
            Ok(a) => a,
            Err(_) => {
                return Err(PromError::Status {
                    url,
                    status: status.as_u16(),
                    body: body.chars().take(200).collect(),
                });
            }
        };
        if answer.status != "success" {
            return Err(PromError::Query {
                query: query.to_owned(),
                error: answer.error.unwrap_or(answer.status),
            });
        }
        Ok(answer
            .data
            .map(|d| d.result)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|s| {
                let value: f64 = s.value.1.parse().ok()?;
                value.is_finite().then_some(Series {
                    labels: s.metric,
                    value,
                })
            })
            .collect())
    }

    /// The selector of the workers' buckets, plus `extra` matchers.
    fn buckets(&self, extra: &str) -> String {
        let matchers: Vec<&str> = [self.config.selector.as_str(), extra]
            .into_iter()
            .filter(|m| !m.is_empty())
            .collect();
        format!(
            "rate({WORKER_LATENCY}{{{}}}[{}])",
            matchers.join(","),
            self.config.window
        )
    }

    /// The median of each worker (by `instance` and `pod`).
    pub fn per_instance_query(&self, quantile: f64) -> String {
        format!(
            "histogram_quantile({quantile}, sum by (le, instance, pod) ({}))",
            self.buckets("")
        )
    }

    /// The quantile over the calls of the workers whose `instance` labels
    /// are given.
    pub fn overall_query(&self, quantile: f64, instances: &[&str]) -> String {
        let alternatives: Vec<String> = instances.iter().map(|i| regex_escape(i)).collect();
        format!(
            "histogram_quantile({quantile}, sum by (le) ({}))",
            self.buckets(&format!("instance=~`{}`", alternatives.join("|")))
        )
    }

    /// Medians per instance and the tail over the model instances.
    pub async fn read(
        &self,
        models: &[String],
        parities: &[String],
    ) -> Result<PromView, PromError> {
        let medians = self.query(&self.per_instance_query(0.5)).await?;
        let find = |url: &str| medians.iter().find(|s| belongs(url, &s.labels));
        let medians_of = |urls: &[String]| -> HashMap<String, f64> {
            urls.iter()
                .filter_map(|u| Some((u.clone(), find(u)?.value)))
                .collect()
        };
        let (model_medians, parity_medians) = (medians_of(models), medians_of(parities));
        let model_instances: Vec<&str> = models
            .iter()
            .filter_map(|u| find(u)?.labels.get("instance").map(String::as_str))
            .collect();
        let tail = if model_instances.is_empty() {
            None
        } else {
            self.query(&self.overall_query(self.config.quantile, &model_instances))
                .await?
                .first()
                .map(|s| s.value)
        };
        Ok(PromView {
            at: Instant::now(),
            model_medians,
            parity_medians,
            tail,
        })
    }
}

/// Whether a series with these labels is the worker at `url`.
pub fn belongs(url: &str, labels: &BTreeMap<String, String>) -> bool {
    let Some(parsed) = reqwest::Url::parse(url).ok() else {
        return false;
    };
    let Some(host) = parsed.host_str() else {
        return false;
    };
    let port = parsed.port_or_known_default().unwrap_or(80);
    let loopback = |h: &str| matches!(h, "localhost" | "127.0.0.1" | "[::1]" | "::1");
    if let Some(instance) = labels.get("instance")
        && let Some((h, p)) = instance.rsplit_once(':')
        && p.parse() == Ok(port)
        && (h == host || (loopback(h) && loopback(host)))
    {
        return true;
    }
    let is_name = host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[');
    is_name
        && host.contains('.')
        && labels
            .get("pod")
            .is_some_and(|pod| host.split('.').next() == Some(pod.as_str()))
}

/// A Prometheus duration: digits and a unit, possibly repeated (`1m30s`).
fn is_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

/// Escapes RE2 metacharacters for a PromQL raw (backtick) string.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn series_belong_by_address_or_by_pod_name() {
        let local = labels(&[("instance", "127.0.0.1:9001")]);
        assert!(belongs("http://127.0.0.1:9001", &local));
        assert!(belongs("http://localhost:9001/", &local));
        assert!(!belongs("http://127.0.0.1:9002", &local));
        let pod = labels(&[("instance", "10.0.0.7:8080"), ("pod", "demo-model-1")]);
        assert!(belongs("http://demo-model-1.demo-model.ns1.svc:8080", &pod));
        assert!(!belongs(
            "http://demo-model-0.demo-model.ns1.svc:8080",
            &pod
        ));
        assert!(!belongs("not a url", &pod));
        // Instances found by resolving a Service are pod addresses.
        assert!(belongs("http://10.0.0.7:8080", &pod));
        assert!(!belongs("http://10.0.0.8:8080", &pod));
        let v6 = labels(&[("instance", "[fd00::7]:8080"), ("pod", "demo-model-1")]);
        assert!(belongs("http://[fd00::7]:8080", &v6));
    }

    #[test]
    fn queries_carry_the_selector_and_escape_instances() {
        let source = PromSource::new(PromConfig {
            url: "http://prom:9090/".into(),
            selector: r#"namespace="prod""#.into(),
            window: "30s".into(),
            quantile: 0.99,
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        assert_eq!(
            source.per_instance_query(0.5),
            "histogram_quantile(0.5, sum by (le, instance, pod) \
             (rate(coded_worker_request_duration_seconds_bucket{namespace=\"prod\"}[30s])))"
        );
        assert_eq!(
            source.overall_query(0.99, &["127.0.0.1:9001", "10.0.0.7:8080"]),
            "histogram_quantile(0.99, sum by (le) \
             (rate(coded_worker_request_duration_seconds_bucket{namespace=\"prod\",\
             instance=~`127\\.0\\.0\\.1:9001|10\\.0\\.0\\.7:8080`}[30s])))"
        );
    }

    #[test]
    fn bad_urls_and_windows_are_refused() {
        let config = |url: &str, window: &str| PromConfig {
            url: url.into(),
            selector: String::new(),
            window: window.into(),
            quantile: 0.99,
            timeout: Duration::from_secs(1),
        };
        assert!(matches!(
            PromSource::new(config("prom:9090", "30s")),
            Err(PromError::BadUrl(_))
        ));
        for bad in ["", "30", "s", "30 s", "-1m", "1.5m"] {
            assert!(
                matches!(
                    PromSource::new(config("http://p:9090", bad)),
                    Err(PromError::BadWindow(_))
                ),
                "{bad:?}"
            );
        }
        for good in ["30s", "500ms", "1m30s", "2h"] {
            assert!(
                PromSource::new(config("http://p:9090", good)).is_ok(),
                "{good}"
            );
        }
    }
}
