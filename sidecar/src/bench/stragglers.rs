//! The ParM experiment at equal resources: the same worker processes, the
//! same seeded open-loop load and the same seeded slow windows, served by
//! coded serving (k model instances' worth of groups plus parity) and by
//! the baselines a user would otherwise run (least-loaded, hedged,
//! replicated). Each configuration gets its own fresh processes.

use std::sync::Arc;

use serde::Serialize;
use tokio::time::Instant;

use super::latency::Summary;
use super::load::Requests;
use super::load::{self, LoadPlan};
use super::netns::{Namespaces, NetPlan};
use super::request::{call, call_with};
use super::slowdown::{self, SlowPlan};
use crate::local::prometheus::PrometheusSpec;
use crate::local::{Cluster, ClusterSpec, ModelDirs};
use crate::worker::ServiceTimeArgs;

/// Scrape interval of the Prometheus of the `--prometheus` configuration.
const PROMETHEUS_SCRAPE: std::time::Duration = std::time::Duration::from_millis(500);

mod config;

pub use config::{Config, configs};

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub config: Config,
    /// Offered load, requests per second.
    pub rate: f64,
    /// The same as a share of the equal-resources cluster's measured
    /// capacity, when the run was given `--loads`.
    pub load: Option<f64>,
    /// Seed of the load, the slow windows and the service times.
    pub seed: u64,
    pub latency: Summary,
    /// `(quantile, µs)` from the median to the maximum.
    pub tail: Vec<(f64, u64)>,
    pub throughput_rps: f64,
    pub sent: u64,
    pub errors: u64,
    pub reconstructed_share: f64,
    /// Share of the answers rebuilt while a usable model instance had no
    /// call in flight (`coded_frontend_reconstructions_while_idle_total`):
    /// approximations an exact answer could have replaced. Coded only.
    pub rebuilt_while_idle_share: Option<f64>,
    /// Share of the reconstructed answers whose class is the base model's
    /// (live degraded-mode accuracy relative to the base model).
    pub agreement: Option<f64>,
    /// p99.9 minus p50, the tail gap ParM reports.
    pub tail_gap_us: u64,
}

impl Row {
    /// Where it sits on the load axis: its share of capacity, or its rate.
    pub fn level(&self) -> f64 {
        self.load.unwrap_or(self.rate)
    }
}

/// Test images sent in turn, and the base model's class for each; empty:
/// one fixed input, no agreement measured.
#[derive(Debug, Clone, Default)]
pub struct Images {
    pub rows: Vec<Vec<f32>>,
    pub classes: Vec<usize>,
}

/// How stragglers are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SlowMode {
    /// A slow worker adds a delay to every answer (`/admin/delay`).
    Delay,
    /// A slow worker is paused with SIGSTOP for the window (SIGCONT after):
    /// nothing it holds moves, as in a GC pause or a descheduled VM.
    Sigstop,
    /// Real interference: each worker in its own network namespace behind
    /// a `tbf`-limited veth pair, with seeded background transfers between
    /// random pairs of instances (needs root).
    Network,
}

#[derive(Debug, Clone)]
pub struct Plan {
    /// Offered loads in requests per second, one run of every
    /// configuration each (unless `loads` is given).
    pub rates: Vec<f64>,
    /// Offered loads as shares of each k's equal-resources capacity,
    /// measured first (`capacity::measure`); empty: `rates`.
    pub loads: Vec<f64>,
    pub duration: std::time::Duration,
    /// Every configuration runs at every load once per seed, which seeds
    /// its arrivals, slow windows, background transfers and service times.
    pub seeds: Vec<u64>,
    pub slow: SlowPlan,
    pub mode: SlowMode,
    /// Links and background transfers of `SlowMode::Network`.
    pub net: NetPlan,
    /// Group sizes: each k runs coded k and its baselines.
    pub ks: Vec<usize>,
    /// Adds the configuration with the Prometheus-driven watcher.
    pub prometheus: bool,
    /// Only configurations whose names contain one of these.
    pub only: Vec<String>,
    /// The workers' emulated service time (off: the model's own compute).
    pub service_time: ServiceTimeArgs,
    /// The workers' `--max-batch-size`.
    pub worker_max_batch_size: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Requests per second, when the run was given rates.
    pub rates: Vec<f64>,
    /// Shares of capacity, when the run was given `--loads`.
    pub loads: Vec<f64>,
    /// Each k's equal-resources capacity, requests per second (`--loads`).
    pub capacity_rps: std::collections::BTreeMap<usize, f64>,
    pub ks: Vec<usize>,
    pub seconds: f64,
    pub mode: SlowMode,
    pub slow_probability: f64,
    pub slow_delay_ms: u64,
    pub window_ms: u64,
    pub seeds: Vec<u64>,
    /// CPU model and count of the machine it ran on.
    pub machine: String,
    /// What a worker's batch costs: the model's own compute, or an
    /// emulated accelerator's drawn service time.
    pub workers: String,
    pub service_time: ServiceTimeArgs,
    pub worker_max_batch_size: usize,
    pub rows: Vec<Row>,
}

