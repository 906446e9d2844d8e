//! Injected stragglers: a seeded schedule of slow windows per worker,
//! applied through each worker's `/admin/delay` or as SIGSTOP pauses. The
//! same seed gives every configuration of a run the same slowdowns.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct SlowPlan {
    /// Length of one window.
    pub window: Duration,
    /// Chance that an instance is slow during a window.
    pub probability: f64,
    /// Added to every answer of a slow instance.
    pub delay_ms: u64,
    pub seed: u64,
}

/// `schedule[w][i]`: the delay of instance `i` in window `w`.
pub fn schedule(plan: &SlowPlan, instances: usize, duration: Duration) -> Vec<Vec<u64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed ^ 0x5107);
    let windows = (duration.as_secs_f64() / plan.window.as_secs_f64()).ceil() as usize;
    (0..windows)
        .map(|_| {
            (0..instances)
                .map(|_| {
                    if rng.random_bool(plan.probability.clamp(0.0, 1.0)) {
                        plan.delay_ms
                    } else {
                        0
                    }
                })
                .collect()
        })
        .collect()
}

/// Applies `schedule` to the workers at `urls` from `start`, then clears
/// every delay.
pub async fn apply(
    http: reqwest::Client,
    urls: Vec<String>,
    schedule: Vec<Vec<u64>>,
    window: Duration,
    start: Instant,
) {
    for (w, delays) in schedule.iter().enumerate() {
        tokio::time::sleep_until(start + window * w as u32).await;
        for (url, &delay) in urls.iter().zip(delays) {
            set(&http, url, delay).await;
        }
    }
    tokio::time::sleep_until(start + window * schedule.len() as u32).await;
    for url in &urls {
        set(&http, url, 0).await;
    }
}

async fn set(http: &reqwest::Client, url: &str, delay_ms: u64) {
    let body = format!("{{\"delay_ms\": {delay_ms}}}");
    if let Err(e) = http
        .post(format!("{url}/admin/delay"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        tracing::warn!(%url, "cannot set the injected delay: {e}");
    }
}

/// Applies `schedule` as pauses: a worker slow in a window is stopped
/// (SIGSTOP) for it and continued (SIGCONT) after; every worker is
/// continued at the end.
pub async fn pause(
    pids: Vec<Option<Pid>>,
    schedule: Vec<Vec<u64>>,
    window: Duration,
    start: Instant,
) {
    let send = |pid: Option<Pid>, signal: Signal| {
        if let Some(pid) = pid
            && let Err(e) = kill(pid, signal)
        {
            tracing::warn!(%pid, "cannot send {signal}: {e}");
        }
    };
    for (w, delays) in schedule.iter().enumerate() {
        tokio::time::sleep_until(start + window * w as u32).await;
        for (&pid, &delay) in pids.iter().zip(delays) {
            send(
                pid,
                if delay > 0 {
                    Signal::SIGSTOP
                } else {
                    Signal::SIGCONT
                },
            );
        }
    }
    tokio::time::sleep_until(start + window * schedule.len() as u32).await;
    for &pid in &pids {
        send(pid, Signal::SIGCONT);
    }
}
