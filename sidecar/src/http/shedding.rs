//! Shedding by queueing delay: an adaptive cap on the infer requests in
//! flight, below `--max-inflight-requests`, that keeps the requests a
//! server admits answered about as fast as when it is idle.
//!
//! Why not only a fixed cap: a fixed cap bounds memory, not latency. At
//! capacity C, N requests in flight wait N / C (Little's law), so the
//! default 1024 on workers of a few hundred queries/s means seconds of
//! queue for every admitted request, against an unloaded p99 of a few ms.
//! No fixed N suits every model and machine, so the cap is learnt.
//!
//! How (CoDel's signal, a gradient limiter's response): the signal is
//! the *minimum* latency of the requests answered in a window of at least
//! `interval` (100 ms) and [`MIN_SAMPLES`] answers, compared with the
//! base latency, the lowest such minimum of the last [`BASE_WINDOW`]. A
//! minimum above base + `target` means every request of the window
//! queued: a standing queue, not a burst (whose first requests are fast)
//! nor a straggler (one slow answer among fast ones), so bursts and
//! stragglers are not shed; with no more than [`MIN_LIMIT`] in flight
//! nothing queued, and a slow window means a slower server (its latency
//! becomes the base within [`BASE_WINDOW`]). On a standing queue the cap is cut, like
//! Envoy's and Netflix's gradient limiters, to in-flight × (base +
//! target) / minimum: by Little's law the same throughput at the target
//! latency. Without one, a cap that was reached grows by √cap per window
//! (their headroom), so it follows capacity back up.
//!
//! A request over the cap is refused unread, like the fixed caps (503 +
//! Retry-After, RESOURCE_EXHAUSTED, `reason="queue_delay"`): refusing
//! before any work is what keeps the admitted fast (CoDel drops at the
//! head of its queue; a server's head is its door).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `--shed-queue-delay-ms`' default: CoDel's target.
pub const DEFAULT_TARGET_MS: u64 = 5;
/// CoDel's interval: how long a queue must stand before it is shed, and
/// how often the cap is revised.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// Answers a window needs before it is judged: one slow answer at low
/// load is not a standing queue.
pub const MIN_SAMPLES: usize = 8;
/// The cap never goes below this (Envoy's minimum concurrency is 3): a
/// few requests always pass, and their latencies keep the signal alive.
pub const MIN_LIMIT: usize = 4;
/// The base latency is the lowest window minimum of this long (BBR keeps
/// its min RTT 10 s): long enough to span an overload's cuts, short enough
/// that a model that got slower for good is soon its new base.
pub const BASE_WINDOW: Duration = Duration::from_secs(10);

/// What to shed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShedConfig {
    /// Standing queueing delay tolerated above the base latency.
    pub target: Duration,
    pub interval: Duration,
}

impl ShedConfig {
    pub fn with_target(target: Duration) -> Self {
        ShedConfig {
            target,
            interval: INTERVAL,
        }
    }
}

/// The adaptive cap and what it learnt.
pub struct Shedder {
    config: ShedConfig,
    max: usize,
    limit: AtomicUsize,
    /// The cap was reached since the last revision.
    reached: AtomicBool,
    state: Mutex<Window>,
}

struct Window {
    start: Instant,
    min: Duration,
    samples: usize,
    /// (start of a second, lowest window minimum in it), oldest first.
    base: VecDeque<(Instant, Duration)>,
}

impl Shedder {
    /// A shedder whose cap starts at, and never exceeds, `max`.
    pub fn new(config: ShedConfig, max: usize, now: Instant) -> Self {
        let max = max.max(MIN_LIMIT);
        Shedder {
            config,
            max,
            limit: AtomicUsize::new(max),
            reached: AtomicBool::new(false),
            state: Mutex::new(Window {
                start: now,
                min: Duration::MAX,
                samples: 0,
                base: VecDeque::new(),
            }),
        }
    }

    pub fn config(&self) -> ShedConfig {
        self.config
    }

    /// The cap now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether one more request may join the `held` in flight.
    pub fn admits(&self, held: usize) -> bool {
        let limit = self.limit();
        if held.saturating_add(1) >= limit {
            self.reached.store(true, Ordering::Relaxed);
        }
        held < limit
    }

    /// The base latency learnt so far.
    pub fn base(&self) -> Option<Duration> {
        let w = self.state.lock().ok()?;
        w.base.iter().map(|b| b.1).min()
    }

