//! Open-loop load: arrival times drawn in advance from a seeded Poisson
//! process, each request sent at its time whether or not earlier ones have
//! answered, and latency measured from the intended send time, so a stalled
//! server cannot hide its queue (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::latency::Recorder;
use super::request::{Call, Caller, refusal_kind, send_infer};

#[derive(Debug, Clone, Copy)]
pub struct LoadPlan {
    /// Mean requests per second.
    pub rate: f64,
    pub duration: Duration,
    pub seed: u64,
}

/// Arrival offsets from the start, exponential gaps of mean 1/rate.
pub fn arrivals(plan: &LoadPlan) -> Vec<Duration> {
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
    let mut t = 0.0f64;
    let mut out = Vec::new();
    loop {
        let u: f64 = rng.random_range(f64::EPSILON..1.0);
        t += -u.ln() / plan.rate.max(1e-9);
        if t >= plan.duration.as_secs_f64() {
            return out;
        }
        out.push(Duration::from_secs_f64(t));
    }
}

#[derive(Default)]
pub struct LoadResult {
    pub latency: Recorder,
    pub sent: u64,
    /// Every request without an answer: refusals and timeouts included.
    pub errors: u64,
    /// Of the errors, load shed (503 + Retry-After), by the limit that
    /// shed it ([`refusal_kind`]).
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Of the errors, no answer within the client's timeout.
    pub timeouts: u64,
    pub reconstructed: u64,
    /// Reconstructed answers whose class is known from the base model, and
    /// those of them that agree with it.
    pub rebuilt_checked: u64,
    pub rebuilt_agree: u64,
    pub wall: Duration,
}

/// The requests to send, in turn, and what the base model answers to each
/// (empty when not known).
pub struct Requests {
    pub calls: Vec<Call>,
    pub classes: Vec<usize>,
}

/// Runs the plan, sending request i as `requests.calls[i % n]`, with a
/// progress bar.
pub async fn run(
    http: &reqwest::Client,
    requests: Arc<Requests>,
    plan: &LoadPlan,
    label: &str,
) -> LoadResult {
    let times = arrivals(plan);
    let result = Arc::new(Mutex::new(LoadResult::default()));
    let bar = indicatif::ProgressBar::new(times.len() as u64).with_message(label.to_owned());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let n = requests.calls.len().max(1);
    for (i, offset) in times.into_iter().enumerate() {
        let intended = start + offset;
        tokio::time::sleep_until(intended).await;
        let (http, requests, result, bar) =
            (http.clone(), requests.clone(), result.clone(), bar.clone());
        tasks.spawn(async move {
            let Some(call) = requests.calls.get(i % n) else {
                return;
            };
            let outcome = send_infer(&http, call).await;
            let latency = intended.elapsed();
            let mut r = result.lock().await;
            r.sent += 1;
            match outcome {
                Ok(answer) => {
                    r.latency.record(latency);
                    if answer.rebuilt {
                        r.reconstructed += 1;
                        if let (Some(got), Some(&want)) =
                            (answer.class, requests.classes.get(i % n))
                        {
                            r.rebuilt_checked += 1;
                            r.rebuilt_agree += u64::from(got == want);
                        }
                    }
                }
                Err(e) => {
                    r.errors += 1;
                    if let Some(kind) = refusal_kind(&e) {
                        *r.refused.entry(kind.to_owned()).or_default() += 1;
                    } else if e
                        .downcast_ref::<reqwest::Error>()
                        .is_some_and(reqwest::Error::is_timeout)
                    {
                        r.timeouts += 1;
                    }
                }
            }
            bar.inc(1);
        });
    }
    while tasks.join_next().await.is_some() {}
    bar.finish_and_clear();
    let mut r = std::mem::take(&mut *result.lock().await);
    r.wall = start.elapsed();
    r
}

/// Requests per second that `concurrency` closed-loop clients get answered,
/// and how many. A request refused as load shed ([`refusal_kind`]) is not
/// counted, and its client waits a millisecond before the next (rather
/// than spin); any other error ends the run.
pub async fn closed_loop(
    http: &reqwest::Client,
    call: &Caller,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<(f64, u64)> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (http, call, done) = (http.clone(), call.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    match call.send(&http).await {
                        Ok(()) => {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if refusal_kind(&e).is_some() => {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let done = done.load(Ordering::Relaxed);
    Ok((done as f64 / started.elapsed().as_secs_f64(), done))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_seeded_and_poisson_like() {
        let plan = LoadPlan {
            rate: 1000.0,
            duration: Duration::from_secs(10),
            seed: 7,
        };
        let a = arrivals(&plan);
        assert_eq!(a, arrivals(&plan), "same seed, same arrivals");
        let n = a.len() as f64;
        assert!(
            (n - 10_000.0).abs() < 400.0,
            "{n} arrivals for 10 s at 1000/s"
        );
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert_ne!(a, arrivals(&LoadPlan { seed: 8, ..plan }));
    }
}
