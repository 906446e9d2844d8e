//! The tail-latency watcher: every tick it turns what calls showed into
//! decisions (which instances are stragglers, how long the `deadline`
//! policy waits, when an undecodable slot is retried), and every probe
//! interval it asks each instance whether it is ready.
//!
//! With `--prometheus-url` the straggler marks and the deadline come from
//! the workers' latency as Prometheus sees it across every frontend
//! ([`super::prometheus`]); the frontend's own windows fill in for an
//! instance Prometheus has no recent calls of, and for everything while
//! Prometheus is unset, unreachable or stale. Per-call timing (eager's
//! floor, retries, stalls) always uses the frontend's own windows: it needs
//! sub-millisecond freshness that a scrape interval cannot give.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::dispatch::{Pool, Snapshot, Standing};
use super::instance::{Instance, Role, quantile};
use super::metrics::Metrics;
use super::prometheus::{PromSource, PromView};

#[derive(Debug, Clone, Copy)]
pub struct WatchConfig {
    /// Quantile of model-call latency the `deadline` policy waits for.
    pub quantile: f64,
    /// An instance whose median latency exceeds this many times the pool's
    /// typical median becomes a straggler...
    pub slow_factor: f64,
    /// ...and, when Prometheus marked it, stays one until its median is
    /// back under this many times the typical median (hysteresis), or until
    /// nothing recent is known of it.
    pub recover_factor: f64,
    pub tick: Duration,
    pub probe_every: Duration,
    /// How often Prometheus is asked.
    pub prometheus_every: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            quantile: 0.99,
            slow_factor: 3.0,
            recover_factor: 1.5,
            tick: Duration::from_millis(100),
            probe_every: Duration::from_secs(1),
            prometheus_every: Duration::from_secs(2),
        }
    }
}

/// Where the straggler marks and the deadline came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LatencySource {
    #[default]
    Local,
    Prometheus,
}

impl LatencySource {
    pub fn as_str(self) -> &'static str {
        match self {
            LatencySource::Local => "local",
            LatencySource::Prometheus => "prometheus",
        }
    }
}

/// Lower bounds, so that sub-millisecond loopback latencies do not turn
/// ordinary jitter into retries and stragglers (retries after 5 ms stormed:
/// `bench stragglers --k 3`, p50 5 ms and 9.5% rebuilt, against 2.1 ms and
/// 2.0% with 20 ms).
const MIN_EAGER_AFTER: Duration = Duration::from_micros(200);
const MIN_RECONSTRUCT_AFTER: Duration = Duration::from_micros(500);
const MIN_RETRY_AFTER: Duration = Duration::from_millis(20);
const MIN_STALL_AFTER: Duration = Duration::from_millis(20);
const MIN_LAG_AFTER: Duration = Duration::from_millis(2);
/// A call out this many times the typical instance's median marks its
/// instance as lagging; an undecodable slot is sent again after this many
/// times that median.
const LAG_FACTOR: f64 = 4.0;
const RETRY_FACTOR: f64 = 8.0;
/// Samples an instance needs before its median is trusted, and the pool
/// before its quantiles are.
const MIN_SAMPLES: usize = 8;
const MIN_POOLED: usize = 20;

/// Whether an instance is a straggler now, given whether it was one.
fn straggling(was: bool, median: Option<f64>, typical: Option<f64>, config: &WatchConfig) -> bool {
    match (median, typical) {
        (Some(m), Some(t)) if was => m > config.recover_factor * t,
        (Some(m), Some(t)) => m > config.slow_factor * t,
        _ => false,
    }
}

