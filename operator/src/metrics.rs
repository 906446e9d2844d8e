//! The operator's own Prometheus metrics, served on `/metrics`.

use std::sync::OnceLock;
use std::time::Instant;

use kube::ResourceExt;
use kube::runtime::reflector::Store;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::crd::CodedInferenceService;

/// Metrics of the reconcile loop and of leader election.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciliations started, by outcome once finished.
    pub reconciliations: IntCounterVec,
    /// Failed reconciliations by error kind.
    pub failures: IntCounterVec,
    /// Time spent in one reconciliation.
    pub duration: HistogramVec,
    /// 1 while this replica holds the leader lease (or runs without election).
    pub leader: IntGauge,
    /// Ready instances per resource and role, from the controller's cache.
    instances: IntGaugeVec,
    /// Conditions per resource, one-hot over `status`, from the controller's cache.
    conditions: IntGaugeVec,
    observed_latency: GaugeVec,
    /// The controller's cache of resources; per-resource gauges are read
    /// from it at scrape time, so a deleted resource leaves no stale series.
    services: OnceLock<Store<CodedInferenceService>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // Metric definitions are constants: failing here is a programming error.
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "coded_operator_reconciliations_total",
                "Reconciliations of CodedInferenceServices by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "coded_operator_reconcile_errors_total",
                "Failed reconciliations by error kind",
            ),
            &["error"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "coded_operator_reconcile_duration_seconds",
                "Duration of one reconciliation",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["result"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "coded_operator_leader",
            "1 while this replica leads and runs the controller",
        )
        .expect("valid metric");
        let instances = IntGaugeVec::new(
            Opts::new(
                "coded_service_ready_instances",
                "Ready instances of a CodedInferenceService by role",
            ),
            &["namespace", "name", "role"],
        )
        .expect("valid metric");
        let conditions = IntGaugeVec::new(
            Opts::new(
                "coded_service_condition",
                "Conditions of a CodedInferenceService: 1 for the current status",
            ),
            &["namespace", "name", "condition", "status"],
        )
        .expect("valid metric");
        let observed_latency = GaugeVec::new(
            Opts::new(
                "coded_service_observed_latency_seconds",
                "Observed latency of a CodedInferenceService at its SLO quantile (status.observedLatency)",
            ),
            &["namespace", "name", "quantile"],
        )
        .expect("valid metric");
        for c in [
            Box::new(observed_latency.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconciliations.clone()),
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(leader.clone()),
            Box::new(instances.clone()),
            Box::new(conditions.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Self {
            registry,
            reconciliations,
            failures,
            duration,
            leader,
            instances,
            conditions,
            observed_latency,
            services: OnceLock::new(),
        }
    }

    /// Exposes per-resource gauges from the controller's cache. Only the first store is kept.
    pub fn watch_services(&self, store: Store<CodedInferenceService>) {
        let _ = self.services.set(store);
    }

    fn refresh_service_gauges(&self) {
        let Some(store) = self.services.get() else {
            return;
        };
        self.instances.reset();
        self.conditions.reset();
        self.observed_latency.reset();
        for cis in store.state() {
            let (ns, name) = (cis.namespace().unwrap_or_default(), cis.name_any());
            let Some(status) = &cis.status else { continue };
            for (role, ready) in [
                ("model", status.model_ready),
                ("parity", status.parity_ready),
                ("frontend", status.frontend_ready),
            ] {
                self.instances
                    .with_label_values(&[&ns, &name, role])
                    .set(i64::from(ready));
            }
            if let (Some(slo), Some(seconds)) = (
                &cis.spec.slo,
                status
                    .observed_latency
                    .as_deref()
                    .and_then(crate::latency::parse_latency),
            ) {
                self.observed_latency
                    .with_label_values(&[&ns, &name, &slo.quantile.to_string()])
                    .set(seconds);
            }
            for c in &status.conditions {
                for value in ["True", "False", "Unknown"] {
                    self.conditions
                        .with_label_values(&[&ns, &name, &c.type_, &value.to_lowercase()])
                        .set(i64::from(c.status == value));
                }
            }
        }
    }

    /// Starts timing a reconciliation; call [`ReconcileTimer::finish`] with its outcome.
    pub fn start_reconcile(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            start: Instant::now(),
        }
    }

    /// Counts a failure by error kind.
    pub fn record_failure(&self, error: &crate::Error) {
        self.failures
            .with_label_values(&[error.metric_label()])
            .inc();
    }

    /// The registry in Prometheus' text format.
    pub fn render(&self) -> String {
        self.refresh_service_gauges();
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Measures one reconciliation.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    start: Instant,
}

impl ReconcileTimer<'_> {
    pub fn finish(self, ok: bool) {
        let result = if ok { "success" } else { "error" };
        self.metrics
            .duration
            .with_label_values(&[result])
            .observe(self.start.elapsed().as_secs_f64());
        self.metrics
            .reconciliations
            .with_label_values(&[result])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_outcomes_are_counted_and_rendered() {
        let m = Metrics::new();
        m.start_reconcile().finish(true);
        m.start_reconcile().finish(false);
        m.record_failure(&crate::Error::MissingField("namespace"));
        let text = m.render();
        assert!(text.contains(r#"coded_operator_reconciliations_total{result="success"} 1"#));
        assert!(text.contains(r#"coded_operator_reconciliations_total{result="error"} 1"#));
        assert!(text.contains(r#"coded_operator_reconcile_errors_total{error="missing_field"} 1"#));
        assert!(
            text.contains("coded_operator_reconcile_duration_seconds_count{result=\"success\"} 1")
        );
        assert!(text.contains("coded_operator_leader 0"));
        assert!(!text.contains("coded_service_"), "no resources known yet");
    }

    #[test]
    fn per_service_gauges_follow_the_cache() {
        use crate::status::{Observed, compute};
        use kube::runtime::watcher::Event;
        let m = Metrics::new();
        let (store, mut writer) = kube::runtime::reflector::store::<CodedInferenceService>();
        m.watch_services(store);
        let mut cis = crate::fixtures::cis("demo");
        let observed = Observed {
            model_ready: 2,
            parity_ready: 0,
            frontend_ready: 1,
            parities_down: 0,
        };
        let now = k8s_openapi::jiff::Timestamp::UNIX_EPOCH;
        cis.spec.slo = Some(crate::crd::SloSpec {
            latency_target: "50ms".into(),
            quantile: 0.99,
        });
        let mut status = compute(&cis, observed, "e".into(), now);
        let reading = crate::latency::SloReading::Observed(0.042);
        crate::status::set_slo(
            &mut status,
            &cis,
            Some("http://p"),
            Some(&reading),
            "5m",
            now,
        );
        cis.status = Some(status);
        writer.apply_watcher_event(&Event::Apply(cis.clone()));
        let text = m.render();
        assert!(text.contains(
            r#"coded_service_observed_latency_seconds{name="demo",namespace="ns1",quantile="0.99"} 0.042"#
        ));
        assert!(text.contains(
            r#"coded_service_ready_instances{name="demo",namespace="ns1",role="model"} 2"#
        ));
        assert!(text.contains(
            r#"coded_service_condition{condition="Degraded",name="demo",namespace="ns1",status="true"} 1"#
        ));
        assert!(text.contains(
            r#"coded_service_condition{condition="Degraded",name="demo",namespace="ns1",status="false"} 0"#
        ));
        writer.apply_watcher_event(&Event::Delete(cis));
        assert!(
            !m.render().contains("coded_service_"),
            "deleted resources vanish"
        );
    }
}
