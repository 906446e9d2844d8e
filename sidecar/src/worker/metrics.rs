//! Prometheus metrics of a worker, served at `GET /metrics`.
//!
//! Each worker has its own registry (not the process-global one) so tests
//! can run many workers in one process. Every series carries a constant
//! `model` label so that Prometheus can tell base and parity workers apart
//! when the frontend's watcher asks for their latency quantiles.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Latency buckets from 50 µs (an MLP forward pass is ~30 µs) to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

pub struct Metrics {
    registry: Registry,
    /// Successful infer requests, from arrival to response built.
    pub request_duration: Histogram,
    /// Infer requests, answered or not.
    pub requests: IntCounter,
    /// Failed infer requests by `reason` (see `ProtocolError::reason`).
    pub errors: IntCounterVec,
    /// Rows per model call.
    pub batch_size: Histogram,
    /// Time a request waits in the batcher's queue before its batch starts.
    pub queue_duration: Histogram,
    pub inflight: IntGauge,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    pub fn new(model: &str) -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("model", model);
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            HistogramOpts::new(name, help)
                .const_label("model", model)
                .buckets(buckets.to_vec())
        };

        let request_duration = Histogram::with_opts(hist(
            "coded_worker_request_duration_seconds",
            "Time to answer a successful infer request, from arrival to response",
            LATENCY_BUCKETS,
        ))?;
        let requests = IntCounter::with_opts(opts(
            "coded_worker_requests_total",
            "Infer requests received",
        ))?;
        let errors = IntCounterVec::new(
            opts(
                "coded_worker_request_errors_total",
                "Infer requests answered with an error",
            ),
            &["reason"],
        )?;
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
        let inflight = IntGauge::with_opts(opts(
            "coded_worker_inflight_requests",
            "Infer requests being answered",
        ))?;

        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(queue_duration.clone()))?;
        registry.register(Box::new(inflight.clone()))?;

        Ok(Metrics {
            registry,
            request_duration,
            requests,
            errors,
            batch_size,
            queue_duration,
            inflight,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_the_model_label() {
        let m = Metrics::new("mlp").unwrap();
        m.requests.inc();
        m.errors.with_label_values(&["bad_shape"]).inc();
        m.request_duration.observe(0.00004);
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
