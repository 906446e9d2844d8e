//! Triton's statistics extension: per-model counts and cumulative
//! durations (`GET /v2/models[/{m}[/versions/{v}]]/stats`, gRPC
//! `ModelStatistics`), in Triton's shape so that `get_inference_statistics`
//! of tritonclient reads them unchanged.
//!
//! What is measured, over HTTP and gRPC together: `success` and `fail`
//! (requests answered or failed, from arrival to answer), `compute_infer`
//! (the engine's part of successful requests: the worker's batching queue
//! and model call, or the frontend's coding, dispatch and decoding),
//! `inference_count` (rows answered), `execution_count` (engine calls)
//! and `last_inference`. `queue`, `compute_input` and `compute_output` are
//! not measured apart from those and stay zero; requests refused by
//! admission are in none of them (`*_requests_refused_total` counts them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A count and its cumulative duration.
#[derive(Debug, Default)]
struct Counted {
    count: AtomicU64,
    ns: AtomicU64,
}

impl Counted {
    fn add(&self, took: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn get(&self) -> StatisticDuration {
        StatisticDuration {
            count: self.count.load(Ordering::Relaxed),
            ns: self.ns.load(Ordering::Relaxed),
        }
    }
}

/// One server's statistics for its model.
#[derive(Debug, Default)]
pub struct Stats {
    success: Counted,
    fail: Counted,
    compute_infer: Counted,
    inference_count: AtomicU64,
    execution_count: AtomicU64,
    last_inference_ms: AtomicU64,
}

impl Stats {
    /// A request arrived (for `last_inference`).
    pub fn arrived(&self) {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.last_inference_ms.store(ms, Ordering::Relaxed);
    }

    /// A request was answered (`took`: arrival to answer) or failed.
    pub fn finished(&self, ok: bool, took: Duration) {
        if ok {
            self.success.add(took)
        } else {
            self.fail.add(took)
        }
    }

    /// The engine answered `rows` rows in `took`.
    pub fn executed(&self, rows: usize, took: Duration) {
        self.compute_infer.add(took);
        self.execution_count.fetch_add(1, Ordering::Relaxed);
        self.inference_count
            .fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// The statistics of `name` version `version`, Triton's shape.
    pub fn model(&self, name: &str, version: &str) -> ModelStatistics {
        ModelStatistics {
            name: name.to_owned(),
            version: version.to_owned(),
            last_inference: self.last_inference_ms.load(Ordering::Relaxed),
            inference_count: self.inference_count.load(Ordering::Relaxed),
            execution_count: self.execution_count.load(Ordering::Relaxed),
            inference_stats: InferStatistics {
                success: self.success.get(),
                fail: self.fail.get(),
                compute_infer: self.compute_infer.get(),
                ..InferStatistics::default()
            },
            batch_stats: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatisticDuration {
    pub count: u64,
    pub ns: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InferStatistics {
    pub success: StatisticDuration,
    pub fail: StatisticDuration,
    pub queue: StatisticDuration,
    pub compute_input: StatisticDuration,
    pub compute_infer: StatisticDuration,
    pub compute_output: StatisticDuration,
    pub cache_hit: StatisticDuration,
    pub cache_miss: StatisticDuration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStatistics {
    pub name: String,
    pub version: String,
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub inference_stats: InferStatistics,
    /// Per batch size; not kept (an empty list, as Triton's for a model
    /// that has not run).
    pub batch_stats: Vec<serde_json::Value>,
}

/// `GET .../stats`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatisticsResponse {
    pub model_stats: Vec<ModelStatistics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_durations_add_up_in_tritons_shape() {
        let s = Stats::default();
        s.arrived();
        s.executed(3, Duration::from_nanos(500));
        s.finished(true, Duration::from_nanos(700));
        s.finished(false, Duration::from_nanos(40));
        s.executed(2, Duration::from_nanos(100));
        s.finished(true, Duration::from_nanos(300));
        let m = s.model("m", "1");
        assert_eq!((m.inference_count, m.execution_count), (5, 2));
        let i = &m.inference_stats;
        assert_eq!(i.success, StatisticDuration { count: 2, ns: 1000 });
        assert_eq!(i.fail, StatisticDuration { count: 1, ns: 40 });
        assert_eq!(i.compute_infer, StatisticDuration { count: 2, ns: 600 });
        assert!(m.last_inference > 1_600_000_000_000, "ms since the epoch");
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(
            json["inference_stats"]["queue"],
            serde_json::json!({"count": 0, "ns": 0})
        );
        assert_eq!(json["batch_stats"], serde_json::json!([]));
    }
}
