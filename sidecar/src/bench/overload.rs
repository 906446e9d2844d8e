//! `bench overload`: does the frontend survive an overload? On a `local`
//! topology (real worker and frontend processes, workers as emulated
//! accelerators so that they, not this machine's cores, saturate), it
//! measures the frontend's capacity (closed-loop clients), the unloaded
//! latency (open-loop Poisson load at a share of capacity), then offers
//! open-loop Poisson load at a multiple of capacity and reports what was
//! answered, refused (by the limit that refused it) or failed, the
//! admitted requests' latency against the unloaded p99, and the
//! frontend's RSS sampled every second, with a verdict per target.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use super::chaos::rss_kb;
use super::latency::Summary;
use super::load::{self, LoadPlan, LoadResult, Requests, closed_loop};
use super::request::{Caller, call, send};
use crate::local::Cluster;

#[derive(Debug, Clone)]
pub struct OverloadPlan {
    /// The overload, as a multiple of the measured capacity.
    pub factor: f64,
    pub duration: Duration,
    pub seed: u64,
    /// The unloaded run's load, as a share of capacity, and its length.
    pub unloaded_share: f64,
    pub unloaded_for: Duration,
    /// Closed-loop clients and time of the capacity measurement.
    pub clients: usize,
    pub capacity_for: Duration,
    /// The client's timeout: a request unanswered by then is a timeout.
    pub timeout: Duration,
    /// How long after the overload the end RSS is read.
    pub settle: Duration,
    /// RSS is flat when the end is at most this above the start...
    pub rss_slack_mib: f64,
    /// ...and the least-squares trend of the second half of the overload
    /// grows it by at most this over that half.
    pub rss_trend_mib: f64,
}

/// One open-loop run.
#[derive(Debug, Default, Serialize)]
pub struct Phase {
    /// Offered requests per second and for how long.
    pub rate: f64,
    pub seconds: f64,
    pub offered: u64,
    pub answered: u64,
    pub answered_rps: f64,
    /// Load shed (503 + Retry-After), by the limit that shed it.
    pub refused: BTreeMap<String, u64>,
    pub refused_total: u64,
    /// No answer within the client's timeout.
    pub timeouts: u64,
    /// Any other failure (an admitted request not answered).
    pub errors: u64,
    /// Latency of the answered, from the intended send time.
    pub latency: Summary,
}

impl Phase {
    fn of(rate: f64, duration: Duration, r: &LoadResult) -> Phase {
        let refused_total = r.refused.values().sum();
        let answered = r.sent - r.errors;
        Phase {
            rate,
            seconds: duration.as_secs_f64(),
            offered: r.sent,
            answered,
            answered_rps: answered as f64 / r.wall.as_secs_f64().max(1e-9),
            refused: r.refused.clone(),
            refused_total,
            timeouts: r.timeouts,
            errors: r.errors - refused_total - r.timeouts,
            latency: r.latency.summary(),
        }
    }
}

/// The frontend's resident memory during the overload.
#[derive(Debug, Default, Serialize)]
pub struct Rss {
    /// Right before the overload.
    pub start_kb: u64,
    pub peak_kb: u64,
    /// `settle` after the overload.
    pub end_kb: u64,
    /// (seconds from the start of the overload, kB), every second.
    pub samples: Vec<(f64, u64)>,
    /// Growth over the second half of the overload by its least-squares
    /// trend, in kB (negative: shrinking).
    pub second_half_trend_kb: f64,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    pub target: String,
    pub holds: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct OverloadReport {
    pub seed: u64,
    pub factor: f64,
    pub machine: String,
    /// /proc/loadavg at the start: what else was running.
    pub loadavg: String,
    /// The topology and the workers' service time.
    pub topology: String,
    /// The frontend's flags beyond the defaults.
    pub frontend_args: Vec<String>,
    pub capacity_rps: f64,
    pub unloaded: Phase,
    pub overload: Phase,
    /// Overload p99 / unloaded p99.
    pub p99_ratio: f64,
    /// Answered per second under overload / capacity.
    pub goodput_share: f64,
    /// The frontend's own count of refusals during the overload, by reason
    /// (`*_requests_refused_total`).
    pub server_refused: BTreeMap<String, u64>,
    pub rss: Rss,
    pub verdicts: Vec<Verdict>,
    pub wall_seconds: f64,
}

/// What the report says about the cluster it ran on.
pub struct Setup<'a> {
    pub model: &'a str,
    pub input: &'a str,
    pub shape: &'a [usize],
    pub topology: String,
    pub frontend_args: Vec<String>,
}

