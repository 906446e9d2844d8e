//! `coded-sidecar bench`: experiments that measure, not tests.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::DataArgs;
use crate::bench::{echo, overhead};
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
    }
}

fn run_overhead(args: OverheadArgs) -> anyhow::Result<()> {
    let plan = ModelPlan {
        arch: Arch::Mlp,
        k: 2,
        encoder: EncoderKind::Sum,
        base_epochs: 10,
        parity_epochs: 40,
        seed: 0,
        cache: args.cache_dir.clone().unwrap_or_else(default_cache_dir),
    };
    let dirs = plan.ensure(&|| args.data.load())?;
    let card = crate::model::store::read_card(&dirs.base)?.0;
    let spec = ClusterSpec {
        k: 2,
        encoder: EncoderKind::Sum,
        policy: ReconstructPolicy::Eager,
        models: 2,
        parities: 1,
        host: "127.0.0.1".into(),
        port: 0,
        straggle_ms: 0,
        log: "warn".into(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
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
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("report: {}", args.out.display());
    Ok(())
}
