//! `coded-sidecar bench`: experiments that measure, not tests.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::DataArgs;
use crate::bench::load::LoadPlan;
use crate::bench::slowdown::SlowPlan;
use crate::bench::{echo, overhead, stragglers};
use crate::coding::EncoderKind;
use crate::frontend::ReconstructPolicy;
use crate::local::{Cluster, ClusterSpec, ModelPlan, default_cache_dir};
use crate::model::Arch;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The frontend's cost with nothing straggling: p50/p99 of a direct
    /// worker call, the same through the frontend (k = 2), and an echo
    /// server's round trip (one loopback HTTP hop), interleaved; then the
    /// throughput of each with concurrent clients.
    Overhead(OverheadArgs),
    /// Tail latency under injected stragglers at equal resources: coded
    /// k = 2 (eager and deadline) against least-loaded, hedged and
    /// replicated serving, each on three fresh worker processes, the same
    /// seeded Poisson load (latency from the intended send time) and the
    /// same seeded slow windows.
    Stragglers(StragglerArgs),
}

#[derive(Debug, Args)]
pub struct StragglerArgs {
    /// Mean requests per second (open loop, Poisson arrivals).
    #[arg(long, default_value_t = 300.0)]
    pub rate: f64,
    /// Seconds of load per configuration.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Chance that a worker is slow during a window.
    #[arg(long, default_value_t = 0.05)]
    pub slow_probability: f64,
    /// Delay added to a slow worker's answers, in ms.
    #[arg(long, default_value_t = 50)]
    pub slow_ms: u64,
    /// Length of a slow window, in ms.
    #[arg(long, default_value_t = 500)]
    pub window_ms: u64,
    /// Seed of the arrivals and the slow windows.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Add coded k = 2 eager with the watcher reading worker latency from a
    /// Prometheus (scraping every 500 ms) instead of the frontend's own
    /// windows; needs the `prometheus` binary.
    #[arg(long)]
    pub prometheus: bool,
    /// Run only the configurations whose names contain one of these
    /// (comma-separated), e.g. `eager,equal`.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// A short run (3 s per configuration) to check that everything works.
    #[arg(long)]
    pub quick: bool,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench/stragglers.json")]
    pub out: PathBuf,
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Debug, Args)]
pub struct OverheadArgs {
    /// Measured requests per target (after the warm-up).
    #[arg(long, default_value_t = 5000)]
    pub requests: usize,
    #[arg(long, default_value_t = 500)]
    pub warmup: usize,
    /// Closed-loop clients for the throughput runs.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench/overhead.json")]
    pub out: PathBuf,
    /// Trained models are kept here [default: ~/.cache/coded-serving/models].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Overhead(args) => run_overhead(args),
        BenchCommand::Stragglers(args) => run_stragglers(args),
    }
}

/// The models `local` serves (trained once, cached).
fn models(
    cache: Option<PathBuf>,
    data: &DataArgs,
) -> anyhow::Result<(crate::local::ModelDirs, crate::model::ModelCard)> {
    let plan = ModelPlan {
        arch: Arch::Mlp,
        k: 2,
        encoder: EncoderKind::Sum,
        base_epochs: 10,
        parity_epochs: 40,
        seed: 0,
        cache: cache.unwrap_or_else(default_cache_dir),
    };
    let dirs = plan.ensure(&|| data.load())?;
    let card = crate::model::store::read_card(&dirs.base)?.0;
    Ok((dirs, card))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn write_json(out: &std::path::Path, report: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, serde_json::to_string_pretty(report)?)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("report: {}", out.display());
    Ok(())
}

fn run_stragglers(args: StragglerArgs) -> anyhow::Result<()> {
    if args.prometheus && crate::local::prometheus::binary().is_none() {
        anyhow::bail!(
            "--prometheus needs the `prometheus` binary on the PATH (Debian: `apt-get install prometheus`)"
        );
    }
    let (dirs, card) = models(args.cache_dir.clone(), &args.data)?;
    let seconds = if args.quick { 3 } else { args.seconds };
    let load = LoadPlan {
        rate: args.rate,
        duration: Duration::from_secs(seconds),
        seed: args.seed,
    };
    let slow = SlowPlan {
        window: Duration::from_millis(args.window_ms.max(1)),
        probability: args.slow_probability,
        delay_ms: args.slow_ms,
        seed: args.seed,
    };
    let report = runtime()?.block_on(stragglers::run(
        &dirs,
        &card.name,
        &card.input.name,
        &card.input.shape,
        load,
        slow,
        args.prometheus,
        &args.only,
    ))?;
    println!("{}", stragglers::markdown(&report));
    write_json(&args.out, &report)
}

fn run_overhead(args: OverheadArgs) -> anyhow::Result<()> {
    let (dirs, card) = models(args.cache_dir.clone(), &args.data)?;
    let spec = ClusterSpec {
        k: 2,
        encoder: EncoderKind::Sum,
        dispatch: crate::frontend::DispatchMode::Coded,
        policy: ReconstructPolicy::Eager,
        models: 2,
        parities: 1,
        host: "127.0.0.1".into(),
        port: 0,
        straggle_ms: 0,
        log: "warn".into(),
        prometheus: None,
        frontend_args: Vec::new(),
    };
    let report = runtime()?.block_on(async {
        let cluster = Cluster::start(&dirs, &card.name, &spec).await?;
        let (echo_url, _echo) = echo::spawn().await?;
        let result = overhead::run(
            overhead::Endpoints {
                worker: &cluster.model_urls[0],
                frontend: &cluster.frontend_url,
                echo: &echo_url,
                model: &card.name,
                input: &card.input.name,
                shape: &card.input.shape,
            },
            &overhead::OverheadPlan {
                requests: args.requests,
                warmup: args.warmup,
                concurrency: args.concurrency,
                throughput_for: Duration::from_secs(args.seconds),
            },
        )
        .await;
        cluster.stop().await;
        result
    })?;
    println!("{}", overhead::markdown(&report));
    write_json(&args.out, &report)
}
