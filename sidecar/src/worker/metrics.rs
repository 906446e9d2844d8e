//! Prometheus metrics of a worker, served at `GET /metrics`.
//!
//! Each worker has its own registry (not the process-global one) so tests
//! can run many workers in one process. Every series carries a constant
//! `model` label so that Prometheus can tell base and parity workers apart
//! when the frontend's watcher asks for their latency quantiles.

use prometheus::{Histogram, HistogramOpts, Registry};

use crate::http::metrics::{LATENCY_BUCKETS, RequestMetrics, render};

const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

pub struct Metrics {
    pub registry: Registry,
    /// `coded_worker_requests_total`, errors, latency, in flight.
    pub request: RequestMetrics,
    /// Rows per model call.
    pub batch_size: Histogram,
    /// Time a request waits in the batcher's queue before its batch starts.
    pub queue_duration: Histogram,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new(model: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let request = RequestMetrics::register(&registry, "coded_worker", model)?;
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help)
                .const_label("model", model)
                .buckets(buckets.to_vec())
        };
        let batch_size = Histogram::with_opts(hist(
            "coded_worker_batch_size",
            "Rows per model call after dynamic batching",
            BATCH_BUCKETS,
        ))?;
        let queue_duration = Histogram::with_opts(hist(
            "coded_worker_queue_duration_seconds",
            "Time a request waits for its batch to start",
            LATENCY_BUCKETS,
        ))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(queue_duration.clone()))?;
        Ok(Metrics {
            registry,
            request,
            batch_size,
            queue_duration,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_the_model_label() {
        let m = Metrics::new("mlp").unwrap();
        m.request.requests.inc();
        m.request.errors.with_label_values(&["bad_shape"]).inc();
        m.request.request_duration.observe(0.00004);
        m.batch_size.observe(3.0);
        m.queue_duration.observe(0.0001);
        let text = m.render();
        for name in [
            "coded_worker_request_duration_seconds_bucket{model=\"mlp\",le=\"0.00005\"} 1",
            "coded_worker_requests_total{model=\"mlp\"} 1",
            "coded_worker_request_errors_total{model=\"mlp\",reason=\"bad_shape\"} 1",
            "coded_worker_batch_size_bucket{model=\"mlp\",le=\"4\"} 1",
            "coded_worker_queue_duration_seconds_count{model=\"mlp\"} 1",
            "coded_worker_inflight_requests{model=\"mlp\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing in\n{text}");
        }
    }
}