/// Computes a snapshot from the pool's instances as they are at `now`,
/// what Prometheus last said (`prom`, when fresh) and the `previous`
/// snapshot (for hysteresis).
///
/// Stragglers are the instances whose median is `slow_factor` times the
/// typical (median) instance's. The eager floor is the typical median of
/// the frontend's own calls (robust to slow calls of an instance not yet
/// marked), and so is the lag limit (a few of those medians); the stall
/// limit comes from the p99 of the instances not marked, so that a
/// straggler's own latency never makes it look normal; the retry delay is
/// a few more typical medians; the `deadline` wait is the typical
/// instance's own configured quantile.
pub fn assess(
    pool: &Pool,
    config: &WatchConfig,
    now: Instant,
    previous: &Snapshot,
    prom: Option<&PromView>,
) -> Snapshot {
    let (models, parities) = (pool.models(), pool.parities());
    let recent: Vec<Vec<f32>> = models.iter().map(|m| m.recent_latencies(now)).collect();
    // An instance's latency at quantile q, once it has enough samples.
    let at = |mut r: Vec<f32>, q: f64| {
        if r.len() >= MIN_SAMPLES {
            quantile(&mut r, q).map(f64::from)
        } else {
            None
        }
    };
    let median = |r: Vec<f32>| at(r, 0.5);
    let local_models: Vec<Option<f64>> = recent.iter().cloned().map(median).collect();
    let local_parities: Vec<Option<f64>> = parities
        .iter()
        .map(|p| median(p.recent_latencies(now)))
        .collect();
    let typical_of = |medians: &[Option<f64>]| {
        let mut known: Vec<f32> = medians.iter().flatten().map(|&m| m as f32).collect();
        quantile(&mut known, 0.5).map(f64::from)
    };
    // The typical instance is one whose window tells its pace now: not
    // marked slow by its late answers, and with no call out far longer
    // than its own median explains. A marked instance gets only sampled
    // calls, and a paused one answers none, so either window still holds
    // the fast answers from before; those made the one instance taking all
    // the calls look 3× slower than "typical", marked it a straggler, and
    // dispatch sent calls and retries back to the slow or paused one
    // (faults.rs; under SIGSTOP with concurrent clients, until the paused
    // instance's probe failed).
    let behind = |inst: &Instance, own_median: Option<f64>| {
        own_median.is_some_and(|m| {
            let explained = Duration::from_secs_f64(m * RETRY_FACTOR).max(MIN_STALL_AFTER);
            inst.oldest_call_age(now) > explained
        })
    };
    // For model instances (their own medians are `local_models`).
    let current = |instances: &[Arc<Instance>], medians: &[Option<f64>]| -> Vec<Option<f64>> {
        let kept: Vec<Option<f64>> = instances
            .iter()
            .zip(medians)
            .zip(&local_models)
            .filter(|((i, _), own)| !i.marked_slow() && !behind(i, **own))
            .map(|((_, m), _)| *m)
            .collect();
        if kept.iter().any(Option::is_some) {
            kept
        } else {
            medians.to_vec()
        }
    };
    let local_typical = typical_of(&current(&models[..], &local_models));

    // Workers time their answers; the frontend times calls, which also pay
    // for HTTP and the network. Prometheus' view is moved to the call's
    // scale by that difference, so that a worker answering in 0.3 ms
    // instead of 0.1 ms is not a straggler when every call takes 1.5 ms.
    let offset = match (
        local_typical,
        prom.and_then(|p| {
            typical_of(
                &p.model_medians
                    .values()
                    .map(|&m| Some(m))
                    .collect::<Vec<_>>(),
            )
        }),
    ) {
        (Some(calls), Some(answers)) => (calls - answers).max(0.0),
        _ => 0.0,
    };
    // Prometheus' view where it knows an instance (`true`), the frontend's
    // own otherwise.
    let merge = |instances: &[Arc<Instance>],
                 local: &[Option<f64>],
                 seen: Option<&HashMap<String, f64>>| {
        instances
            .iter()
            .zip(local)
            .map(|(inst, l)| match seen.and_then(|s| s.get(&inst.url)) {
                Some(m) => (Some(m + offset), true),
                None => (*l, false),
            })
            .collect::<Vec<(Option<f64>, bool)>>()
    };
    let model_medians = merge(&models[..], &local_models, prom.map(|p| &p.model_medians));
    let parity_medians = merge(
        &parities[..],
        &local_parities,
        prom.map(|p| &p.parity_medians),
    );
    let typical = typical_of(&current(
        &models[..],
        &model_medians.iter().map(|m| m.0).collect::<Vec<_>>(),
    ));
    // Hysteresis only for Prometheus' marks: its view moves one poll at a
    // time over a long window, and would flap around the threshold. The
    // frontend's own windows mark stragglers afresh every tick: with m = k,
    // a sticky mark puts two slots of each group on one instance for
    // seconds, and a slow spell of that instance then costs two answers of
    // a group, which one parity cannot rebuild (`bench stragglers --only
    // eager`: p99.9 was 53-54 ms in 4 of 5 runs with sticky local marks,
    // 6-37 ms in 6 runs without).
    let decide = |instances: &[Arc<Instance>],
                  was: &BTreeSet<usize>,
                  medians: &[(Option<f64>, bool)]|
     -> Vec<bool> {
        instances
            .iter()
            .zip(medians)
            .map(|(inst, &(m, from_prom))| {
                let was = from_prom && was.contains(&inst.id);
                straggling(was, m, typical, config)
            })
            .collect()
    };
    let slow_models = decide(&models[..], &previous.slow_models, &model_medians[..]);
    let slow_parities = decide(&parities[..], &previous.slow_parities, &parity_medians[..]);
    let ids = |instances: &[Arc<Instance>], slow: &[bool]| -> BTreeSet<usize> {
        instances
            .iter()
            .zip(slow)
            .filter(|(_, s)| **s)
            .map(|(i, _)| i.id)
            .collect()
    };

    let mut all: Vec<f32> = recent.concat();
    let mut healthy: Vec<f32> = recent
        .iter()
        .zip(&slow_models)
        .zip(models.iter())
        .filter(|((_, slow), inst)| !**slow && !inst.marked_slow())
        .flat_map(|((r, _), _)| r.iter().copied())
        .collect();
    let pooled = |v: &mut Vec<f32>, q: f64| {
        quantile(v, q)
            .filter(|_| v.len() >= MIN_POOLED)
            .map(Duration::from_secs_f32)
    };
    let p95_all = pooled(&mut all, 0.95);
    // The deadline is how long the typical instance's calls take at the
    // quantile (each instance's own quantile, then their median). Pooled
    // over every call, or over instances not marked slow, a slow spell
    // too short to move a median to a mark still puts p99 at the
    // straggler's own latency, and the deadline policy then waits as long
    // as no coding at all would (`bench stragglers --mode delay`: coded
    // deadline p99 ~54 ms, as equal-resources; 4-7 ms now).
    let per_instance: Vec<Option<f64>> = recent
        .iter()
        .map(|r| at(r.clone(), config.quantile))
        .collect();
    let local_tail = typical_of(&current(&models[..], &per_instance))
        .and_then(|t| Duration::try_from_secs_f64(t).ok());
    let p99 = pooled(&mut healthy, 0.99);
    let prom_tail = prom
        .and_then(|p| p.tail)
        .and_then(|t| Duration::try_from_secs_f64(t + offset).ok());
    let (tail, source) = match (prom, prom_tail) {
        (Some(_), Some(t)) => (Some(t), LatencySource::Prometheus),
        (Some(_), None) => (local_tail, LatencySource::Prometheus),
        (None, _) => (local_tail, LatencySource::Local),
    };
    let initial = Snapshot::initial();
    let retry_after = local_typical
        .map(|t| Duration::from_secs_f64(t * RETRY_FACTOR).max(MIN_RETRY_AFTER))
        .unwrap_or(initial.retry_after);
    Snapshot {
        eager_after: local_typical
            .map(|t| Duration::from_secs_f64(t).max(MIN_EAGER_AFTER))
            .unwrap_or(initial.eager_after),
        reconstruct_after: tail
            .map(|t| t.max(MIN_RECONSTRUCT_AFTER))
            .unwrap_or(initial.reconstruct_after),
        hedge_after: p95_all
            .map(|t| t.max(MIN_EAGER_AFTER))
            .unwrap_or(initial.hedge_after),
        // From the typical median, not a tail: any p99 over the last 5 s,
        // pooled or per instance, sits at a straggler's latency for seconds
        // after a slow spell, and slots that no parity can rebuild (two
        // slow instances at once) then waited for the slow answers instead
        // of being sent elsewhere (`bench stragglers --k 3,4`: p99.9 ~53 ms
        // with 2× the typical instance's p99).
        retry_after,
        // As long as a retry waits: an answer that late is well past the
        // jitter of a few shared cores (4 medians is not: healthy
        // instances were marked under load), and a limit from the typical
        // median, not a tail, is not raised by the slow answers it judges.
        late_after: retry_after,
        stall_after: p99
            .map(|t| (t * 4).max(MIN_STALL_AFTER))
            .unwrap_or(initial.stall_after),
        lag_after: local_typical
            .map(|t| Duration::from_secs_f64(t * LAG_FACTOR).max(MIN_LAG_AFTER))
            .unwrap_or(initial.lag_after),
        slow_models: ids(&models[..], &slow_models[..]),
        slow_parities: ids(&parities[..], &slow_parities[..]),
        observed_tail: tail,
        source,
    }
}

