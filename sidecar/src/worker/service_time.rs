//! An emulated accelerator: every batch occupies the worker for a service
//! time drawn from a seeded distribution, whatever the model's own compute
//! took, so that a 2-core machine can run a cluster of "GPU" workers at a
//! real utilisation. The model still computes every answer (they are
//! real and decodable); the worker then waits, without burning CPU, until
//! the drawn time has passed since the batch started. With the default one
//! batch at a time, a worker serves at most one batch per service time, as
//! an accelerator does.

use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};

/// Flags of the service-time model (`worker`, `local` and `bench`).
#[derive(Debug, Clone, Copy, PartialEq, Default, clap::Args, serde::Serialize)]
pub struct ServiceTimeArgs {
    /// Emulate an accelerator: each batch takes this long (ms, the median),
    /// plus `--service-time-per-row-ms` per row; the model's answers are
    /// delivered at its end. 0: off (batches take what the model takes).
    #[arg(long, env = "CODED_SERVICE_TIME_MS", default_value_t = 0.0)]
    pub service_time_ms: f64,
    /// Added to the service time per row of the batch, in ms.
    #[arg(long, default_value_t = 0.0)]
    pub service_time_per_row_ms: f64,
    /// Spread of the service time: lognormal with this σ around the median
    /// (0: every batch of a size takes the same).
    #[arg(long, default_value_t = 0.0)]
    pub service_time_sigma: f64,
    /// Seed of the draws (a worker draws the same sequence each run).
    #[arg(long, default_value_t = 0)]
    pub service_time_seed: u64,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ServiceTimeError {
    #[error("--{flag} must be a finite number ≥ 0, not {value}")]
    Negative { flag: &'static str, value: f64 },
    #[error("--service-time-per-row-ms and --service-time-sigma need --service-time-ms > 0")]
    WithoutBase,
}

impl ServiceTimeArgs {
    /// The model these flags describe; `None` when emulation is off.
    pub fn model(&self) -> Result<Option<ServiceTime>, ServiceTimeError> {
        for (flag, value) in [
            ("service-time-ms", self.service_time_ms),
            ("service-time-per-row-ms", self.service_time_per_row_ms),
            ("service-time-sigma", self.service_time_sigma),
        ] {
            if !(value.is_finite() && value >= 0.0) {
                return Err(ServiceTimeError::Negative { flag, value });
            }
        }
        if self.service_time_ms == 0.0 {
            if self.service_time_per_row_ms > 0.0 || self.service_time_sigma > 0.0 {
                return Err(ServiceTimeError::WithoutBase);
            }
            return Ok(None);
        }
        Ok(Some(ServiceTime::new(*self)))
    }

    /// The flags as `coded-sidecar worker` takes them, for processes started
    /// by `local` and the bench; empty when emulation is off.
    pub fn to_args(&self) -> Vec<String> {
        if self.service_time_ms == 0.0 {
            return Vec::new();
        }
        [
            ("--service-time-ms", self.service_time_ms.to_string()),
            (
                "--service-time-per-row-ms",
                self.service_time_per_row_ms.to_string(),
            ),
            ("--service-time-sigma", self.service_time_sigma.to_string()),
            ("--service-time-seed", self.service_time_seed.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect()
    }

    /// One line for reports and logs, e.g. `4 ms + 0.1 ms/row, σ 0.1`.
    pub fn describe(&self) -> String {
        if self.service_time_ms == 0.0 {
            return "the model's own compute".into();
        }
        let mut s = format!("{} ms", self.service_time_ms);
        if self.service_time_per_row_ms > 0.0 {
            s += &format!(" + {} ms/row", self.service_time_per_row_ms);
        }
        if self.service_time_sigma > 0.0 {
            s += &format!(", lognormal σ {}", self.service_time_sigma);
        }
        s
    }
}

/// Draws service times; one per worker, used by its batcher alone.
#[derive(Debug, Clone)]
pub struct ServiceTime {
    args: ServiceTimeArgs,
    rng: ChaCha8Rng,
}

impl ServiceTime {
    fn new(args: ServiceTimeArgs) -> Self {
        Self {
            args,
            rng: ChaCha8Rng::seed_from_u64(args.service_time_seed),
        }
    }

    /// The time a batch of `rows` occupies the worker.
    pub fn sample(&mut self, rows: usize) -> Duration {
        let median_ms = self.args.service_time_ms + self.args.service_time_per_row_ms * rows as f64;
        let factor = match LogNormal::new(0.0, self.args.service_time_sigma) {
            Ok(d) if self.args.service_time_sigma > 0.0 => d.sample(&mut self.rng),
            _ => 1.0,
        };
        Duration::from_secs_f64(median_ms * factor / 1e3)
    }

    /// Mean time of a batch of `rows` (the lognormal's mean is
    /// median · e^(σ²/2)): a worker's capacity is one batch per mean.
    pub fn mean(&self, rows: usize) -> Duration {
        let median_ms = self.args.service_time_ms + self.args.service_time_per_row_ms * rows as f64;
        let sigma = self.args.service_time_sigma;
        Duration::from_secs_f64(median_ms * (sigma * sigma / 2.0).exp() / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ms: f64, per_row: f64, sigma: f64, seed: u64) -> ServiceTimeArgs {
        ServiceTimeArgs {
            service_time_ms: ms,
            service_time_per_row_ms: per_row,
            service_time_sigma: sigma,
            service_time_seed: seed,
        }
    }

    #[test]
    fn off_by_default_and_bad_flags_are_named() {
        assert!(ServiceTimeArgs::default().model().unwrap().is_none());
        assert!(ServiceTimeArgs::default().to_args().is_empty());
        assert_eq!(
            args(-1.0, 0.0, 0.0, 0).model().unwrap_err(),
            ServiceTimeError::Negative {
                flag: "service-time-ms",
                value: -1.0
            }
        );
        assert!(matches!(
            args(1.0, f64::NAN, 0.0, 0).model(),
            Err(ServiceTimeError::Negative {
                flag: "service-time-per-row-ms",
                ..
            })
        ));
        assert_eq!(
            args(0.0, 0.5, 0.0, 0).model().unwrap_err(),
            ServiceTimeError::WithoutBase
        );
    }

    #[test]
    fn fixed_times_grow_with_rows() {
        let mut st = args(4.0, 0.5, 0.0, 0).model().unwrap().unwrap();
        assert_eq!(st.sample(1), Duration::from_micros(4_500));
        assert_eq!(st.sample(8), Duration::from_micros(8_000));
        assert_eq!(st.mean(8), Duration::from_micros(8_000));
    }

    #[test]
    fn draws_are_seeded_and_spread_around_the_median() {
        let draw = |seed| {
            let mut st = args(4.0, 0.0, 0.3, seed).model().unwrap().unwrap();
            (0..2001).map(|_| st.sample(1)).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7), "the same seed draws the same times");
        assert_ne!(a, draw(8));
        let mut sorted = a.clone();
        sorted.sort();
        let median = sorted[1000].as_secs_f64() * 1e3;
        assert!((3.7..4.3).contains(&median), "median {median} ms");
        let (lo, hi) = (sorted[0], sorted[2000]);
        assert!(lo < Duration::from_millis(3) && hi > Duration::from_millis(6));
        let mean = a.iter().map(|d| d.as_secs_f64()).sum::<f64>() / a.len() as f64;
        let expected = args(4.0, 0.0, 0.3, 0)
            .model()
            .unwrap()
            .unwrap()
            .mean(1)
            .as_secs_f64();
        assert!((mean / expected - 1.0).abs() < 0.05, "{mean} vs {expected}");
    }

    #[test]
    fn flags_round_trip_through_the_worker_command_line() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            st: ServiceTimeArgs,
        }
        let a = args(2.5, 0.1, 0.2, 9);
        let cli = <Cli as clap::Parser>::try_parse_from(
            std::iter::once("worker".to_string()).chain(a.to_args()),
        )
        .unwrap();
        assert_eq!(cli.st, a);
        assert_eq!(a.describe(), "2.5 ms + 0.1 ms/row, lognormal σ 0.2");
    }
}
