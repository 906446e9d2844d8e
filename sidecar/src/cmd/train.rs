//! `coded-sidecar train base|parity|code`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};

use super::DataArgs;
use crate::coding::{Decoder, EncoderKind, LinearCode};
use crate::device::{DeviceArgs, Placement};
use crate::model::{Arch, ModelCard};
use crate::train::code::{CodeLoss, CodeRecipe, code_name, train_code};
use crate::train::parity::{default_groups_per_batch, parity_name};
use crate::train::{TrainOptions, train_base, train_parity};

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Train a base model (the model being served) on Fashion-MNIST labels.
    Base(BaseArgs),
    /// Train the parity models of a code (k, r, encoder) for a base model.
    Parity(ParityArgs),
    /// Train a learned code (Learning a Code, arXiv 1806.01259): an encoder
    /// network that turns k queries into r parity queries, which the base
    /// model itself serves (no parity model), and a decoder network that
    /// rebuilds lost outputs from the others and the parity outputs. The
    /// base model stays frozen; the gradients flow through it. Saved as a
    /// code card (card.json + model.safetensors) that `eval --code-card` scores
    /// and the frontend loads with `--code-card`.
    Code(CodeArgs),
}

#[derive(Debug, Args)]
pub struct Common {
    /// Passes over the training set; the best validation epoch is kept.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Seed for initialisation and shuffling: same seed, same weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Output directory for card.json and model.safetensors.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar and no per-epoch lines; just the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Training runs in f32 on this device (the dataset is copied to it once).
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Debug, Args)]
pub struct BaseArgs {
    #[arg(long, value_enum, default_value_t = Arch::Mlp)]
    pub arch: Arch,
    /// Images per optimiser step.
    #[arg(long, default_value_t = crate::train::base::BASE_BATCH)]
    pub batch_size: usize,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct ParityArgs {
    /// The base model's card (card.json or its directory).
    #[arg(long)]
    pub base: PathBuf,
    /// Queries per coding group.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Parities per group: r = 2 trains parity models 0 and 1 of the code
    /// (P_l = Σ_j c_lj X_j, learning Σ_j c_lj F(X_j); row 0 is all ones,
    /// the plain sum), one after the other. With r ≥ 2, parity l is saved
    /// in `<out>/<l>` (without --out:
    /// `models/<base>-parity-k<k>-<encoder>-r<r>-<l>`).
    #[arg(long, default_value_t = 1)]
    pub r: usize,
    /// Train only this parity of the code (0..r).
    #[arg(long)]
    pub parity_index: Option<usize>,
    #[arg(long, value_enum, default_value_t = EncoderKind::Sum)]
    pub encoder: EncoderKind,
    /// Coding groups per optimiser step [default: 64 for k = 2, 32 for k ≥ 3].
    #[arg(long)]
    pub groups_per_batch: Option<usize>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct CodeArgs {
    /// The base model's card (card.json or its directory).
    #[arg(long)]
    pub base: PathBuf,
    /// Queries per coding group.
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Parity queries per group (the decoder is trained for every pattern
    /// of up to r lost outputs).
    #[arg(long, default_value_t = 1)]
    pub r: usize,
    /// The encoder network: `mlp` (k·d → k·d → r·d) or `conv` (dilated
    /// convolutions over the k images as channels; slow on a CPU).
    #[arg(long, value_enum, default_value_t = EncoderKind::Mlp)]
    pub encoder: EncoderKind,
    /// The decoder network: `mlp` ((k+r)·o → (k+r)·o → k·o → k·o).
    #[arg(long, value_enum, default_value_t = Decoder::Mlp)]
    pub decoder: Decoder,
    /// What the rebuilt outputs are trained towards: `xent`, the true labels
    /// (best degraded accuracy), or `mse`, the base model's logits.
    #[arg(long, value_enum, default_value_t = CodeLoss::Xent)]
    pub loss: CodeLoss,
    /// Coding groups per optimiser step [default: 64 for k = 2, 32 for k ≥ 3].
    #[arg(long)]
    pub groups_per_batch: Option<usize>,
    #[command(flatten)]
    pub common: Common,
}

/// Default epochs: the papers' curves are nearly flat after ~100 (parity).
const BASE_EPOCHS: usize = 30;
const PARITY_EPOCHS: usize = 100;
/// Learned codes: the encoder and decoder learn fast (see docs/accuracy.md).
const CODE_EPOCHS: usize = 30;

impl Common {
    fn options(&self, default_epochs: usize) -> TrainOptions {
        TrainOptions {
            epochs: self.epochs.unwrap_or(default_epochs),
            seed: self.seed,
            limit: self.limit,
            quiet: self.quiet,
        }
    }
}

pub fn run(cmd: TrainCommand) -> anyhow::Result<()> {
    match cmd {
        TrainCommand::Base(args) => {
            let device = args.common.device.open()?;
            let data = args.common.data.load()?.to_device(&device)?;
            let out = args
                .common
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(format!("models/fashion-{}", args.arch)));
            let opts = args.common.options(BASE_EPOCHS);
            let done = train_base(&data, args.arch, args.batch_size, &opts, &out)
                .with_context(|| format!("training a {} base model", args.arch))?;
            summary(&done.card, &done.card_path);
        }
        TrainCommand::Parity(args) => {
            if args.k < crate::coding::MIN_K {
                anyhow::bail!("--k {} is not a code: k must be at least 2", args.k);
            }
            let code = LinearCode::new(args.k, args.r)?;
            let indexes: Vec<usize> = match args.parity_index {
                Some(l) if l >= args.r => anyhow::bail!(
                    "--parity-index {l} is not a parity of r = {}: it is 0..{}",
                    args.r,
                    args.r - 1
                ),
                Some(l) => vec![l],
                None => (0..args.r).collect(),
            };
            // Refused before anything loads.
            if args.encoder.is_learned() {
                return Err(crate::coding::CodingError::LearnedEncoder(args.encoder).into());
            }
            if args.encoder == EncoderKind::Concat && args.r > 1 {
                return Err(crate::coding::CodingError::ConcatParities(args.r).into());
            }
            let device = args.common.device.open()?;
            let base = crate::model::load(&args.base, &Placement::f32(device.clone()))
                .with_context(|| format!("loading the base model {}", args.base.display()))?;
            let data = args.common.data.load()?.to_device(&device)?;
            let opts = args.common.options(PARITY_EPOCHS);
            let gpb = args
                .groups_per_batch
                .unwrap_or_else(|| default_groups_per_batch(args.k));
            for l in indexes {
                let out = match (&args.common.out, args.r) {
                    (Some(out), 1) => out.clone(),
                    (Some(out), _) => out.join(l.to_string()),
                    (None, _) => PathBuf::from("models").join(parity_name(
                        &base.card.name,
                        &code,
                        args.encoder,
                        l,
                    )),
                };
                let done = train_parity(&data, &base, &code, l, args.encoder, gpb, &opts, &out)
                    .with_context(|| {
                        format!(
                            "training parity model {l} (k = {}, r = {}, {})",
                            args.k, args.r, args.encoder
                        )
                    })?;
                summary(&done.card, &done.card_path);
            }
        }
        TrainCommand::Code(args) => {
            if args.k < crate::coding::MIN_K || args.r == 0 || args.r > args.k {
                anyhow::bail!(
                    "--k {} --r {} is not a code: k ≥ 2 and 1 ≤ r ≤ k",
                    args.k,
                    args.r
                );
            }
            if !args.encoder.is_learned() || args.decoder != Decoder::Mlp {
                anyhow::bail!(
                    "train code trains learned networks: --encoder mlp|conv and --decoder mlp, not {} and {} (hand-written codes need `train parity`)",
                    args.encoder,
                    args.decoder
                );
            }
            let device = args.common.device.open()?;
            let base = crate::model::load(&args.base, &Placement::f32(device.clone()))
                .with_context(|| format!("loading the base model {}", args.base.display()))?;
            let data = args.common.data.load()?.to_device(&device)?;
            let opts = args.common.options(CODE_EPOCHS);
            let recipe = CodeRecipe {
                k: args.k,
                r: args.r,
                encoder: args.encoder,
                decoder: args.decoder,
                loss: args.loss,
                groups_per_batch: args
                    .groups_per_batch
                    .unwrap_or_else(|| default_groups_per_batch(args.k)),
            };
            let out = args.common.out.clone().unwrap_or_else(|| {
                PathBuf::from("models").join(code_name(&base.card.name, &recipe))
            });
            let done = train_code(&data, &base, &recipe, &opts, &out).with_context(|| {
                format!(
                    "training a learned code (k = {}, r = {}, {} encoder, {} decoder)",
                    args.k, args.r, args.encoder, args.decoder
                )
            })?;
            summary(&done.card, &done.card_path);
        }
    }
    Ok(())
}

fn summary(card: &ModelCard, path: &Path) {
    let Some(t) = &card.training else { return };
    let score = if card.is_code() {
        format!(
            "validation degraded accuracy ({} loss's pick) {:.2}%",
            t.loss.as_deref().unwrap_or("?"),
            t.validation_accuracy * 100.0
        )
    } else if card.is_parity() {
        format!(
            "validation reconstruction accuracy {:.2}%",
            t.validation_accuracy * 100.0
        )
    } else {
        format!(
            "validation accuracy {:.2}%, test accuracy {:.2}%",
            t.validation_accuracy * 100.0,
            t.test_accuracy.unwrap_or(f64::NAN) * 100.0
        )
    };
    println!(
        "trained {} ({} parameters): best epoch {}/{}, {score}; {:.1} s, {:.0} images/s; saved {}",
        card.name,
        card.weights.parameters,
        t.best_epoch,
        t.epochs,
        t.wall_seconds,
        t.images_per_second,
        path.display()
    );
}