/// Runs until the pool is dropped by everyone else. Probes and Prometheus
/// queries run in their own tasks so that a paused instance or a slow
/// Prometheus cannot hold up the snapshots.
pub async fn run(
    pool: std::sync::Weak<Pool>,
    metrics: Arc<Metrics>,
    config: WatchConfig,
    prometheus: Option<PromSource>,
) {
    tokio::spawn(probe_loop(pool.clone(), config.probe_every));
    let (tx, views) = watch::channel(None);
    let stale_after = config.prometheus_every * 3
        + prometheus
            .as_ref()
            .map(|p| p.config().timeout)
            .unwrap_or_default();
    if let Some(source) = prometheus {
        tokio::spawn(poll_prometheus(
            source,
            pool.clone(),
            tx,
            metrics.clone(),
            config.prometheus_every,
        ));
    }
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published = HashSet::new();
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = Instant::now();
        let view: Option<PromView> = views.borrow().clone();
        let fresh = view
            .as_ref()
            .filter(|v| now.saturating_duration_since(v.at) < stale_after);
        let previous = pool.snapshot();
        let snapshot = assess(&pool, &config, now, &previous, fresh);
        log_marks(&pool, &previous, &snapshot, &config);
        publish(
            &metrics,
            &pool,
            &snapshot,
            config.quantile,
            now,
            &mut published,
        );
        pool.set_snapshot(snapshot);
    }
}

