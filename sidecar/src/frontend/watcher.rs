//! The tail-latency watcher: every tick it turns what the calls showed into
//! decisions (which instances are stragglers, how long the `deadline`
//! policy waits, when an undecodable slot is retried), and every probe
//! interval it asks each instance whether it is ready. For now it reads the
//! frontend's own latency windows; Prometheus comes with the watcher issue.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dispatch::{Pool, Snapshot, Standing};
use super::instance::{Instance, quantile};
use super::metrics::Metrics;

#[derive(Debug, Clone, Copy)]
pub struct WatchConfig {
    /// Quantile of model-call latency the `deadline` policy waits for.
    pub quantile: f64,
    /// An instance whose median latency exceeds this many times the pool's
    /// median is a straggler.
    pub slow_factor: f64,
    pub tick: Duration,
    pub probe_every: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            quantile: 0.99,
            slow_factor: 3.0,
            tick: Duration::from_millis(100),
            probe_every: Duration::from_secs(1),
        }
    }
}

/// Lower bounds, so that sub-millisecond loopback latencies do not turn
/// ordinary jitter into retries and stragglers.
const MIN_EAGER_AFTER: Duration = Duration::from_micros(200);
const MIN_RECONSTRUCT_AFTER: Duration = Duration::from_micros(500);
const MIN_RETRY_AFTER: Duration = Duration::from_millis(20);
const MIN_STALL_AFTER: Duration = Duration::from_millis(20);
/// Samples an instance needs before its median is trusted, and the pool
/// before its quantiles are.
const MIN_SAMPLES: usize = 8;
const MIN_POOLED: usize = 20;

/// Computes a snapshot from the pool's instances as they are at `now`.
///
/// Stragglers are the instances whose median is `slow_factor` times the
/// typical (median) instance's. The eager floor is that typical median
/// (robust to slow calls of an instance not yet marked); the retry delay and
/// the stall limit come from the p99 of the other instances, so that a
/// straggler's own latency never makes it look normal; the `deadline` wait is the configured
/// quantile over every model call.
pub fn assess(pool: &Pool, config: &WatchConfig, now: Instant) -> Snapshot {
    let recent: Vec<Vec<f32>> = pool
        .models
        .iter()
        .map(|m| m.recent_latencies(now))
        .collect();
    let median = |mut r: Vec<f32>| {
        if r.len() >= MIN_SAMPLES {
            quantile(&mut r, 0.5)
        } else {
            None
        }
    };
    let medians: Vec<Option<f32>> = recent.iter().cloned().map(median).collect();
    let mut known: Vec<f32> = medians.iter().flatten().copied().collect();
    let typical = quantile(&mut known, 0.5);
    let slow = |median: Option<f32>| match (median, typical) {
        (Some(m), Some(t)) => f64::from(m) > config.slow_factor * f64::from(t),
        _ => false,
    };
    let slow_models: Vec<bool> = medians.iter().map(|&m| slow(m)).collect();
    let slow_parities = pool
        .parities
        .iter()
        .map(|p| slow(median(p.recent_latencies(now))))
        .collect();

    let mut all: Vec<f32> = recent.concat();
    let mut healthy: Vec<f32> = recent
        .iter()
        .zip(&slow_models)
        .filter(|(_, slow)| !**slow)
        .flat_map(|(r, _)| r.iter().copied())
        .collect();
    let p95_all = quantile(&mut all, 0.95)
        .filter(|_| all.len() >= MIN_POOLED)
        .map(Duration::from_secs_f32);
    let tail = quantile(&mut all, config.quantile)
        .filter(|_| all.len() >= MIN_POOLED)
        .map(Duration::from_secs_f32);
    let p99 = quantile(&mut healthy, 0.99)
        .filter(|_| healthy.len() >= MIN_POOLED)
        .map(Duration::from_secs_f32);
    let initial = Snapshot::initial(0, 0);
    Snapshot {
        eager_after: typical
            .map(|t| Duration::from_secs_f32(t).max(MIN_EAGER_AFTER))
            .unwrap_or(initial.eager_after),
        reconstruct_after: tail
            .map(|t| t.max(MIN_RECONSTRUCT_AFTER))
            .unwrap_or(initial.reconstruct_after),
        hedge_after: p95_all
            .map(|t| t.max(MIN_EAGER_AFTER))
            .unwrap_or(initial.hedge_after),
        retry_after: p99
            .map(|t| (t * 4).max(MIN_RETRY_AFTER))
            .unwrap_or(initial.retry_after),
        stall_after: p99
            .map(|t| (t * 4).max(MIN_STALL_AFTER))
            .unwrap_or(initial.stall_after),
        slow_models,
        slow_parities,
    }
}

