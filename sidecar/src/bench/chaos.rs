//! `bench chaos`: a bounded chaos run against the `local` topology. Seeded
//! open-loop load of test images whose base-model outputs are known, and a
//! seeded schedule of faults on the workers (SIGKILL then a restart on the
//! same port, SIGSTOP then SIGCONT, one worker or two at once). Every query
//! is checked: one HTTP answer, either real (the base model's output),
//! marked rebuilt, or a clear error no sooner than the deadline; none
//! dropped, none hung past the deadline. The frontend is watched meanwhile:
//! its running batches must drain once the faults are over, and its memory
//! must not grow with the run.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::Signal;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokio::time::Instant;

use super::load::{LoadPlan, arrivals};
use super::request::{Call, call_with};
use crate::local::Cluster;
use crate::protocol::binary;

#[derive(Debug, Clone)]
pub struct ChaosPlan {
    /// How long load is sent.
    pub duration: Duration,
    /// Mean queries per second (Poisson arrivals, one image per request).
    pub rate: f64,
    pub seed: u64,
    pub faults_per_minute: f64,
    /// Chance that a fault hits two workers at once.
    pub two_at_once: f64,
    /// The frontend's request deadline (`--timeout-ms`).
    pub deadline: Duration,
    /// How long past the deadline an answer may take before the query
    /// counts as hung: generous, the machine is shared.
    pub slack: Duration,
    /// No faults in the first `warmup` (the frontend learns F(0) and its
    /// latencies; its memory is measured at the end of it) nor in the
    /// last `cooldown` of the load.
    pub warmup: Duration,
    pub cooldown: Duration,
    /// Longest fault; each holds for a seeded time up to this.
    pub max_hold: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL, then the worker is started again on its port.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
}

/// One fault: at `at` from the start of the load, `hits` (worker index,
/// kind) for `hold`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub at: Duration,
    pub hold: Duration,
    pub hits: Vec<(usize, FaultKind)>,
}

/// The seeded faults for `models` model workers and `parities` parity
/// workers (numbered models first): evenly spaced (with jitter) between
/// the warm-up and the cool-down, one at a time, each over before the next
/// starts.
pub fn schedule(plan: &ChaosPlan, models: usize, parities: usize) -> Vec<Fault> {
    let workers = models + parities;
    let mut rng = ChaCha8Rng::seed_from_u64(plan.seed ^ 0xc4a05);
    let window = plan
        .duration
        .saturating_sub(plan.warmup)
        .saturating_sub(plan.cooldown);
    let count = (window.as_secs_f64() / 60.0 * plan.faults_per_minute).floor() as usize;
    if count == 0 || workers == 0 {
        return Vec::new();
    }
    let period = window / count as u32;
    let kind = |rng: &mut ChaCha8Rng| {
        if rng.random_bool(0.5) {
            FaultKind::Kill
        } else {
            FaultKind::Pause
        }
    };
    (0..count)
        .map(|i| {
            // Each fault starts in the first fifth of its period and holds
            // for at most three fifths of it, so faults never overlap.
            let at = plan.warmup + period * i as u32 + period.mul_f64(rng.random_range(0.0..0.2));
            let longest = plan.max_hold.min(period.mul_f64(0.6));
            let hold = longest.mul_f64(rng.random_range(0.2..1.0));
            let hits = if workers > 1 && rng.random_bool(plan.two_at_once.clamp(0.0, 1.0)) {
                // Half of them two model workers (two slots of a group),
                // half a model worker and a parity (a slot and its parity).
                let (a, b) = if models >= 2 && (parities == 0 || rng.random_bool(0.5)) {
                    let a = rng.random_range(0..models);
                    (a, (a + rng.random_range(1..models)) % models)
                } else if models >= 1 && parities >= 1 {
                    (
                        rng.random_range(0..models),
                        models + rng.random_range(0..parities),
                    )
                } else {
                    (0, 1)
                };
                vec![(a, kind(&mut rng)), (b, kind(&mut rng))]
            } else {
                vec![(rng.random_range(0..workers), kind(&mut rng))]
            };
            Fault { at, hold, hits }
        })
        .collect()
}

/// The test images sent in turn and the base model's output for each.
pub struct References {
    pub rows: Vec<Vec<f32>>,
    pub outputs: Vec<Vec<f32>>,
}