impl Report {
    /// The load axis: shares of capacity, or rates.
    pub fn levels(&self) -> &[f64] {
        if self.loads.is_empty() {
            &self.rates
        } else {
            &self.loads
        }
    }

    /// How a level reads in a table's heading.
    pub fn level_label(&self, level: f64) -> String {
        if self.loads.is_empty() {
            format!("{level} req/s")
        } else {
            format!("{:.0}% of each k's equal-resources capacity", level * 100.0)
        }
    }
}

/// The models of each k: one base model, a parity model per k.
pub type Models = std::collections::BTreeMap<usize, ModelDirs>;

pub async fn run(
    models: &Models,
    name: &str,
    input: &str,
    shape: &[usize],
    images: &Images,
    plan: &Plan,
) -> anyhow::Result<Report> {
    crate::tls::init();
    let http = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let chosen: Vec<Config> = configs(&plan.ks, plan.prometheus)
        .into_iter()
        .filter(|c| c.chosen(&plan.only))
        .collect();
    if chosen.is_empty() {
        anyhow::bail!("--only {:?} matches no configuration", plan.only);
    }
    let dirs_of = |k: usize| {
        models
            .get(&k)
            .ok_or_else(|| anyhow::anyhow!("no parity model for k = {k}"))
    };
    // Each k's loads as (share of capacity, requests per second).
    let mut capacity_rps = std::collections::BTreeMap::new();
    let mut levels = std::collections::BTreeMap::new();
    for config in &chosen {
        if levels.contains_key(&config.k) {
            continue;
        }
        let k_levels: Vec<(Option<f64>, f64)> = if plan.loads.is_empty() {
            plan.rates.iter().map(|&r| (None, r)).collect()
        } else {
            let model = (name, input, shape);
            let cap =
                super::capacity::measure(dirs_of(config.k)?, model, &http, config.k, plan).await?;
            capacity_rps.insert(config.k, cap);
            plan.loads.iter().map(|&l| (Some(l), l * cap)).collect()
        };
        levels.insert(config.k, k_levels);
    }
    let mut rows = Vec::new();
    for &seed in &plan.seeds {
        for level in 0..plan.loads.len().max(plan.rates.len()) {
            for config in &chosen {
                let Some(&(load, rate)) = levels.get(&config.k).and_then(|l| l.get(level)) else {
                    continue;
                };
                let load_plan = LoadPlan {
                    rate,
                    duration: plan.duration,
                    seed,
                };
                let run = (config.clone(), load_plan, seed);
                let dirs = dirs_of(config.k)?;
                let mut row = run_one(dirs, (name, input, shape), images, &http, run, plan).await?;
                row.load = load;
                rows.push(row);
            }
        }
    }
    Ok(Report {
        rates: if plan.loads.is_empty() {
            plan.rates.clone()
        } else {
            Vec::new()
        },
        loads: plan.loads.clone(),
        capacity_rps,
        ks: plan.ks.clone(),
        seconds: plan.duration.as_secs_f64(),
        mode: plan.mode,
        slow_probability: plan.slow.probability,
        slow_delay_ms: plan.slow.delay_ms,
        window_ms: plan.slow.window.as_millis() as u64,
        seeds: plan.seeds.clone(),
        machine: machine(),
        workers: plan.service_time.describe(),
        service_time: plan.service_time,
        worker_max_batch_size: plan.worker_max_batch_size,
        rows,
    })
}

