//! The status of a `CodedInferenceService`, computed from how many instances
//! of each role are ready. Pure: the reconciler observes, this decides.
//!
//! - `Ready`: the frontend can answer queries: a frontend is ready, at least
//!   one model instance is, and model plus parity instances are at least k,
//!   enough to decode every group.
//! - `Degraded`: ready, but with fewer than k model or r parity instances, so
//!   some losses in a coding group can no longer be rebuilt.
//! - `SLOMet`: whether the observed tail latency meets `spec.slo`, from a
//!   Prometheus reading ([`set_slo`]); Unknown, with the reason, while it
//!   cannot be measured.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::{CodedInferenceService, CodedInferenceServiceStatus};
use crate::latency::{SloReading, format_latency, parse_latency};

pub const READY: &str = "Ready";
pub const DEGRADED: &str = "Degraded";
pub const SLO_MET: &str = "SLOMet";

/// Reason of `Ready=False` when the spec breaks the schema's rules.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// Ready instances per role, as read from the children's status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    pub model_ready: i32,
    /// Of every parity's pool together.
    pub parity_ready: i32,
    pub frontend_ready: i32,
    /// Parities (r ≥ 2) none of whose instances is ready: the frontend
    /// cannot use them, however many instances the others have.
    pub parities_down: i32,
}

/// The status for what was observed.
pub fn compute(
    cis: &CodedInferenceService,
    observed: Observed,
    endpoint: String,
    now: Timestamp,
) -> CodedInferenceServiceStatus {
    let spec = &cis.spec;
    let (k, r) = (spec.coding.k, spec.coding.r);
    let Observed {
        model_ready: m,
        parity_ready: p,
        frontend_ready: f,
        parities_down,
    } = observed;
    let counts = format!(
        "{m}/{} model, {p}/{} parity and {f}/{} frontend instances ready",
        spec.model_replicas(),
        spec.parity_replicas(),
        spec.frontend.replicas
    );
    let serving = f >= 1 && m >= 1 && m + p >= k;
    let complete =
        m >= spec.model_replicas() && p >= spec.parity_replicas() && f >= spec.frontend.replicas;
    let (ready, ready_reason) = match (serving, complete) {
        (true, true) => (true, "AllInstancesReady"),
        (true, false) => (true, "Serving"),
        _ if f < 1 => (false, "FrontendUnavailable"),
        _ => (false, "TooFewInstances"),
    };
    let degraded = serving && (m < k || p < r || parities_down > 0);
    let (degraded_reason, degraded_message) = if degraded && parities_down > 0 && p >= r {
        (
            "ReducedRedundancy",
            format!(
                "{parities_down} of {r} parities have no ready instance: some lost predictions cannot be rebuilt"
            ),
        )
    } else if degraded {
        (
            "ReducedRedundancy",
            format!(
                "{m} of {k} model and {p} of {r} parity instances of a coding group are ready: some lost predictions cannot be rebuilt"
            ),
        )
    } else if serving {
        (
            "FullRedundancy",
            format!("any {r} losses in a coding group of {k} can be rebuilt"),
        )
    } else {
        ("NotServing", "the service is not serving".to_string())
    };

    let previous = cis
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = cis.metadata.generation;
    let conditions = vec![
        condition(
            previous,
            READY,
            Some(ready),
            ready_reason,
            counts,
            generation,
            now,
        ),
        condition(
            previous,
            DEGRADED,
            Some(degraded),
            degraded_reason,
            degraded_message,
            generation,
            now,
        ),
        slo_condition(cis, previous, now),
    ];
    CodedInferenceServiceStatus {
        observed_generation: generation,
        model_ready: m,
        parity_ready: p,
        frontend_ready: f,
        endpoint: Some(endpoint),
        // Measured from Prometheus once the tail-latency watcher reports it.
        observed_latency: None,
        conditions,
    }
}

