//! `coded-sidecar bench chaos`: the flags and the run.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::DataArgs;
use super::bench::{MAX_K, models, runtime, write_json};
use crate::bench::chaos;
use crate::coding::EncoderKind;
use crate::frontend::ReconstructPolicy;
use crate::local::{Cluster, ClusterSpec};

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Seconds of load (faults start after 3 s and end 3 s before it does).
    #[arg(long, default_value_t = 80)]
    pub seconds: u64,
    /// A long soak: 30 minutes of load unless --seconds says otherwise.
    #[arg(long)]
    pub soak: bool,
    /// Seed of the arrivals and of the faults.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Mean queries per second (Poisson arrivals, one image a request).
    #[arg(long, default_value_t = 150.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 45.0)]
    pub faults_per_minute: f64,
    /// Chance that a fault hits two workers at once.
    #[arg(long, default_value_t = 0.3)]
    pub two_at_once: f64,
    /// Longest a fault holds (a pause, or a killed worker's downtime), in ms.
    #[arg(long, default_value_t = 1500)]
    pub max_hold_ms: u64,
    /// The frontend's request deadline (`frontend --timeout-ms`).
    #[arg(long, default_value_t = 2000)]
    pub deadline_ms: u64,
    /// How long past the deadline an answer may come before its query
    /// counts as hung.
    #[arg(long, default_value_t = 5000)]
    pub slack_ms: u64,
    /// Queries per coding group.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Model worker processes [default: k + 1, so that two at once can
    /// hit two of a group's slots and leave one instance].
    #[arg(long)]
    pub models: Option<usize>,
    /// Test images sent in turn.
    #[arg(long, default_value_t = 1000)]
    pub images: usize,
    /// Use this base model directory instead of training (or the cache).
    #[arg(long, requires = "parity_model")]
    pub base_model: Option<PathBuf>,
    /// Use this parity model directory (k = --k) instead of training.
    #[arg(long, requires = "base_model")]
    pub parity_model: Option<PathBuf>,
    /// Base model training epochs (when not cached): the run checks
    /// answers against the model, not its accuracy, so 1 will do.
    #[arg(long, default_value_t = 1)]
    pub base_epochs: usize,
    #[arg(long, default_value_t = 2)]
    pub parity_epochs: usize,
    /// Trained models are kept here [default: ~/.cache/coded-serving/models].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Log level of the workers and the frontend (RUST_LOG overrides it).
    #[arg(long, default_value = "error")]
    pub child_log: String,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/bench/chaos.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
}

pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    if !(2..=MAX_K).contains(&args.k) {
        anyhow::bail!("--k must be from 2 to {MAX_K}");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        anyhow::bail!("--rate must be a positive number");
    }
    let model_workers = args.models.unwrap_or(args.k + 1);
    if model_workers == 0 {
        anyhow::bail!("--models must be at least 1");
    }
    let seconds = match (args.soak, args.seconds) {
        (true, 80) => 30 * 60,
        (_, s) => s,
    };
    let (dirs, card) = match (&args.base_model, &args.parity_model) {
        (Some(base), Some(parity)) => {
            let card = crate::model::store::read_card(base)
                .with_context(|| format!("reading {}", base.display()))?
                .0;
            let dirs = crate::local::ModelDirs {
                base: base.clone(),
                parity: vec![parity.clone()],
            };
            (dirs, card)
        }
        _ => models(
            args.cache_dir.clone(),
            &args.data,
            args.k,
            (args.base_epochs, args.parity_epochs),
        )?,
    };
    let references = reference_outputs(&dirs.base, &args.data, args.images.max(1))?;
    let plan = chaos::ChaosPlan {
        duration: Duration::from_secs(seconds),
        rate: args.rate,
        seed: args.seed,
        faults_per_minute: args.faults_per_minute,
        two_at_once: args.two_at_once,
        deadline: Duration::from_millis(args.deadline_ms.max(1)),
        slack: Duration::from_millis(args.slack_ms),
        warmup: Duration::from_secs(3),
        cooldown: Duration::from_secs(3),
        max_hold: Duration::from_millis(args.max_hold_ms.max(1)),
    };
    let spec = ClusterSpec {
        k: args.k,
        encoder: EncoderKind::Sum,
        policy: ReconstructPolicy::Eager,
        dispatch: crate::frontend::DispatchMode::Coded,
        models: model_workers,
        parities: 1,
        host: "127.0.0.1".into(),
        port: 0,
        straggle_ms: 0,
        log: args.child_log.clone(),
        prometheus: None,
        frontend_args: vec!["--timeout-ms".into(), args.deadline_ms.max(1).to_string()],
        worker_args: Vec::new(),
        service_time: crate::worker::ServiceTimeArgs::default(),
        worker_netns: Vec::new(),
    };
    let report = runtime()?.block_on(async {
        let mut cluster = Cluster::start(&dirs, &card.name, &spec).await?;
        let report = chaos::run(
            &mut cluster,
            &card.name,
            &card.input.name,
            &card.input.shape,
            std::sync::Arc::new(references),
            &plan,
        )
        .await;
        cluster.stop().await;
        report
    })?;
    print!("{}", chaos::table(&report));
    write_json(&args.out, &report)?;
    if !report.violations.is_empty() {
        anyhow::bail!("chaos invariants failed: {}", report.violations.join("; "));
    }
    Ok(())
}

/// The first `n` Fashion-MNIST test images and the base model's output
/// (logits) for each, computed in this process.
fn reference_outputs(
    base: &std::path::Path,
    data: &DataArgs,
    n: usize,
) -> anyhow::Result<chaos::References> {
    let test = data.load()?.test.take(n).context("taking test images")?;
    let placement = crate::model::Placement::f32(candle_core::Device::Cpu);
    let base = crate::model::load(base, &placement).context("loading the base model")?;
    let logits = base
        .network
        .forward(&test.images)
        .context("the base model's answers")?;
    let rows = logits.dim(0)?;
    let flat: Vec<f32> = logits.flatten_all()?.to_vec1()?;
    let outputs = flat
        .chunks(flat.len() / rows.max(1))
        .map(<[f32]>::to_vec)
        .collect();
    let images: Vec<f32> = test.images.flatten_all()?.to_vec1()?;
    let per_image = images.len() / test.len().max(1);
    Ok(chaos::References {
        rows: images
            .chunks(per_image.max(1))
            .map(<[f32]>::to_vec)
            .collect(),
        outputs,
    })
}
