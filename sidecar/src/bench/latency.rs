//! Latency histograms (HDR, microsecond resolution) and their summary.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

pub struct Recorder(Histogram<u64>);

/// Quantiles in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Quantiles of a tail plot, from the median to four nines.
pub const TAIL_QUANTILES: &[f64] = &[
    0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999,
];

impl Default for Recorder {
    fn default() -> Self {
        // 1 µs to 100 s at 3 significant digits; these bounds are valid.
        Recorder(
            Histogram::new_with_bounds(1, 100_000_000, 3)
                .unwrap_or_else(|_| Histogram::new(3).expect("histogram")),
        )
    }
}

impl Recorder {
    pub fn record(&mut self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, 100_000_000);
        let _ = self.0.record(us);
    }

    /// `(quantile, µs)` at each of [`TAIL_QUANTILES`] (those the sample
    /// count can resolve), then `(1, max)`.
    pub fn tail(&self) -> Vec<(f64, u64)> {
        let h = &self.0;
        let n = h.len() as f64;
        let mut out: Vec<(f64, u64)> = TAIL_QUANTILES
            .iter()
            .filter(|&&q| n * (1.0 - q) >= 1.0)
            .map(|&q| (q, h.value_at_quantile(q)))
            .collect();
        if n > 0.0 {
            out.push((1.0, h.max()));
        }
        out
    }

    pub fn summary(&self) -> Summary {
        let h = &self.0;
        Summary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}