/// The processes of one configuration, on loopback (network mode adds
/// each worker's namespace).
pub(super) fn cluster_spec(config: &Config, plan: &Plan, seed: u64) -> ClusterSpec {
    ClusterSpec {
        k: config.k,
        encoder: crate::coding::EncoderKind::Sum,
        policy: config.policy,
        dispatch: config.dispatch,
        models: config.models,
        parities: config.parities,
        host: "127.0.0.1".into(),
        port: 0,
        straggle_ms: 0,
        log: "error".into(),
        prometheus: config.prometheus.then_some(PrometheusSpec {
            port: 0,
            interval: PROMETHEUS_SCRAPE,
        }),
        worker_netns: Vec::new(),
        frontend_args: {
            // Every query's latency is measured: a frontend shedding by
            // queueing delay would turn the slowest into 503s that no
            // percentile sees (measured: coded k=2 under SIGSTOP at 0.8 of
            // capacity refused 18-23% of its queries). Overload has its own
            // bench (`bench overload`).
            let mut args = vec!["--shed-queue-delay-ms".to_string(), "off".to_string()];
            if let Some(n) = config.berrut_n {
                args.extend(["--code", "berrut", "--n", &n.to_string()].map(String::from));
            }
            if config.prometheus {
                args.extend(
                    [
                        "--prometheus-interval-ms",
                        "500",
                        "--prometheus-window",
                        "5s",
                    ]
                    .map(String::from),
                );
            }
            args
        },
        worker_args: vec![
            "--max-batch-size".into(),
            plan.worker_max_batch_size.to_string(),
        ],
        // A run's seed changes the draws too (each worker adds its index).
        service_time: ServiceTimeArgs {
            service_time_seed: plan
                .service_time
                .service_time_seed
                .wrapping_add(seed.wrapping_mul(1_000)),
            ..plan.service_time
        },
    }
}

/// One configuration at one load, on fresh processes.
async fn run_one(
    dirs: &ModelDirs,
    (name, input, shape): (&str, &str, &[usize]),
    images: &Images,
    http: &reqwest::Client,
    (config, load_plan, seed): (Config, LoadPlan, u64),
    plan: &Plan,
) -> anyhow::Result<Row> {
    let slow = SlowPlan { seed, ..plan.slow };
    let net = NetPlan { seed, ..plan.net };
    let spec = cluster_spec(&config, plan, seed);
    let namespaces = match plan.mode {
        SlowMode::Network => Some(Namespaces::create(config.workers(), plan.net.rate_mbit)?),
        _ => None,
    };
    let spec = ClusterSpec {
        worker_netns: namespaces
            .iter()
            .flat_map(|ns| (0..ns.len()).map(|i| (ns.name(i).to_owned(), ns.addr(i).to_string())))
            .collect(),
        ..spec
    };
    let cluster = Cluster::start(dirs, name, &spec).await?;
    // Slow windows hit every worker process, parity ones included.
    let workers: Vec<String> = cluster
        .model_urls
        .iter()
        .chain(&cluster.parity_urls)
        .cloned()
        .collect();
    let pids: Vec<Option<nix::unistd::Pid>> = cluster
        .children
        .iter()
        .filter(|c| c.name != "frontend")
        .map(|c| c.pid())
        .collect();
    let schedule = slowdown::schedule(&slow, workers.len(), load_plan.duration);
    let url = &cluster.frontend_url;
    let requests = Arc::new(if images.rows.is_empty() {
        Requests {
            calls: vec![call(url, name, input, shape)],
            classes: Vec::new(),
        }
    } else {
        Requests {
            calls: images
                .rows
                .iter()
                .map(|row| call_with(url, name, input, shape, row.clone()))
                .collect(),
            classes: images.classes.clone(),
        }
    });
    // Warm up the frontend's latency windows before the clock starts.
    for i in 0..200 {
        let _ = super::request::send_infer(http, &requests.calls[i % requests.calls.len()]).await;
    }
    let idle_before = rebuilt_while_idle(http, url).await;
    let start = Instant::now();
    let label = format!("{} @ {:.0} req/s, seed {seed}", config.name, load_plan.rate);
    let load = load::run(http, requests, &load_plan, &label);
    let (result, background_bytes) = match (plan.mode, &namespaces) {
        (SlowMode::Network, Some(ns)) => {
            let (result, sent) = tokio::join!(load, ns.interfere(net, load_plan.duration, start));
            (result, sent.unwrap_or(0))
        }
        (SlowMode::Sigstop, _) => {
            let injector = tokio::spawn(slowdown::pause(pids, schedule, slow.window, start));
            let result = load.await;
            let _ = injector.await;
            (result, 0)
        }
        _ => {
            let injector = tokio::spawn(slowdown::apply(
                http.clone(),
                workers,
                schedule,
                slow.window,
                start,
            ));
            let result = load.await;
            let _ = injector.await;
            (result, 0)
        }
    };
    let idle_after = rebuilt_while_idle(http, url)
        .await
        .filter(|_| !config.is_baseline());
    cluster.stop().await;
    drop(namespaces);
    let latency = result.latency.summary();
    let answered = result.sent - result.errors;
    eprintln!(
        "{label}: p50 {} µs, p99.9 {} µs, {} errors{}",
        latency.p50_us,
        latency.p999_us,
        result.errors,
        if background_bytes > 0 {
            format!(
                ", {} MB of background transfers",
                background_bytes / 1_000_000
            )
        } else {
            String::new()
        }
    );
    Ok(Row {
        config,
        rate: load_plan.rate,
        load: None,
        seed,
        tail: result.latency.tail(),
        throughput_rps: answered as f64 / result.wall.as_secs_f64(),
        sent: result.sent,
        errors: result.errors,
        reconstructed_share: result.reconstructed as f64 / answered.max(1) as f64,
        rebuilt_while_idle_share: idle_before
            .zip(idle_after)
            .map(|(b, a)| (a - b).max(0.0) / answered.max(1) as f64),
        agreement: (result.rebuilt_checked > 0)
            .then(|| result.rebuilt_agree as f64 / result.rebuilt_checked as f64),
        tail_gap_us: latency.p999_us.saturating_sub(latency.p50_us),
        latency,
    })
}