/// One line per change of a mark from median latency (marks from late
/// answers log their own, `Instance::note_pace`).
fn log_marks(pool: &Pool, before: &Snapshot, after: &Snapshot, config: &WatchConfig) {
    for (role, was, is) in [
        (Role::Model, &before.slow_models, &after.slow_models),
        (Role::Parity, &before.slow_parities, &after.slow_parities),
    ] {
        for inst in pool.instances(role).iter() {
            match (was.contains(&inst.id), is.contains(&inst.id)) {
                (false, true) => tracing::warn!(
                    instance = %inst.url,
                    role = role.as_str(),
                    source = after.source.as_str(),
                    "marked a straggler: its median latency is over {}× the typical instance's",
                    config.slow_factor
                ),
                (true, false) => tracing::info!(
                    instance = %inst.url,
                    role = role.as_str(),
                    source = after.source.as_str(),
                    "no longer a straggler by its median latency"
                ),
                _ => {}
            }
        }
    }
}

/// The snapshot's conclusions as gauges. `published` holds the instances
/// that have gauges; those no longer in the pool lose their series, so
/// that instances coming and going (pods replaced) do not pile up.
fn publish(
    metrics: &Metrics,
    pool: &Pool,
    snapshot: &Snapshot,
    q: f64,
    now: Instant,
    published: &mut HashSet<(Role, String)>,
) {
    metrics
        .reconstruct_after_us
        .set(snapshot.reconstruct_after.as_micros() as i64);
    if let Some(tail) = snapshot.observed_tail {
        metrics
            .observed_latency
            .with_label_values(&[&q.to_string()])
            .set(tail.as_secs_f64());
    }
    for source in [LatencySource::Local, LatencySource::Prometheus] {
        metrics
            .latency_source
            .with_label_values(&[source.as_str()])
            .set(i64::from(source == snapshot.source));
    }
    let (models, parities) = (pool.models(), pool.parities());
    let mut current = HashSet::with_capacity(models.len() + parities.len());
    for inst in models.iter().chain(parities.iter()) {
        current.insert((inst.role, inst.url.clone()));
        let labels = [inst.role.as_str(), inst.url.as_str()];
        let standing = pool.standing(inst, snapshot, now);
        metrics
            .instance_straggler
            .with_label_values(&labels)
            .set(i64::from(standing != Standing::Usable));
        metrics
            .instance_ready
            .with_label_values(&labels)
            .set(i64::from(standing != Standing::Down));
    }
    for (role, url) in published.difference(&current) {
        metrics.forget_instance(*role, url);
    }
    *published = current;
}

/// Asks Prometheus every `every`; a failure is counted each time and logged
/// once, until Prometheus answers again.
async fn poll_prometheus(
    source: PromSource,
    pool: std::sync::Weak<Pool>,
    views: watch::Sender<Option<PromView>>,
    metrics: Arc<Metrics>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let urls = |v: &[Arc<Instance>]| v.iter().map(|i| i.url.clone()).collect::<Vec<_>>();
        let (models, parities) = (urls(&pool.models()), urls(&pool.parities()));
        drop(pool);
        match source.read(&models, &parities).await {
            Ok(view) => {
                if failing {
                    tracing::info!(url = %source.config().url, "Prometheus answers again; using it for straggler marks and the deadline");
                }
                failing = false;
                views.send_replace(Some(view));
            }
            Err(error) => {
                metrics.prometheus_errors.inc();
                if !failing {
                    tracing::warn!(%error, "Prometheus is unreachable; using the frontend's own latency windows until it answers (retrying every {every:?})");
                }
                failing = true;
            }
        }
    }
}

