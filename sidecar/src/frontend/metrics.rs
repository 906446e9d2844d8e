//! The frontend's Prometheus metrics, `coded_frontend_*`, on its own
//! registry: what clients see (requests, latency, errors), what the code
//! did (reconstructions, retries, timeouts, late answers, group fill) and
//! how each instance behaves (latency histogram, calls, errors, straggler).

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use super::instance::Role;
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
    /// Queries rebuilt while a usable model instance had no call in
    /// flight: approximate answers an idle instance could have made exact.
    pub rebuilt_while_idle: IntCounter,
    /// Copies of calls sent to instances marked slow, to see them recover.
    pub sampled_calls: IntCounter,
    /// Calls given up once their batch was done and they were late: the
    /// instance skips their rows instead of working through a backlog.
    pub abandoned_calls: IntCounter,
    /// Coding batches with queries still waiting for their answers (at
    /// most `--max-inflight-batches`: a batch ends with its last answer).
    pub batches_running: IntGauge,
    /// Real queries per coding group (the rest is zero padding).
    pub group_fill: Histogram,
    /// Coding groups per coding batch.
    pub batch_groups: Histogram,
    /// Calls to each instance, by role and instance URL.
    pub instance_duration: HistogramVec,
    pub instance_errors: IntCounterVec,
    /// 1 while the watcher counts an instance as a straggler.
    pub instance_straggler: IntGaugeVec,
    /// 1 while the instance is up and its last health probe succeeded.
    pub instance_ready: IntGaugeVec,
    /// Delay before the `deadline` policy serves a reconstruction, in µs.
    pub reconstruct_after_us: IntGauge,
    /// The watcher's latest model-call latency at the deadline quantile.
    pub observed_latency: GaugeVec,
    /// 1 for the source of the watcher's marks and deadline: `prometheus`
    /// or `local` (the frontend's own windows).
    pub latency_source: IntGaugeVec,
    /// Prometheus queries that failed (the watcher falls back meanwhile).
    pub prometheus_errors: IntCounter,
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
            rebuilt_while_idle: counter(
                "reconstructions_while_idle_total",
                "Queries reconstructed while a usable model instance had no call in flight",
            )?,
            sampled_calls: counter(
                "sampled_calls_total",
                "Copies of calls sent to instances marked slow, to see whether they recovered (answers only timed)",
            )?,
            abandoned_calls: counter(
                "abandoned_calls_total",
                "Calls given up because every query of their batch was answered and they were late",
            )?,
            batches_running: IntGauge::with_opts(opts(
                "batches_running",
                "Coding batches with queries still waiting for their answers",
            ))?,
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
            instance_ready: IntGaugeVec::new(
                opts(
                    "instance_ready",
                    "1 while the instance answers its health probe and calls",
                ),
                &["role", "instance"],
            )?,
            observed_latency: GaugeVec::new(
                opts(
                    "observed_latency_seconds",
                    "Model-call latency at the deadline quantile, as the watcher last saw it",
                ),
                &["quantile"],
            )?,
            latency_source: IntGaugeVec::new(
                opts(
                    "latency_source",
                    "1 for where the watcher's straggler marks and deadline come from (prometheus or local)",
                ),
                &["source"],
            )?,
            prometheus_errors: counter(
                "prometheus_query_errors_total",
                "Prometheus queries of the watcher that failed",
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
            &m.rebuilt_while_idle,
            &m.sampled_calls,
            &m.abandoned_calls,
            &m.prometheus_errors,
        ] {
            m.registry.register(Box::new(c.clone()))?;
        }
        m.registry.register(Box::new(m.batches_running.clone()))?;
        m.registry.register(Box::new(m.group_fill.clone()))?;
        m.registry.register(Box::new(m.batch_groups.clone()))?;
        m.registry.register(Box::new(m.instance_duration.clone()))?;
        m.registry.register(Box::new(m.instance_errors.clone()))?;
        m.registry
            .register(Box::new(m.instance_straggler.clone()))?;
        m.registry
            .register(Box::new(m.reconstruct_after_us.clone()))?;
        m.registry.register(Box::new(m.instance_ready.clone()))?;
        m.registry.register(Box::new(m.observed_latency.clone()))?;
        m.registry.register(Box::new(m.latency_source.clone()))?;
        Ok(m)
    }

    /// Drops every series of an instance that left the pool: pods come and
    /// go under discovery, and their series must not pile up.
    pub fn forget_instance(&self, role: Role, url: &str) {
        let labels = [role.as_str(), url];
        // Absent series (never published) are not an error worth a word.
        let _ = self.instance_duration.remove_label_values(&labels);
        let _ = self.instance_errors.remove_label_values(&labels);
        let _ = self.instance_straggler.remove_label_values(&labels);
        let _ = self.instance_ready.remove_label_values(&labels);
    }
}