/// The status of a resource whose spec the reconciler refused.
pub fn invalid(
    cis: &CodedInferenceService,
    message: &str,
    now: Timestamp,
) -> CodedInferenceServiceStatus {
    let previous = cis
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = cis.metadata.generation;
    let old = cis.status.clone().unwrap_or_default();
    CodedInferenceServiceStatus {
        observed_generation: generation,
        conditions: vec![
            condition(
                previous,
                READY,
                Some(false),
                INVALID_SPEC,
                message.to_string(),
                generation,
                now,
            ),
            condition(
                previous,
                DEGRADED,
                Some(false),
                INVALID_SPEC,
                message.to_string(),
                generation,
                now,
            ),
            slo_condition(cis, previous, now),
        ],
        ..old
    }
}

fn slo_condition(cis: &CodedInferenceService, previous: &[Condition], now: Timestamp) -> Condition {
    let (reason, message) = match (&cis.spec.slo, &cis.spec.prometheus) {
        (None, _) => ("NoObjective", "spec.slo is not set".to_string()),
        (Some(_), None) => (
            "NoPrometheus",
            "spec.prometheus is not set: tail latency is not measured across instances".to_string(),
        ),
        (Some(slo), Some(_)) => (
            "NotMeasuredYet",
            format!(
                "p{} latency not measured yet (target {})",
                slo.quantile * 100.0,
                slo.latency_target
            ),
        ),
    };
    condition(
        previous,
        SLO_MET,
        None,
        reason,
        message,
        cis.metadata.generation,
        now,
    )
}

/// Sets `SLOMet` and `observedLatency` from what Prometheus (at `url`, the
/// resource's or the operator's) said of the resource's latency.
pub fn set_slo(
    status: &mut CodedInferenceServiceStatus,
    cis: &CodedInferenceService,
    url: Option<&str>,
    reading: Option<&SloReading>,
    window: &str,
    now: Timestamp,
) {
    let previous = cis
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let Some(slo) = &cis.spec.slo else { return };
    let q = format!("p{}", slo.quantile * 100.0);
    let target = &slo.latency_target;
    let (met, reason, message) = match (url, reading) {
        (None, _) => (
            None,
            "NoPrometheus",
            "neither spec.prometheus.url nor the operator's --prometheus-url is set: tail latency is not measured".to_string(),
        ),
        (Some(_), None) => (
            None,
            "NotMeasuredYet",
            format!("{q} latency not measured yet (target {target})"),
        ),
        (Some(_), Some(SloReading::Observed(seconds))) => {
            let observed = format_latency(*seconds);
            match parse_latency(target) {
                Some(limit) if *seconds <= limit => (
                    Some(true),
                    "TargetMet",
                    format!("{q} latency {observed} over the last {window} meets the {target} target"),
                ),
                Some(_) => (
                    Some(false),
                    "TargetMissed",
                    format!(
                        "{q} latency {observed} over the last {window} is above the {target} target: see which instances straggle and each worker's latency on the coded-serving dashboard, or add model replicas"
                    ),
                ),
                None => (
                    None,
                    "InvalidTarget",
                    format!("slo.latencyTarget {target:?} is not a latency such as 50ms"),
                ),
            }
        }
        (Some(url), Some(SloReading::NoTraffic)) => (
            None,
            "NoTraffic",
            format!(
                "no answered requests in the last {window}: Prometheus at {url} has no coded_frontend_request_duration_seconds with namespace and coded_dev_service labels of this resource (are its frontends scraped? the ServiceMonitor needs the Prometheus operator)"
            ),
        ),
        (Some(_), Some(SloReading::Unreachable(error))) => (
            None,
            "PrometheusUnreachable",
            format!("cannot read the {q} latency: {error}"),
        ),
    };
    status.observed_latency = match reading {
        Some(SloReading::Observed(seconds)) => Some(format_latency(*seconds)),
        _ => None,
    };
    let slo_met = condition(
        previous,
        SLO_MET,
        met,
        reason,
        message,
        cis.metadata.generation,
        now,
    );
    match status.conditions.iter_mut().find(|c| c.type_ == SLO_MET) {
        Some(c) => *c = slo_met,
        None => status.conditions.push(slo_met),
    }
}