/// Absolute tolerance, scaled by the value, between a real answer and the
/// in-process reference (batching changes the float summation order).
const TOLERANCE: f32 = 1e-3;
/// How long the frontend's batches may take to drain after the last fault.
const DRAIN_WAIT: Duration = Duration::from_secs(10);
/// Runs the plan against `cluster` (k model workers or more, parities, a
/// frontend with `--timeout-ms` = the plan's deadline), sending
/// `references.rows` in turn to model `model`.
pub async fn run(
    cluster: &mut Cluster,
    model: &str,
    input: &str,
    shape: &[usize],
    references: Arc<References>,
    plan: &ChaosPlan,
) -> anyhow::Result<ChaosReport> {
    let models = cluster.model_urls.len();
    let parities = cluster.parity_urls.len();
    let faults = schedule(plan, models, parities);
    let frontend_url = cluster.frontend_url.clone();
    let frontend_pid = cluster
        .frontend()
        .and_then(|f| f.pid())
        .context("the frontend is not running")?;
    let calls: Arc<Vec<Call>> = Arc::new(
        references
            .rows
            .iter()
            .map(|row| call_with(&frontend_url, model, input, shape, row.clone()))
            .collect(),
    );
    anyhow::ensure!(!calls.is_empty(), "no test images to send");
    let http = reqwest::Client::builder()
        .timeout(plan.deadline + plan.slack)
        .build()?;

    let started = std::time::Instant::now();
    let watch = Arc::new(Mutex::new(FrontendWatch::default()));
    let sampler = tokio::spawn(sample_frontend(
        http.clone(),
        frontend_url.clone(),
        frontend_pid.as_raw(),
        watch.clone(),
    ));

    let times = arrivals(&LoadPlan {
        rate: plan.rate,
        duration: plan.duration,
        seed: plan.seed,
    });
    let bar = indicatif::ProgressBar::new(times.len() as u64)
        .with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        )
        .with_message("chaos");
    let start = Instant::now();
    let outcomes: Arc<Mutex<Vec<(Outcome, Duration)>>> = Arc::default();
    let load = {
        let (http, calls, references, outcomes, bar) = (
            http.clone(),
            calls.clone(),
            references.clone(),
            outcomes.clone(),
            bar.clone(),
        );
        let deadline = plan.deadline;
        tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for (i, offset) in times.into_iter().enumerate() {
                tokio::time::sleep_until(start + offset).await;
                let (http, calls, references, outcomes, bar) = (
                    http.clone(),
                    calls.clone(),
                    references.clone(),
                    outcomes.clone(),
                    bar.clone(),
                );
                tasks.spawn(async move {
                    let image = i % calls.len();
                    let sent = std::time::Instant::now();
                    let outcome =
                        send_checked(&http, &calls[image], &references.outputs[image], deadline)
                            .await;
                    if let Ok(mut o) = outcomes.lock() {
                        o.push((outcome, sent.elapsed()));
                    }
                    bar.inc(1);
                });
            }
            while tasks.join_next().await.is_some() {}
        })
    };

    // The warm RSS, once the frontend has served for the warm-up.
    tokio::time::sleep_until(start + plan.warmup).await;
    let warm = rss_kb(frontend_pid.as_raw()).unwrap_or(0);
    if let Ok(mut w) = watch.lock() {
        w.rss_warm_kb = warm;
    }
    let fault_counts = inject(cluster, &faults, models, start).await;
    load.await.context("the load task")?;
    bar.finish_and_clear();

    // Every worker is back; the batches still running must drain.
    let drained_by = Instant::now() + DRAIN_WAIT;
    let mut running = batches_running(&http, &frontend_url).await;
    while running != Some(0) && Instant::now() < drained_by {
        tokio::time::sleep(Duration::from_millis(100)).await;
        running = batches_running(&http, &frontend_url).await;
    }
    sampler.abort();
    let mut frontend = watch.lock().map(|w| w.clone()).unwrap_or_default();
    frontend.batches_running_end = running.unwrap_or(-1);
    frontend.rss_end_kb = rss_kb(frontend_pid.as_raw()).unwrap_or(0);
    frontend.rss_peak_kb = frontend.rss_peak_kb.max(frontend.rss_end_kb);

    let outcomes = std::mem::take(&mut *outcomes.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let mut report = ChaosReport {
        seed: plan.seed,
        seconds: plan.duration.as_secs_f64(),
        rate: plan.rate,
        deadline_ms: plan.deadline.as_millis() as u64,
        models,
        parities,
        queries: count(&outcomes.iter().map(|o| o.0.clone()).collect::<Vec<_>>()),
        latency_ms: latencies(&outcomes),
        faults: fault_counts,
        frontend,
        wall_seconds: started.elapsed().as_secs_f64(),
        violations: Vec::new(),
    };
    report.violations = violations(&report);
    Ok(report)
}

