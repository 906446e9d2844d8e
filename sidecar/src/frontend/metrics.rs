//! The frontend's Prometheus metrics, `coded_frontend_*`, on its own
//! registry: what clients see (requests, latency, errors), what the code
//! did (reconstructions, retries, timeouts, late answers, group fill) and
//! how each instance behaves (latency histogram, calls, errors, straggler).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::http::metrics::{LATENCY_BUCKETS, RequestMetrics};

pub struct Metrics {
    pub registry: Registry,
    pub request: RequestMetrics,
    /// Rows of infer requests: each is one query for coding.
    pub queries: IntCounter,
    /// Queries answered from the parity output instead of their own.
    pub reconstructions: IntCounter,
    /// Model calls sent again because a slot could not be rebuilt.
    pub retries: IntCounter,
    /// Queries answered with 504 at their deadline.
    pub timeouts: IntCounter,
    /// Real answers that came after their query was reconstructed.
    pub late_answers: IntCounter,
    /// Real queries per coding group (the rest is zero padding).
    pub group_fill: Histogram,
    /// Coding groups per coding batch.
    pub batch_groups: Histogram,
    /// Calls to each instance, by role and instance URL.
    pub instance_duration: HistogramVec,
    pub instance_errors: IntCounterVec,
    /// 1 while the watcher counts an instance as a straggler.
    pub instance_straggler: IntGaugeVec,
    /// Delay before the `deadline` policy serves a reconstruction, in µs.
    pub reconstruct_after_us: IntGauge,
}

impl Metrics {
    pub fn new(model: &str, k: usize) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let request = RequestMetrics::register(&registry, "coded_frontend", model)?;
        let opts = |name: &str, help: &str| {
            Opts::new(format!("coded_frontend_{name}"), help).const_label("model", model)
        };
        let hist = |name: &str, help: &str, buckets: Vec<f64>| {
            HistogramOpts::new(format!("coded_frontend_{name}"), help)
                .const_label("model", model)
                .buckets(buckets)
        };
        let counter = |name: &str, help: &str| IntCounter::with_opts(opts(name, help));
        let m = Metrics {
            queries: counter("queries_total", "Queries (rows of infer requests) received")?,
            reconstructions: counter(
                "reconstructions_total",
                "Queries answered by decoding the parity output",
            )?,
            retries: counter(
                "retries_total",
                "Model calls sent again because a query could not be rebuilt",
            )?,
            timeouts: counter(
                "timeouts_total",
                "Queries answered with an error at their deadline",
            )?,
            late_answers: counter(
                "late_answers_dropped_total",
                "Real answers dropped because the query was already reconstructed",
            )?,
            group_fill: Histogram::with_opts(hist(
                "group_fill",
                "Real queries per coding group (the rest is zero padding)",
                (1..=k).map(|i| i as f64).collect(),
            ))?,
            batch_groups: Histogram::with_opts(hist(
                "batch_groups",
                "Coding groups per coding batch",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
            ))?,
            instance_duration: HistogramVec::new(
                hist(
                    "instance_request_duration_seconds",
                    "Latency of successful calls to each model and parity instance",
                    LATENCY_BUCKETS.to_vec(),
                ),
                &["role", "instance"],
            )?,
            instance_errors: IntCounterVec::new(
                opts(
                    "instance_errors_total",
                    "Failed calls to each instance (timeouts, refused, 5xx)",
                ),
                &["role", "instance"],
            )?,
            instance_straggler: IntGaugeVec::new(
                opts(
                    "instance_straggler",
                    "1 while dispatch avoids the instance as a straggler or as down",
                ),
                &["role", "instance"],
            )?,
            reconstruct_after_us: IntGauge::with_opts(opts(
                "reconstruct_after_microseconds",
                "How long the deadline policy waits for a real answer before reconstructing",
            ))?,
            request,
            registry,
        };
        for c in [
            &m.queries,
            &m.reconstructions,
            &m.retries,
            &m.timeouts,
            &m.late_answers,
        ] {
            m.registry.register(Box::new(c.clone()))?;
        }
        m.registry.register(Box::new(m.group_fill.clone()))?;
        m.registry.register(Box::new(m.batch_groups.clone()))?;
        m.registry.register(Box::new(m.instance_duration.clone()))?;
        m.registry.register(Box::new(m.instance_errors.clone()))?;
        m.registry
            .register(Box::new(m.instance_straggler.clone()))?;
        m.registry
            .register(Box::new(m.reconstruct_after_us.clone()))?;
        Ok(m)
    }
}