/// The frontend's count of answers rebuilt while a usable model instance
/// was idle; None where it has none (a baseline) or did not answer.
async fn rebuilt_while_idle(http: &reqwest::Client, frontend: &str) -> Option<f64> {
    const NAME: &str = "coded_frontend_reconstructions_while_idle_total";
    let text = http
        .get(format!("{frontend}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| l.starts_with(NAME))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// "<CPU model> × <logical CPUs>", from /proc/cpuinfo where there is one.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_owned());
    format!("{model} × {cpus}")
}

/// The report as markdown tables, one per load, with the tail gap relative
/// to `equal-resources` on as many workers at the same load.
pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "workers: {}{}, batches of up to {}; machine: {}; seeds {:?}; {} s per configuration\n",
        if r.service_time.service_time_ms > 0.0 {
            "emulated accelerators, "
        } else {
            ""
        },
        r.workers,
        r.worker_max_batch_size,
        r.machine,
        r.seeds,
        r.seconds
    );
    if !r.capacity_rps.is_empty() {
        let caps: Vec<String> = r
            .capacity_rps
            .iter()
            .map(|(k, c)| format!("k={k} {c:.0} req/s"))
            .collect();
        s.push_str(&format!(
            "equal-resources capacity (measured): {}\n",
            caps.join(", ")
        ));
    }
    if r.seeds.len() > 1 {
        s.push_str(&super::spread::markdown(r, &super::spread::summarise(r)));
        return s;
    }
    for &level in r.levels() {
        let rows: Vec<&Row> = r.rows.iter().filter(|row| row.level() == level).collect();
        let base = |k: usize| {
            rows.iter()
                .find(|row| row.config.k == k && row.config.is_baseline())
                .map(|row| row.tail_gap_us.max(1) as f64)
        };
        if r.levels().len() > 1 {
            s.push_str(&format!("\n{}:\n\n", r.level_label(level)));
        }
        s.push_str(
            "| configuration | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | offered req/s | req/s | errors | rebuilt | rebuilt, an instance idle | rebuilt = base model | p99.9 − p50 vs equal-resources |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for row in &rows {
            let l = &row.latency;
            let ratio = base(row.config.k)
                .map(|b| format!("{:.2}×", row.tail_gap_us as f64 / b))
                .unwrap_or_default();
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} | {:.1}% | {} | {} | {ratio} |\n",
                row.config.name,
                l.p50_us,
                l.p90_us,
                l.p99_us,
                l.p999_us,
                l.max_us,
                row.rate,
                row.throughput_rps,
                row.errors,
                row.reconstructed_share * 100.0,
                row.rebuilt_while_idle_share
                    .map(|s| format!("{:.1}%", s * 100.0))
                    .unwrap_or_default(),
                row.agreement
                    .map(|a| format!("{:.1}%", a * 100.0))
                    .unwrap_or_default()
            ));
        }
    }
    s
}
