//! Request metrics of a v2 server (`<prefix>_requests_total`, errors by
//! reason, latency histogram, in-flight gauge), registered on the server's
//! own registry so that tests can run many servers in one process.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use super::engine::InferError;
use super::stats::Stats;

/// Latency buckets from 50 µs (an MLP forward pass is ~30 µs) to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

#[derive(Clone)]
pub struct RequestMetrics {
    /// Successful infer requests, from arrival to response built.
    pub request_duration: Histogram,
    /// Infer requests, answered or not.
    pub requests: IntCounter,
    /// Failed infer requests by `reason`.
    pub errors: IntCounterVec,
    pub inflight: IntGauge,
    /// Infer requests refused by admission (`--max-inflight-*`), by
    /// `reason`. Those refused at arrival are not in `requests` or
    /// `errors`; those refused once their body was read (no announced
    /// length, or inflated past the limit) are in both.
    pub refused: IntCounterVec,
    /// The cap on infer requests in flight now: the learnt one when
    /// shedding (`--shed-queue-delay-ms`), else `--max-inflight-requests`;
    /// 0 when there is none.
    pub inflight_limit: IntGauge,
    /// Triton's statistics of the same requests (`/v2/models/{m}/stats`).
    pub stats: Arc<Stats>,
}

impl RequestMetrics {
    /// Registers `<prefix>_request_duration_seconds`, `<prefix>_requests_total`,
    /// `<prefix>_request_errors_total{reason}`, `<prefix>_inflight_requests`,
    /// `<prefix>_inflight_limit` and `<prefix>_requests_refused_total{reason}`,
    /// each with a constant `model` label.
    pub fn register(
        registry: &Registry,
        prefix: &str,
        model: &str,
    ) -> Result<Self, prometheus::Error> {
        let opts = |name: &str, help: &str| {
            Opts::new(format!("{prefix}_{name}"), help).const_label("model", model)
        };
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                format!("{prefix}_request_duration_seconds"),
                "Time to answer a successful infer request, from arrival to response",
            )
            .const_label("model", model)
            .buckets(LATENCY_BUCKETS.to_vec()),
        )?;
        let requests = IntCounter::with_opts(opts("requests_total", "Infer requests received"))?;
        let errors = IntCounterVec::new(
            opts(
                "request_errors_total",
                "Infer requests answered with an error",
            ),
            &["reason"],
        )?;
        let inflight =
            IntGauge::with_opts(opts("inflight_requests", "Infer requests being answered"))?;
        let refused = IntCounterVec::new(
            opts(
                "requests_refused_total",
                "Infer requests refused unread because the server was at a limit (--max-inflight-requests, --max-inflight-bytes)",
            ),
            &["reason"],
        )?;
        let inflight_limit = IntGauge::with_opts(opts(
            "inflight_limit",
            "Cap on infer requests in flight now: learnt when shedding (--shed-queue-delay-ms), else --max-inflight-requests; 0 when none",
        ))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(inflight_limit.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        Ok(RequestMetrics {
            request_duration,
            requests,
            errors,
            inflight,
            refused,
            inflight_limit,
            stats: Arc::new(Stats::default()),
        })
    }

    /// Counts one infer request, over HTTP or gRPC alike, around `work`: in
    /// flight while it runs, its latency if answered, its reason if not
    /// (logged as a warning when the fault is ours).
    pub async fn observe<T>(
        &self,
        work: impl Future<Output = Result<T, InferError>>,
    ) -> Result<T, InferError> {
        let started = Instant::now();
        self.requests.inc();
        self.stats.arrived();
        self.inflight.inc();
        let _inflight = InFlight(&self.inflight);
        let result = work.await;
        self.stats.finished(result.is_ok(), started.elapsed());
        match &result {
            Ok(_) => self
                .request_duration
                .observe(started.elapsed().as_secs_f64()),
            Err(e) => {
                self.errors.with_label_values(&[e.reason()]).inc();
                if e.status().is_server_error() {
                    tracing::warn!("infer failed: {e}");
                } else {
                    tracing::debug!("bad infer request: {e}");
                }
            }
        }
        result
    }
}

/// Leaves the in-flight gauge when dropped, also when the caller went
/// away and the request's future was dropped mid-way.
struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The Prometheus text exposition of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding gathered families into a Vec cannot fail.
    if TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}