/// Runs the plan against `cluster` (started, nothing else sending).
pub async fn run(
    cluster: &Cluster,
    setup: &Setup<'_>,
    plan: &OverloadPlan,
) -> anyhow::Result<OverloadReport> {
    let started = std::time::Instant::now();
    let loadavg = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.trim().to_owned())
        .unwrap_or_default();
    let pid = cluster
        .frontend()
        .and_then(|f| f.pid())
        .context("the frontend is not running")?
        .as_raw();
    let http = reqwest::Client::builder().timeout(plan.timeout).build()?;
    let url = cluster.frontend_url.clone();
    let one = call(&url, setup.model, setup.input, setup.shape);
    for _ in 0..200 {
        send(&http, &one).await.context("warming up the frontend")?;
    }
    let requests = Arc::new(Requests {
        calls: vec![one],
        classes: Vec::new(),
    });
    let caller = Caller::Http(Arc::new(call(&url, setup.model, setup.input, setup.shape)));
    let (capacity, answered) = closed_loop(&http, &caller, plan.clients, plan.capacity_for).await?;
    anyhow::ensure!(
        answered > 0,
        "the frontend answered nothing in {:?}",
        plan.capacity_for
    );
    eprintln!("capacity: {capacity:.0} req/s");

    let unloaded_plan = LoadPlan {
        rate: capacity * plan.unloaded_share,
        duration: plan.unloaded_for,
        seed: plan.seed,
    };
    let unloaded = load::run(&http, requests.clone(), &unloaded_plan, "unloaded").await;
    let unloaded = Phase::of(unloaded_plan.rate, plan.unloaded_for, &unloaded);
    // The shedder's window: what the unloaded run taught it settles.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let refused_before = refused_counts(&http, &url).await;
    let samples: Arc<Mutex<Vec<(f64, u64)>>> = Arc::default();
    let start_kb = rss_kb(pid).unwrap_or(0);
    let sampler = tokio::spawn(sample_rss(pid, samples.clone()));
    let overload_plan = LoadPlan {
        rate: capacity * plan.factor,
        duration: plan.duration,
        seed: plan.seed.wrapping_add(1),
    };
    let overload = load::run(&http, requests, &overload_plan, "overload").await;
    tokio::time::sleep(plan.settle).await;
    sampler.abort();
    let end_kb = rss_kb(pid).unwrap_or(0);
    let refused_after = refused_counts(&http, &url).await;
    let overload = Phase::of(overload_plan.rate, plan.duration, &overload);

    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let rss = Rss {
        start_kb,
        peak_kb: samples
            .iter()
            .map(|s| s.1)
            .chain([start_kb, end_kb])
            .max()
            .unwrap_or(0),
        end_kb,
        second_half_trend_kb: trend(&samples, plan.duration),
        samples,
    };
    let server_refused = refused_after
        .into_iter()
        .map(|(k, v)| {
            let before = refused_before.get(&k).copied().unwrap_or(0);
            (k, v.saturating_sub(before))
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    let p99_ratio = overload.latency.p99_us as f64 / unloaded.latency.p99_us.max(1) as f64;
    let mut report = OverloadReport {
        seed: plan.seed,
        factor: plan.factor,
        machine: super::stragglers::machine(),
        loadavg,
        topology: setup.topology.clone(),
        frontend_args: setup.frontend_args.clone(),
        capacity_rps: capacity,
        goodput_share: overload.answered_rps / capacity,
        unloaded,
        overload,
        p99_ratio,
        server_refused,
        rss,
        verdicts: Vec::new(),
        wall_seconds: 0.0,
    };
    report.verdicts = verdicts(&report, plan);
    report.wall_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The RSS every second from now, as (seconds, kB).
async fn sample_rss(pid: i32, samples: Arc<Mutex<Vec<(f64, u64)>>>) {
    let start = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let (Some(kb), Ok(mut s)) = (rss_kb(pid), samples.lock()) {
            s.push((start.elapsed().as_secs_f64(), kb));
        }
    }
}

/// Growth over the second half of `duration` by the least-squares line
/// through the samples in it, in kB.
pub fn trend(samples: &[(f64, u64)], duration: Duration) -> f64 {
    let (from, to) = (duration.as_secs_f64() / 2.0, duration.as_secs_f64());
    let half: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(t, _)| (from..=to).contains(t))
        .map(|&(t, kb)| (t, kb as f64))
        .collect();
    let n = half.len() as f64;
    if half.len() < 2 {
        return 0.0;
    }
    let (mt, mk) = (
        half.iter().map(|p| p.0).sum::<f64>() / n,
        half.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let var: f64 = half.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if var == 0.0 {
        return 0.0;
    }
    let cov: f64 = half.iter().map(|p| (p.0 - mt) * (p.1 - mk)).sum();
    cov / var * (to - from)
}

/// `*_requests_refused_total{reason=...}` from the frontend's /metrics.
async fn refused_counts(http: &reqwest::Client, url: &str) -> BTreeMap<String, u64> {
    let Ok(response) = http.get(format!("{url}/metrics")).send().await else {
        return BTreeMap::new();
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("requests_refused_total{"))
        .filter_map(|l| {
            let reason = l.split("reason=\"").nth(1)?.split('"').next()?;
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((reason.to_owned(), n as u64))
        })
        .collect()
}

/// The targets of issue 18, each judged.
fn verdicts(r: &OverloadReport, plan: &OverloadPlan) -> Vec<Verdict> {
    let (u, o) = (&r.unloaded, &r.overload);
    let ms = |us: u64| us as f64 / 1e3;
    let latency = Verdict {
        target: "admitted p99 ≤ 2 × unloaded p99".into(),
        holds: o.answered > 0 && o.latency.p99_us <= 2 * u.latency.p99_us,
        detail: format!(
            "{:.1} ms against 2 × {:.1} ms ({:.2}×)",
            ms(o.latency.p99_us),
            ms(u.latency.p99_us),
            r.p99_ratio
        ),
    };
    let mib = |kb: f64| kb / 1024.0;
    let grew = r.rss.end_kb as f64 - r.rss.start_kb as f64;
    let memory = Verdict {
        target: format!(
            "RSS flat: end ≤ start + {} MiB, second-half trend ≤ {} MiB",
            plan.rss_slack_mib, plan.rss_trend_mib
        ),
        holds: r.rss.start_kb > 0
            && mib(grew) <= plan.rss_slack_mib
            && mib(r.rss.second_half_trend_kb) <= plan.rss_trend_mib,
        detail: format!(
            "{:.1} → {:.1} MiB (peak {:.1}), second-half trend {:+.1} MiB",
            mib(r.rss.start_kb as f64),
            mib(r.rss.end_kb as f64),
            mib(r.rss.peak_kb as f64),
            mib(r.rss.second_half_trend_kb)
        ),
    };
    let served = Verdict {
        target: "every admitted request answered".into(),
        holds: o.errors == 0 && o.timeouts == 0 && o.answered > 0,
        detail: format!(
            "{} answered, {} failed, {} timed out",
            o.answered, o.errors, o.timeouts
        ),
    };
    vec![latency, memory, served]
}

/// The report as tables, for the terminal.
pub fn table(r: &OverloadReport) -> String {
    let ms = |us: u64| us as f64 / 1e3;
    let refused = |p: &Phase| {
        if p.refused.is_empty() {
            "0".to_owned()
        } else {
            p.refused
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let row = |name: &str, p: &Phase| {
        format!(
            "| {name} | {:.0} | {} | {} ({:.0}/s) | {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            p.rate,
            p.offered,
            p.answered,
            p.answered_rps,
            refused(p),
            p.errors,
            p.timeouts,
            ms(p.latency.p50_us),
            ms(p.latency.p99_us),
            ms(p.latency.p999_us),
        )
    };
    let mut out = format!(
        "overload: seed {}, {} × capacity {:.0} req/s for {:.0} s; {}; frontend {}\nmachine: {} (load average {})\n\
         | run | offered req/s | offered | answered | refused | errors | timeouts | p50 ms | p99 ms | p99.9 ms |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        r.seed,
        r.factor,
        r.capacity_rps,
        r.overload.seconds,
        r.topology,
        if r.frontend_args.is_empty() {
            "defaults".to_owned()
        } else {
            r.frontend_args.join(" ")
        },
        r.machine,
        r.loadavg,
    );
    out += &row("unloaded", &r.unloaded);
    out += &row("overload", &r.overload);
    let server: Vec<String> = r
        .server_refused
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    out += &format!(
        "p99 ratio {:.2}; goodput {:.0}% of capacity; the frontend counted refusals: {}\n",
        r.p99_ratio,
        r.goodput_share * 100.0,
        if server.is_empty() {
            "none".to_owned()
        } else {
            server.join(", ")
        }
    );
    let rss: Vec<String> = r
        .rss
        .samples
        .iter()
        .map(|(_, kb)| format!("{:.0}", *kb as f64 / 1024.0))
        .collect();
    out += &format!("RSS every second (MiB): {}\n", rss.join(" "));
    for v in &r.verdicts {
        out += &format!(
            "{}: {} ({})\n",
            if v.holds { "HOLDS" } else { "FAILS" },
            v.target,
            v.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trend_is_the_second_half_growth() {
        let d = Duration::from_secs(10);
        // Flat at 100 MB after a first-half climb.
        let flat: Vec<(f64, u64)> = (0..=10)
            .map(|t| (t as f64, if t < 5 { 50_000 + t * 10_000 } else { 100_000 }))
            .collect();
        assert_eq!(trend(&flat, d), 0.0);
        // 1 MB a second in the second half: 5 MB over it.
        let growing: Vec<(f64, u64)> = (0..=10).map(|t| (t as f64, 100_000 + t * 1_000)).collect();
        assert!((trend(&growing, d) - 5_000.0).abs() < 1e-6);
        assert_eq!(trend(&[(6.0, 1)], d), 0.0, "too few samples");
    }
}