/// Carries out the faults in turn, from `start`; counts what was done.
async fn inject(
    cluster: &mut Cluster,
    faults: &[Fault],
    models: usize,
    start: Instant,
) -> FaultCounts {
    let mut counts = FaultCounts::default();
    for fault in faults {
        tokio::time::sleep_until(start + fault.at).await;
        for &(worker, kind) in &fault.hits {
            let Some(child) = cluster.children.get(worker) else {
                continue;
            };
            let signal = match kind {
                FaultKind::Kill => Signal::SIGKILL,
                FaultKind::Pause => Signal::SIGSTOP,
            };
            match child.signal(signal) {
                Ok(()) => match kind {
                    FaultKind::Kill => counts.kills += 1,
                    FaultKind::Pause => counts.pauses += 1,
                },
                Err(e) => tracing::warn!("cannot inject {kind:?} into worker {worker}: {e:#}"),
            }
        }
        counts.total += 1;
        if let [(a, _), (b, _)] = fault.hits[..] {
            counts.two_at_once += 1;
            match (a < models, b < models) {
                (true, true) => counts.two_models += 1,
                (true, false) | (false, true) => counts.model_and_parity += 1,
                (false, false) => {}
            }
        }
        tokio::time::sleep_until(start + fault.at + fault.hold).await;
        for &(worker, kind) in &fault.hits {
            match kind {
                FaultKind::Pause => {
                    if let Some(child) = cluster.children.get(worker)
                        && let Err(e) = child.signal(Signal::SIGCONT)
                    {
                        tracing::warn!("cannot continue worker {worker}: {e:#}");
                    }
                }
                FaultKind::Kill => {
                    // The port was just freed; a bind can still race the
                    // kernel's cleanup, so try a few times.
                    let mut restarted = false;
                    for _ in 0..3 {
                        match cluster.restart_worker(worker).await {
                            Ok(()) => {
                                restarted = true;
                                break;
                            }
                            Err(e) => {
                                tracing::warn!("restarting worker {worker}: {e:#}");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                    counts.failed_restarts += u64::from(!restarted);
                }
            }
        }
    }
    counts
}

/// Sends one query and judges its answer against `want`.
async fn send_checked(
    http: &reqwest::Client,
    call: &Call,
    want: &[f32],
    deadline: Duration,
) -> Outcome {
    let sent = std::time::Instant::now();
    let mut request = http.post(&call.url).body(call.body.clone());
    if let Some(n) = call.header_length {
        request = request.header(binary::HEADER_LENGTH, n);
    }
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return Outcome::Lost(format!("no answer: {e}")),
        Err(e) => return Outcome::Lost(format!("no answer (connection): {e}")),
    };
    let status = response.status();
    let header_length = response
        .headers()
        .get(binary::HEADER_LENGTH)
        .map(|v| v.as_bytes().to_vec());
    let body = match response.bytes().await {
        Ok(b) => b,
        Err(e) => return Outcome::Lost(format!("{status} with its body cut: {e}")),
    };
    let took = sent.elapsed();
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .filter(|m| !m.is_empty());
        let Some(message) = message else {
            return Outcome::Lost(format!("{status} without an error message"));
        };
        return match status.as_u16() {
            504 => Outcome::Error {
                kind: "deadline".into(),
                // The frontend's clock starts when the request arrives,
                // after ours: an answer earlier than the deadline here
                // was certainly early there (1 ms for timer rounding).
                early: took + Duration::from_millis(1) < deadline,
            },
            // Load shed (a full queue, an admission cap, or the learnt
            // one of --shed-queue-delay-ms): refused at once by design.
            503 if message.contains("retry later") => Outcome::Error {
                kind: "overloaded".into(),
                early: false,
            },
            s if s >= 500 => Outcome::Error {
                kind: s.to_string(),
                early: took + Duration::from_millis(1) < deadline,
            },
            s => Outcome::Lost(format!("{s}: {message}")),
        };
    }
    let decoded = binary::parse_header_length(header_length.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|n| binary::decode_response(&body, n).map_err(anyhow::Error::from));
    let decoded = match decoded {
        Ok(d) => d,
        Err(e) => return Outcome::Lost(format!("200 with an unreadable body: {e:#}")),
    };
    let Some(got) = decoded.outputs.first().map(|o| &o.data) else {
        return Outcome::Lost("200 with no output".into());
    };
    if got.len() != want.len() {
        return Outcome::Wrong(format!("{} values, not {}", got.len(), want.len()));
    }
    let rebuilt = decoded.parameters.get("reconstructed") == Some(&serde_json::Value::Bool(true));
    if rebuilt {
        return Outcome::Rebuilt {
            agrees: argmax(got) == argmax(want),
        };
    }
    match got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
        .fold(0.0f32, f32::max)
    {
        d if d <= TOLERANCE => Outcome::Real,
        d => Outcome::Wrong(format!("differs from the base model's output by {d:.4}")),
    }
}

fn argmax(v: &[f32]) -> Option<usize> {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

/// Samples the frontend's running batches and RSS every 100 ms.
async fn sample_frontend(
    http: reqwest::Client,
    url: String,
    pid: i32,
    watch: Arc<Mutex<FrontendWatch>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let running = batches_running(&http, &url).await;
        let rss = rss_kb(pid);
        if let Ok(mut w) = watch.lock() {
            w.samples += 1;
            if let Some(r) = running {
                w.peak_batches_running = w.peak_batches_running.max(r);
            }
            if let Some(r) = rss {
                w.rss_peak_kb = w.rss_peak_kb.max(r);
            }
        }
    }
}

/// `coded_frontend_batches_running` from the frontend's /metrics.
async fn batches_running(http: &reqwest::Client, url: &str) -> Option<i64> {
    let text = http
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("coded_frontend_batches_running"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as i64)
}

/// A process's resident memory (VmRSS), in kB.
pub(crate) fn rss_kb(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

mod report;

pub use report::{ChaosReport, FaultCounts, FrontendWatch, Latencies, QueryCounts, table};
use report::{Outcome, count, latencies, violations};

#[cfg(test)]
mod tests;
