//! What a chaos run found: every query's outcome counted, the faults
//! injected, the frontend watched, and the invariants checked.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::DRAIN_WAIT;

/// How one query ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Outcome {
    /// The base model's output.
    Real,
    /// Marked rebuilt; whether its class agrees with the base model's.
    Rebuilt { agrees: bool },
    /// A 200 answer, not marked rebuilt, that is not the base model's
    /// output: an unmarked approximation, or worse.
    Wrong(String),
    /// An error status with a message, and whether it came before the
    /// deadline (504 only; a 503 "overloaded" sheds load at once).
    Error { kind: String, early: bool },
    /// No answer, an answer without a message, or none by deadline + slack.
    Lost(String),
}

/// What the run found; `violations` empty means every invariant held.
#[derive(Debug, Default, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub seconds: f64,
    pub rate: f64,
    pub deadline_ms: u64,
    pub models: usize,
    pub parities: usize,
    pub queries: QueryCounts,
    /// Latency of the answered queries (real, rebuilt or error), from send
    /// to answer.
    pub latency_ms: Latencies,
    pub faults: FaultCounts,
    pub frontend: FrontendWatch,
    pub wall_seconds: f64,
    pub violations: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct QueryCounts {
    pub sent: u64,
    pub real: u64,
    pub rebuilt: u64,
    /// Rebuilt answers whose class agrees with the base model's
    /// (approximate answers: reported, not required).
    pub rebuilt_agree: u64,
    /// Error answers by kind: `deadline` (504), `overloaded` (503), or the
    /// status code.
    pub errors: BTreeMap<String, u64>,
    /// Errors answered before the deadline (504s only).
    pub early_errors: u64,
    /// Queries with no proper answer: connection dropped, no error
    /// message, or none by the deadline plus slack.
    pub lost: u64,
    /// 200 answers not marked rebuilt that are not the base model's output.
    pub unmarked_wrong: u64,
    /// Up to 5 examples of each violation, for the log.
    pub examples: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct Latencies {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

pub(super) fn latencies(outcomes: &[(Outcome, Duration)]) -> Latencies {
    let mut ms: Vec<f32> = outcomes
        .iter()
        .filter(|(o, _)| !matches!(o, Outcome::Lost(_)))
        .map(|(_, d)| d.as_secs_f32() * 1e3)
        .collect();
    let mut at = |q| f64::from(crate::frontend::instance::quantile(&mut ms, q).unwrap_or(0.0));
    Latencies {
        p50: at(0.5),
        p99: at(0.99),
        p999: at(0.999),
        max: at(1.0),
    }
}

#[derive(Debug, Default, Serialize)]
pub struct FaultCounts {
    pub total: u64,
    pub kills: u64,
    pub pauses: u64,
    /// Faults that hit two workers at once.
    pub two_at_once: u64,
    /// Of those, both workers model workers (a group's two slots) or a
    /// model and the parity (a slot and its parity).
    pub two_models: u64,
    pub model_and_parity: u64,
    /// Restarts that failed (the worker stayed down).
    pub failed_restarts: u64,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct FrontendWatch {
    pub peak_batches_running: i64,
    /// After the load and the faults, once it drained (or the wait ended).
    pub batches_running_end: i64,
    pub rss_warm_kb: u64,
    pub rss_peak_kb: u64,
    pub rss_end_kb: u64,
    pub samples: u64,
}

/// RSS at the end may be at most this many times the warm RSS, plus
/// RSS_SLACK_KB: generous, only growth with the run (a leak per query or
/// per fault) fails it.
const RSS_FACTOR: u64 = 2;
const RSS_SLACK_KB: u64 = 64 * 1024;

pub(super) fn count(outcomes: &[Outcome]) -> QueryCounts {
    let mut c = QueryCounts {
        sent: outcomes.len() as u64,
        ..QueryCounts::default()
    };
    let mut examples: BTreeMap<&str, usize> = BTreeMap::new();
    let mut example = |c: &mut QueryCounts, what: &'static str, detail: &str| {
        let n = examples.entry(what).or_default();
        if *n < 5 {
            c.examples.push(format!("{what}: {detail}"));
        }
        *n += 1;
    };
    for o in outcomes {
        match o {
            Outcome::Real => c.real += 1,
            Outcome::Rebuilt { agrees } => {
                c.rebuilt += 1;
                c.rebuilt_agree += u64::from(*agrees);
            }
            Outcome::Wrong(why) => {
                c.unmarked_wrong += 1;
                example(&mut c, "unmarked wrong", why);
            }
            Outcome::Error { kind, early } => {
                *c.errors.entry(kind.clone()).or_default() += 1;
                if *early {
                    c.early_errors += 1;
                    example(&mut c, "early error", kind);
                }
            }
            Outcome::Lost(why) => {
                c.lost += 1;
                example(&mut c, "lost", why);
            }
        }
    }
    c
}

/// The invariants, each named when it fails.
pub(super) fn violations(r: &ChaosReport) -> Vec<String> {
    let q = &r.queries;
    let mut v = Vec::new();
    if q.lost > 0 {
        v.push(format!("{} queries lost (no proper answer)", q.lost));
    }
    if q.unmarked_wrong > 0 {
        v.push(format!(
            "{} answers not marked rebuilt differ from the base model's",
            q.unmarked_wrong
        ));
    }
    if q.early_errors > 0 {
        v.push(format!(
            "{} errors before the {} ms deadline",
            q.early_errors, r.deadline_ms
        ));
    }
    let answered = q.real + q.rebuilt + q.errors.values().sum::<u64>() + q.lost + q.unmarked_wrong;
    if answered != q.sent {
        v.push(format!("{} queries sent, {answered} accounted for", q.sent));
    }
    if r.frontend.batches_running_end != 0 {
        v.push(format!(
            "{} batches still running {} s after the last fault",
            r.frontend.batches_running_end,
            DRAIN_WAIT.as_secs()
        ));
    }
    let f = &r.frontend;
    if f.rss_warm_kb > 0 && f.rss_end_kb > RSS_FACTOR * f.rss_warm_kb + RSS_SLACK_KB {
        v.push(format!(
            "the frontend's RSS grew from {} kB after the warm-up to {} kB",
            f.rss_warm_kb, f.rss_end_kb
        ));
    }
    if r.faults.failed_restarts > 0 {
        v.push(format!(
            "{} killed workers could not be restarted",
            r.faults.failed_restarts
        ));
    }
    v
}

/// The report as a table, for the terminal.
pub fn table(r: &ChaosReport) -> String {
    let q = &r.queries;
    let f = &r.faults;
    let w = &r.frontend;
    let errors: Vec<String> = q.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let mut out = format!(
        "chaos: seed {}, {:.0} s at {} queries/s, deadline {} ms, {} model + {} parity workers ({:.0} s wall)\n\
         | queries | real | rebuilt (class agrees) | errors | lost | unmarked wrong | early errors |\n\
         | --- | --- | --- | --- | --- | --- | --- |\n\
         | {} | {} | {} ({}) | {} | {} | {} | {} |\n\
         | faults | kills | pauses | two at once (2 models, model+parity) | failed restarts |\n\
         | --- | --- | --- | --- | --- |\n\
         | {} | {} | {} | {} ({}, {}) | {} |\n\
         latency: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms\n\
         frontend: peak batches running {}, at the end {}; RSS {} kB warm, {} kB peak, {} kB at the end\n",
        r.seed,
        r.seconds,
        r.rate,
        r.deadline_ms,
        r.models,
        r.parities,
        r.wall_seconds,
        q.sent,
        q.real,
        q.rebuilt,
        q.rebuilt_agree,
        if errors.is_empty() {
            "0".to_owned()
        } else {
            errors.join(", ")
        },
        q.lost,
        q.unmarked_wrong,
        q.early_errors,
        f.total,
        f.kills,
        f.pauses,
        f.two_at_once,
        f.two_models,
        f.model_and_parity,
        f.failed_restarts,
        r.latency_ms.p50,
        r.latency_ms.p99,
        r.latency_ms.p999,
        r.latency_ms.max,
        w.peak_batches_running,
        w.batches_running_end,
        w.rss_warm_kb,
        w.rss_peak_kb,
        w.rss_end_kb,
    );
    for e in &q.examples {
        out.push_str(&format!("  {e}\n"));
    }
    if r.violations.is_empty() {
        out.push_str("every invariant held\n");
    } else {
        for v in &r.violations {
            out.push_str(&format!("VIOLATED: {v}\n"));
        }
    }
    out
}