async fn probe_loop(pool: std::sync::Weak<Pool>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let instances: Vec<Arc<Instance>> = pool
            .models()
            .iter()
            .chain(pool.parities().iter())
            .cloned()
            .collect();
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
    use crate::frontend::instance::test_instance;

    fn slow(s: &Snapshot) -> Vec<usize> {
        s.slow_models.iter().copied().collect()
    }

    fn pool(models: usize) -> Pool {
        Pool::new(
            (0..models).map(|i| test_instance(i, Role::Model)).collect(),
            vec![test_instance(0, Role::Parity)],
        )
    }

    #[test]
    fn without_samples_the_initial_snapshot_holds() {
        let p = pool(2);
        let s = assess(
            &p,
            &WatchConfig::default(),
            Instant::now(),
            &p.snapshot(),
            None,
        );
        let initial = Snapshot::initial();
        assert_eq!(s.eager_after, initial.eager_after);
        assert_eq!(s.reconstruct_after, initial.reconstruct_after);
        assert!(s.slow_models.is_empty());
    }

    #[test]
    fn a_slow_instance_is_a_straggler_and_does_not_set_the_eager_wait() {
        let p = pool(3);
        let now = Instant::now();
        for i in 0..30 {
            let jitter = Duration::from_micros(10 * (i % 5));
            p.models()[0].record_success(now, Duration::from_micros(300) + jitter);
            p.models()[1].record_success(now, Duration::from_micros(320) + jitter);
            p.models()[2].record_success(now, Duration::from_millis(50) + jitter);
        }
        let config = WatchConfig::default();
        let s = assess(&p, &config, now, &p.snapshot(), None);
        assert_eq!(slow(&s), vec![2]);
        // Eager's floor is the typical median (~320 µs), not the straggler's 50 ms.
        assert!(
            s.eager_after < Duration::from_millis(1),
            "{:?}",
            s.eager_after
        );
        assert!(s.eager_after >= Duration::from_micros(300));
        // The deadline policy waits as long as a healthy instance's calls
        // take at the quantile, not the straggler's 50 ms.
        assert!(
            s.reconstruct_after < Duration::from_millis(1),
            "{:?}",
            s.reconstruct_after
        );
        assert!(s.stall_after >= MIN_STALL_AFTER && s.retry_after >= MIN_RETRY_AFTER);
        // Lagging and retries are a few typical medians, not the
        // straggler's 50 ms.
        assert!(
            s.lag_after >= MIN_LAG_AFTER && s.lag_after < Duration::from_millis(5),
            "{:?}",
            s.lag_after
        );
        assert_eq!(
            s.retry_after, MIN_RETRY_AFTER,
            "eight typical medians are under the floor"
        );
    }

    /// Under SIGSTOP with concurrent clients: the paused instance's window
    /// still holds its fast answers from before the pause, the healthy one
    /// now takes every call and answers slower under that load. The
    /// paused instance must not set "typical": it made the healthy one a
    /// straggler by its median, and dispatch then ranked the paused one
    /// (only lagging) above it, so calls and retries went to the paused
    /// instance until its health probe failed.
    #[test]
    fn a_paused_instance_does_not_make_the_healthy_one_a_straggler() {
        let p = pool(2);
        let t0 = Instant::now();
        let models = p.models();
        for _ in 0..30 {
            models[1].record_success(t0, Duration::from_micros(300));
        }
        // Paused at t0 with a call out; model 0 answers in 2 ms under load.
        let _held = models[1].hold_call(t0);
        for _ in 0..10 {
            models[0].record_success(t0, Duration::from_micros(300));
        }
        let now = t0 + Duration::from_millis(1500);
        for _ in 0..40 {
            models[0].record_success(now, Duration::from_millis(2));
        }
        let s = assess(&p, &WatchConfig::default(), now, &p.snapshot(), None);
        assert!(
            s.slow_models.is_empty(),
            "the healthy instance was marked: {:?}",
            s.slow_models
        );
        // Lag and retry limits follow the instance that answers.
        assert!(s.lag_after >= Duration::from_millis(8), "{:?}", s.lag_after);
        p.set_snapshot(s);
        let snapshot = p.snapshot();
        assert_eq!(p.standing(&models[0], &snapshot, now), Standing::Usable);
        assert_eq!(p.standing(&models[1], &snapshot, now), Standing::Lagging);
    }

    #[test]
    fn old_samples_age_out() {
        let p = pool(2);
        let then = Instant::now();
        for _ in 0..30 {
            p.models()[0].record_success(then, Duration::from_micros(300));
            p.models()[1].record_success(then, Duration::from_millis(50));
        }
        let later = then + Duration::from_secs(10);
        let s = assess(&p, &WatchConfig::default(), later, &p.snapshot(), None);
        assert!(
            s.slow_models.is_empty(),
            "a slow spell does not ban forever"
        );
    }

    /// What Prometheus says of model instance i (at test_instance(i)'s URL).
    fn view(models: Vec<Option<f64>>, tail: Option<f64>) -> PromView {
        PromView {
            at: Instant::now(),
            model_medians: models
                .into_iter()
                .enumerate()
                .filter_map(|(i, m)| Some((test_instance(i, Role::Model).url.clone(), m?)))
                .collect(),
            parity_medians: HashMap::new(),
            tail,
        }
    }

    #[test]
    fn prometheus_marks_an_instance_this_frontend_has_not_called() {
        let p = pool(3);
        let now = Instant::now();
        // This frontend only saw fast calls of instances 0 and 1...
        for _ in 0..30 {
            p.models()[0].record_success(now, Duration::from_micros(300));
            p.models()[1].record_success(now, Duration::from_micros(320));
        }
        // ...while every frontend's calls made instance 2 slow.
        let seen = view(vec![Some(0.0003), None, Some(0.05)], Some(0.045));
        let s = assess(&p, &WatchConfig::default(), now, &p.snapshot(), Some(&seen));
        assert_eq!(slow(&s), vec![2]);
        assert_eq!(s.source, LatencySource::Prometheus);
        assert_eq!(s.reconstruct_after, Duration::from_millis(45));
        assert_eq!(s.observed_tail, Some(Duration::from_millis(45)));
        // Without Prometheus nothing is known of instance 2.
        let s = assess(&p, &WatchConfig::default(), now, &p.snapshot(), None);
        assert!(s.slow_models.is_empty());
        assert_eq!(s.source, LatencySource::Local);
    }

    #[test]
    fn a_straggler_mark_has_hysteresis() {
        let p = pool(3);
        let now = Instant::now();
        let config = WatchConfig::default();
        let at = |slow: f64, previous: &Snapshot| {
            let seen = view(vec![Some(0.001), Some(0.001), Some(slow)], None);
            assess(&p, &config, now, previous, Some(&seen))
        };
        let healthy = p.snapshot();
        // 2x typical: not enough to become a straggler...
        assert!(!at(0.002, &healthy).slow_models.contains(&2));
        let marked = at(0.004, &healthy);
        assert!(marked.slow_models.contains(&2));
        // ...but enough to stay one.
        let still = at(0.002, &marked);
        assert!(still.slow_models.contains(&2));
        // Back near typical, or nothing known any more: usable again.
        assert!(!at(0.0012, &still).slow_models.contains(&2));
        let unknown = view(vec![Some(0.001), Some(0.001), None], None);
        assert!(
            !assess(&p, &config, now, &still, Some(&unknown))
                .slow_models
                .contains(&2)
        );
    }

    #[test]
    fn prometheus_latencies_are_put_on_the_calls_scale() {
        let p = pool(3);
        let now = Instant::now();
        for _ in 0..30 {
            for m in p.models().iter() {
                m.record_success(now, Duration::from_micros(1300));
            }
        }
        // Worker 2 answers in 0.9 ms, 3x the others' 0.3 ms, but calls to
        // every worker cost 1 ms more than the answer: not a straggler.
        let seen = view(vec![Some(0.0003), Some(0.0003), Some(0.0009)], Some(0.002));
        let s = assess(&p, &WatchConfig::default(), now, &p.snapshot(), Some(&seen));
        assert!(s.slow_models.is_empty());
        assert_eq!(s.reconstruct_after, Duration::from_millis(3));
        // At 4 ms (a 5 ms call) it is one.
        let seen = view(vec![Some(0.0003), Some(0.0003), Some(0.004)], None);
        let s = assess(&p, &WatchConfig::default(), now, &p.snapshot(), Some(&seen));
        assert_eq!(slow(&s), vec![2]);
    }
}