/// A condition that keeps its previous transition time while its status holds.
fn condition(
    previous: &[Condition],
    type_: &str,
    status: Option<bool>,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = match status {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// The condition of a type, if present.
pub fn find<'a>(
    status: Option<&'a CodedInferenceServiceStatus>,
    type_: &str,
) -> Option<&'a Condition> {
    status?.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PrometheusSpec, SloSpec};
    use crate::fixtures::cis;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).expect("timestamp")
    }

    fn observed(m: i32, p: i32, f: i32) -> Observed {
        Observed {
            model_ready: m,
            parity_ready: p,
            frontend_ready: f,
            parities_down: 0,
        }
    }

    fn cond<'a>(s: &'a CodedInferenceServiceStatus, t: &str) -> &'a Condition {
        find(Some(s), t).expect("condition present")
    }

    #[test]
    fn all_instances_ready_is_ready_and_not_degraded() {
        let cis = cis("demo"); // k=2, r=1
        let s = compute(&cis, observed(2, 1, 1), "http://e".into(), at(0));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, READY).reason, "AllInstancesReady");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!((s.model_ready, s.parity_ready, s.frontend_ready), (2, 1, 1));
        assert_eq!(s.endpoint.as_deref(), Some("http://e"));
        assert_eq!(s.observed_generation, Some(1));
    }

    #[test]
    fn a_lost_model_instance_degrades_but_still_serves() {
        let cis = cis("demo");
        let s = compute(&cis, observed(1, 1, 1), "e".into(), at(0));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, READY).reason, "Serving");
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert!(cond(&s, DEGRADED).message.contains("1 of 2 model"));
        // A lost parity instance too.
        let s = compute(&cis, observed(2, 0, 1), "e".into(), at(0));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, DEGRADED).status, "True");
    }

    #[test]
    fn with_r_two_a_parity_without_ready_instances_degrades() {
        let mut cis = cis("demo");
        cis.spec.coding.k = 4;
        cis.spec.coding.r = 2;
        cis.spec.parity_model.replicas = Some(4);
        let s = compute(&cis, observed(4, 4, 1), "e".into(), at(0));
        assert_eq!(cond(&s, READY).reason, "AllInstancesReady");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert!(cond(&s, DEGRADED).message.contains("any 2 losses"));
        // Parity 1's two instances lost: 2 ready parity instances = r, yet
        // only parity 0 can be used.
        let down = Observed {
            parities_down: 1,
            ..observed(4, 2, 1)
        };
        let s = compute(&cis, down, "e".into(), at(0));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, DEGRADED).status, "True");
        assert!(
            cond(&s, DEGRADED)
                .message
                .starts_with("1 of 2 parities have no ready instance"),
            "{}",
            cond(&s, DEGRADED).message
        );
        assert!(cond(&s, READY).message.contains("2/4 parity"));
    }

    #[test]
    fn spare_model_instances_keep_full_redundancy() {
        let mut cis = cis("demo");
        cis.spec.model.replicas = Some(4);
        let s = compute(&cis, observed(3, 1, 1), "e".into(), at(0));
        assert_eq!(cond(&s, READY).reason, "Serving", "not all 4 are ready");
        assert_eq!(cond(&s, DEGRADED).status, "False", "3 >= k model instances");
    }

    #[test]
    fn not_serving_without_frontend_or_enough_instances() {
        let cis = cis("demo");
        let s = compute(&cis, observed(2, 1, 0), "e".into(), at(0));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, "FrontendUnavailable");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        let s = compute(&cis, observed(1, 0, 1), "e".into(), at(0));
        assert_eq!(
            cond(&s, READY).reason,
            "TooFewInstances",
            "1 < k outputs per group"
        );
        // Parity alone cannot answer anything.
        let s = compute(&cis, observed(0, 1, 1), "e".into(), at(0));
        assert_eq!(cond(&s, READY).status, "False");
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut cis = cis("demo");
        let first = compute(&cis, observed(0, 0, 0), "e".into(), at(100));
        cis.status = Some(first.clone());
        let same = compute(&cis, observed(1, 0, 0), "e".into(), at(200));
        assert_eq!(cond(&same, READY).last_transition_time, Time(at(100)));
        let changed = compute(&cis, observed(2, 1, 1), "e".into(), at(300));
        assert_eq!(cond(&changed, READY).last_transition_time, Time(at(300)));
        assert_eq!(cond(&changed, DEGRADED).last_transition_time, Time(at(100)));
    }

    #[test]
    fn slo_is_unknown_with_a_reason() {
        let mut cis = cis("demo");
        let s = compute(&cis, observed(2, 1, 1), "e".into(), at(0));
        assert_eq!(cond(&s, SLO_MET).status, "Unknown");
        assert_eq!(cond(&s, SLO_MET).reason, "NoObjective");
        cis.spec.slo = Some(SloSpec {
            latency_target: "50ms".into(),
            quantile: 0.99,
        });
        let s = compute(&cis, observed(2, 1, 1), "e".into(), at(0));
        assert_eq!(cond(&s, SLO_MET).reason, "NoPrometheus");
        cis.spec.prometheus = Some(PrometheusSpec {
            url: "http://prom:9090".into(),
        });
        let s = compute(&cis, observed(2, 1, 1), "e".into(), at(0));
        assert_eq!(cond(&s, SLO_MET).reason, "NotMeasuredYet");
        assert!(
            cond(&s, SLO_MET).message.contains("p99 "),
            "{}",
            cond(&s, SLO_MET).message
        );
        assert_eq!(s.observed_latency, None);
    }

    #[test]
    fn slo_follows_the_reading() {
        let mut cis = cis("demo");
        cis.spec.slo = Some(SloSpec {
            latency_target: "50ms".into(),
            quantile: 0.99,
        });
        let base = compute(&cis, observed(2, 1, 1), "e".into(), at(0));
        let with = |url: Option<&str>, reading: Option<SloReading>| {
            let mut s = base.clone();
            set_slo(&mut s, &cis, url, reading.as_ref(), "5m", at(10));
            s
        };
        let url = Some("http://prom:9090");
        let met = with(url, Some(SloReading::Observed(0.042)));
        assert_eq!(cond(&met, SLO_MET).status, "True");
        assert_eq!(cond(&met, SLO_MET).reason, "TargetMet");
        assert_eq!(met.observed_latency.as_deref(), Some("42ms"));
        assert_eq!(met.conditions.len(), 3, "replaced, not added");
        let missed = with(url, Some(SloReading::Observed(0.25)));
        assert_eq!(cond(&missed, SLO_MET).status, "False");
        assert_eq!(cond(&missed, SLO_MET).reason, "TargetMissed");
        assert!(cond(&missed, SLO_MET).message.contains("p99 latency 250ms"));
        let quiet = with(url, Some(SloReading::NoTraffic));
        assert_eq!(cond(&quiet, SLO_MET).status, "Unknown");
        assert_eq!(cond(&quiet, SLO_MET).reason, "NoTraffic");
        assert_eq!(quiet.observed_latency, None);
        let down = with(
            url,
            Some(SloReading::Unreachable("connection refused".into())),
        );
        assert_eq!(cond(&down, SLO_MET).reason, "PrometheusUnreachable");
        assert!(cond(&down, SLO_MET).message.contains("connection refused"));
        assert_eq!(cond(&with(None, None), SLO_MET).reason, "NoPrometheus");
    }

    #[test]
    fn invalid_spec_is_not_ready_and_keeps_counts() {
        let mut cis = cis("demo");
        cis.status = Some(compute(&cis, observed(2, 1, 1), "e".into(), at(0)));
        let s = invalid(&cis, "coding.r must be between 1 and coding.k", at(10));
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(cond(&s, READY).reason, INVALID_SPEC);
        assert!(cond(&s, READY).message.starts_with("coding.r"));
        assert_eq!(s.model_ready, 2, "last observation kept");
    }
}
