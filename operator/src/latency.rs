//! The observed tail latency of a `CodedInferenceService`, read from
//! Prometheus: the SLO quantile of its frontends' request latency
//! (`coded_frontend_request_duration_seconds`) over a window, selected by
//! the labels our ServiceMonitor gives pods (`namespace`,
//! `coded_dev_service`).

use std::time::Duration;

use serde::Deserialize;

/// What one query said.
#[derive(Debug, Clone, PartialEq)]
pub enum SloReading {
    /// The quantile, in seconds.
    Observed(f64),
    /// No answered requests in the window (or the frontends are not scraped).
    NoTraffic,
    /// The query failed; the error says why.
    Unreachable(String),
}

/// Queries Prometheus with a short timeout, so that a dead Prometheus never
/// holds up a reconcile for long.
#[derive(Clone)]
pub struct LatencyReader {
    http: reqwest::Client,
    /// The `rate()` window, e.g. `5m`.
    pub window: String,
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(default)]
    result: Vec<Sample>,
}

#[derive(Deserialize)]
struct Sample {
    value: (f64, String),
}

impl LatencyReader {
    pub fn new(window: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        // reqwest is built without a crypto provider of its own (ring is
        // kube's already); installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(LatencyReader {
            http: reqwest::Client::builder().timeout(timeout).build()?,
            window: window.to_owned(),
        })
    }

    /// The PromQL for a resource's latency at `quantile`.
    pub fn query(&self, namespace: &str, name: &str, quantile: f64) -> String {
        format!(
            "histogram_quantile({quantile}, sum by (le) (rate(coded_frontend_request_duration_seconds_bucket{{namespace=\"{}\",coded_dev_service=\"{}\"}}[{}])))",
            escape(namespace),
            escape(name),
            self.window
        )
    }

    pub async fn read(&self, url: &str, namespace: &str, name: &str, quantile: f64) -> SloReading {
        let query = self.query(namespace, name, quantile);
        match self.instant(url, &query).await {
            Ok(Some(v)) if v.is_finite() => SloReading::Observed(v),
            Ok(_) => SloReading::NoTraffic,
            Err(e) => SloReading::Unreachable(e),
        }
    }

    async fn instant(&self, url: &str, query: &str) -> Result<Option<f64>, String> {
        let endpoint = format!("{}/api/v1/query", url.trim_end_matches('/'));
        let mut target = reqwest::Url::parse(&endpoint).map_err(|e| format!("{endpoint}: {e}"))?;
        target.query_pairs_mut().append_pair("query", query);
        let response = self
            .http
            .get(target)
            .send()
            .await
            .map_err(|e| format!("{endpoint}: {e}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| format!("{endpoint}: {e}"))?;
        let answer: Answer = serde_json::from_str(&body).map_err(|_| {
            format!(
                "{endpoint} answered {status}: {}",
                body.chars().take(200).collect::<String>()
            )
        })?;
        if answer.status != "success" {
            return Err(format!(
                "{endpoint} refused the query: {}",
                answer.error.unwrap_or(answer.status)
            ));
        }
        Ok(answer
            .data
            .and_then(|d| d.result.into_iter().next())
            .and_then(|s| s.value.1.parse().ok()))
    }
}

/// A PromQL string literal's content.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Seconds of a latency such as `50ms`, `1.5s` or `800us` (the CRD's
/// `slo.latencyTarget` pattern).
pub fn parse_latency(s: &str) -> Option<f64> {
    // Divided, not multiplied: 800us is exactly 800 / 1e6 = 0.0008.
    let (number, per_second) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let v: f64 = number.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v / per_second)
}

/// A latency as people write it: `850us`, `42ms`, `1.25s`.
pub fn format_latency(seconds: f64) -> String {
    if seconds < 1e-3 {
        format!("{:.0}us", seconds * 1e6)
    } else if seconds < 1.0 {
        let ms = seconds * 1e3;
        if ms < 10.0 {
            format!("{ms:.1}ms")
        } else {
            format!("{ms:.0}ms")
        }
    } else {
        format!("{seconds:.2}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_parse_and_format_both_ways() {
        assert_eq!(parse_latency("50ms"), Some(0.05));
        assert_eq!(parse_latency("1.5s"), Some(1.5));
        assert_eq!(parse_latency("800us"), Some(0.0008));
        assert_eq!(parse_latency("5m"), None);
        assert_eq!(parse_latency("ms"), None);
        assert_eq!(format_latency(0.00085), "850us");
        assert_eq!(format_latency(0.0042), "4.2ms");
        assert_eq!(format_latency(0.042), "42ms");
        assert_eq!(format_latency(1.25), "1.25s");
        for s in ["850us", "42ms", "1.25s"] {
            assert_eq!(format_latency(parse_latency(s).unwrap()), s);
        }
    }

    #[test]
    fn the_query_selects_the_resource_by_its_pods_labels() {
        let r = LatencyReader::new("5m", Duration::from_secs(1)).unwrap();
        assert_eq!(
            r.query("prod", "fashion", 0.99),
            "histogram_quantile(0.99, sum by (le) (rate(coded_frontend_request_duration_seconds_bucket{namespace=\"prod\",coded_dev_service=\"fashion\"}[5m])))"
        );
    }
}