    /// An admitted request was answered after `latency`, leaving `held`
    /// in flight; revises the cap once the window is complete.
    pub fn answered(&self, latency: Duration, held: usize, now: Instant) {
        let Ok(mut w) = self.state.lock() else {
            return;
        };
        w.min = w.min.min(latency);
        w.samples += 1;
        if now.saturating_duration_since(w.start) < self.config.interval || w.samples < MIN_SAMPLES
        {
            return;
        }
        let min = w.min;
        w.start = now;
        w.min = Duration::MAX;
        w.samples = 0;
        // The base: per-second minimums over BASE_WINDOW.
        let same_second = w.base.back().is_some_and(|(second, _)| {
            now.saturating_duration_since(*second) < Duration::from_secs(1)
        });
        if !same_second {
            w.base.push_back((now, min));
        } else if let Some(last) = w.base.back_mut() {
            last.1 = last.1.min(min);
        }
        while w
            .base
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > BASE_WINDOW)
        {
            w.base.pop_front();
        }
        let base = w.base.iter().map(|b| b.1).min().unwrap_or(min);
        drop(w);
        let limit = self.limit();
        let reached = self.reached.swap(false, Ordering::Relaxed);
        // With no more in flight than the floor nothing queues behind
        // anything: a slow window then says the server got slower.
        let next = if min > base + self.config.target && held > MIN_LIMIT {
            // Little's law: the same throughput at base + target.
            let ratio = (base + self.config.target).as_secs_f64() / min.as_secs_f64();
            let cut = (held.max(1) as f64 * ratio).ceil() as usize;
            cut.min(limit).max(MIN_LIMIT)
        } else if reached {
            let headroom = (limit as f64).sqrt().ceil() as usize;
            limit.saturating_add(headroom.max(1)).min(self.max)
        } else {
            limit
        };
        self.limit.store(next, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A fake clock: the shedder is told the time, never reads it.
    struct Clock(Instant);

    impl Clock {
        fn advance(&mut self, d: Duration) -> Instant {
            self.0 += d;
            self.0
        }
    }

    fn shedder() -> (Shedder, Clock) {
        let now = Instant::now();
        let s = Shedder::new(ShedConfig::with_target(5 * MS), 1024, now);
        (s, Clock(now))
    }

    /// One window of `n` answers, `latency` each, spread over 100 ms.
    fn window(s: &Shedder, clock: &mut Clock, latency: Duration, held: usize, n: usize) {
        for _ in 0..n {
            let now = clock.advance(INTERVAL / n as u32);
            s.answered(latency, held, now);
        }
    }

    #[test]
    fn a_standing_queue_cuts_the_cap_to_the_target_latency() {
        let (s, mut clock) = shedder();
        // Unloaded: 6 ms answers teach the base.
        window(&s, &mut clock, 6 * MS, 2, 20);
        assert_eq!(s.base(), Some(6 * MS));
        assert_eq!(s.limit(), 1024, "no queue, no cut");
        // Overload: 1000 in flight, every answer a second late.
        window(&s, &mut clock, 1000 * MS, 1000, 20);
        // 1000 × (6 + 5) / 1000 = 11.
        assert_eq!(s.limit(), 11);
        assert!(!s.admits(11) && s.admits(10));
        // Still queued while the old requests drain: down to the floor.
        window(&s, &mut clock, 900 * MS, 200, 20);
        assert_eq!(s.limit(), MIN_LIMIT);
    }

    #[test]
    fn a_reached_cap_grows_back_while_answers_are_fast() {
        let (s, mut clock) = shedder();
        window(&s, &mut clock, 6 * MS, 2, 20);
        window(&s, &mut clock, 600 * MS, 400, 20);
        let cut = s.limit();
        assert!(cut < 1024);
        // Fast answers but nobody at the cap: it stays.
        window(&s, &mut clock, 7 * MS, 1, 20);
        assert_eq!(s.limit(), cut);
        // At the cap with fast answers: + √cap per window, up to the max.
        let mut last = cut;
        for _ in 0..200 {
            assert!(!s.admits(s.limit()), "refused at the cap");
            window(&s, &mut clock, 7 * MS, s.limit(), 20);
            assert!(s.limit() >= last);
            last = s.limit();
        }
        assert_eq!(s.limit(), 1024);
    }

    #[test]
    fn bursts_and_stragglers_are_not_shed() {
        let (s, mut clock) = shedder();
        window(&s, &mut clock, 6 * MS, 2, 20);
        // A burst: its first answers are fast, the rest queued.
        for i in 0..50u32 {
            let now = clock.advance(2 * MS);
            s.answered(6 * MS + i * 4 * MS, 50 - i as usize, now);
        }
        assert_eq!(s.limit(), 1024);
        // Stragglers: a few answers 50 ms late among fast ones.
        for i in 0..40u32 {
            let now = clock.advance(5 * MS);
            let latency = if i % 5 == 0 { 56 * MS } else { 6 * MS };
            s.answered(latency, 10, now);
        }
        assert_eq!(s.limit(), 1024);
    }

    #[test]
    fn a_window_needs_time_enough_answers_and_a_queue() {
        let (s, mut clock) = shedder();
        window(&s, &mut clock, 6 * MS, 2, 20);
        // Many slow answers within less than the interval: not judged.
        for _ in 0..50 {
            let now = clock.advance(Duration::from_micros(100));
            s.answered(80 * MS, 100, now);
        }
        assert_eq!(s.limit(), 1024);
        // The window completes: every answer of it was slow.
        let now = clock.advance(INTERVAL);
        s.answered(80 * MS, 100, now);
        assert!(s.limit() < 1024);

        let (s, mut clock) = shedder();
        window(&s, &mut clock, 6 * MS, 2, 20);
        // At low load, a few slow answers over a long time: not judged.
        for _ in 0..(MIN_SAMPLES - 1) {
            let now = clock.advance(Duration::from_secs(1));
            s.answered(80 * MS, 10, now);
        }
        assert_eq!(s.limit(), 1024);
        // Judged, but one in flight is no queue: the server got slower.
        let now = clock.advance(Duration::from_secs(1));
        s.answered(80 * MS, 1, now);
        assert_eq!(s.limit(), 1024);
    }

    #[test]
    fn the_base_forgets_after_its_window() {
        let (s, mut clock) = shedder();
        window(&s, &mut clock, 6 * MS, 2, 20);
        // The model became slower for good (no queue): 30 ms answers.
        for _ in 0..((BASE_WINDOW.as_millis() / INTERVAL.as_millis()) + 20) {
            window(&s, &mut clock, 30 * MS, 1, 10);
        }
        assert_eq!(s.base(), Some(30 * MS));
    }
}