/// Runs until the pool is dropped by everyone else. Probes run in their
/// own task so that a paused instance cannot hold up the snapshots.
pub async fn run(pool: std::sync::Weak<Pool>, metrics: Arc<Metrics>, config: WatchConfig) {
    tokio::spawn(probe_loop(pool.clone(), config.probe_every));
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let snapshot = assess(&pool, &config, now);
        metrics
            .reconstruct_after_us
            .set(snapshot.reconstruct_after.as_micros() as i64);
        for inst in pool.models.iter().chain(&pool.parities) {
            let standing = pool.standing(inst, &snapshot, now);
            metrics
                .instance_straggler
                .with_label_values(&[inst.role.as_str(), &inst.url])
                .set(i64::from(standing != Standing::Usable));
        }
        pool.set_snapshot(snapshot);
    }
}

async fn probe_loop(pool: std::sync::Weak<Pool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let instances: Vec<Arc<Instance>> =
            pool.models.iter().chain(&pool.parities).cloned().collect();
        drop(pool);
        // All at once, each bounded by the probe interval.
        let probes = instances.into_iter().map(|inst| {
            tokio::spawn(async move {
                let ok = tokio::time::timeout(every, inst.probe())
                    .await
                    .unwrap_or_else(|_| {
                        inst.probe_timed_out();
                        false
                    });
                if !ok {
                    tracing::debug!(instance = %inst.url, role = inst.role.as_str(), "not ready");
                }
            })
        });
        for p in probes.collect::<Vec<_>>() {
            let _ = p.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::instance::{Role, test_instance};

    fn pool(models: usize) -> Pool {
        Pool::new(
            (0..models).map(|i| test_instance(i, Role::Model)).collect(),
            vec![test_instance(0, Role::Parity)],
        )
    }

    #[test]
    fn without_samples_the_initial_snapshot_holds() {
        let p = pool(2);
        let s = assess(&p, &WatchConfig::default(), Instant::now());
        let initial = Snapshot::initial(2, 1);
        assert_eq!(s.eager_after, initial.eager_after);
        assert_eq!(s.reconstruct_after, initial.reconstruct_after);
        assert_eq!(s.slow_models, vec![false, false]);
    }

    #[test]
    fn a_slow_instance_is_a_straggler_and_does_not_set_the_eager_wait() {
        let p = pool(3);
        let now = Instant::now();
        for i in 0..30 {
            let jitter = Duration::from_micros(10 * (i % 5));
            p.models[0].record_success(now, Duration::from_micros(300) + jitter);
            p.models[1].record_success(now, Duration::from_micros(320) + jitter);
            p.models[2].record_success(now, Duration::from_millis(50) + jitter);
        }
        let config = WatchConfig::default();
        let s = assess(&p, &config, now);
        assert_eq!(s.slow_models, vec![false, false, true]);
        // Eager's floor is the typical median (~320 µs), not the straggler's 50 ms.
        assert!(
            s.eager_after < Duration::from_millis(1),
            "{:?}",
            s.eager_after
        );
        assert!(s.eager_after >= Duration::from_micros(300));
        // The deadline policy's quantile covers every call, the slow ones too.
        assert!(
            s.reconstruct_after >= Duration::from_millis(50),
            "{:?}",
            s.reconstruct_after
        );
        assert!(s.stall_after >= MIN_STALL_AFTER && s.retry_after >= MIN_RETRY_AFTER);
    }

    #[test]
    fn old_samples_age_out() {
        let p = pool(2);
        let then = Instant::now();
        for _ in 0..30 {
            p.models[0].record_success(then, Duration::from_micros(300));
            p.models[1].record_success(then, Duration::from_millis(50));
        }
        let later = then + Duration::from_secs(10);
        let s = assess(&p, &WatchConfig::default(), later);
        assert_eq!(
            s.slow_models,
            vec![false, false],
            "a slow spell does not ban forever"
        );
    }
}
