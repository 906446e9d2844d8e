//! Training a learned code (Learning a Code): the encoder E and decoder D
//! networks, with the base model F frozen and the gradients flowing through
//! it. Each group's k queries are encoded into r parity queries, F runs on
//! them, and D rebuilds the outputs under every erasure pattern of 1..=r of
//! the k model outputs (the reference trains on every single erasure of
//! each group at once); the loss is taken on the rebuilt outputs only.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{D, Tensor};

use super::{Progress, Snapshot, TrainError, TrainOptions, adam, optimiser_step, shuffled};
use crate::coding::{Decoder, EncoderKind, LearnedSpec, erasure_patterns};
use crate::data::FashionMnist;
use crate::eval::learned::{decode_all, degraded_accuracy_learned};
use crate::eval::{EVAL_BATCH, grouping};
use crate::model::card::Training;
use crate::model::{Model, ModelCard, Role};

/// What the rebuilt outputs are pulled towards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CodeLoss {
    /// Squared error to the base model's logits, summed over classes (the
    /// reference's `mse-base`): the decoder learns to stand in for F.
    Mse,
    /// Cross-entropy against the true labels (the reference's
    /// `xent-label`): the decoder learns to be right, not to copy F.
    Xent,
}

impl CodeLoss {
    fn name(self) -> &'static str {
        match self {
            CodeLoss::Mse => "mse",
            CodeLoss::Xent => "xent",
        }
    }
}

/// A learned code to train.
#[derive(Debug, Clone, Copy)]
pub struct CodeRecipe {
    pub k: usize,
    pub r: usize,
    pub encoder: EncoderKind,
    pub decoder: Decoder,
    pub loss: CodeLoss,
    pub groups_per_batch: usize,
}

#[derive(Debug, Clone)]
pub struct CodeOutcome {
    pub card_path: PathBuf,
    pub card: ModelCard,
    /// Mean training loss of each epoch.
    pub losses: Vec<f64>,
}

/// The card name of a learned code for `base`.
pub fn code_name(base: &str, recipe: &CodeRecipe) -> String {
    let CodeRecipe {
        k,
        r,
        encoder,
        decoder,
        ..
    } = recipe;
    match r {
        1 => format!("{base}-code-k{k}-{encoder}-{decoder}"),
        r => format!("{base}-code-k{k}-r{r}-{encoder}-{decoder}"),
    }
}

/// Trains E and D of `recipe` for `base` (frozen) and saves them in `out`.
pub fn train_code(
    data: &FashionMnist,
    base: &Model,
    recipe: &CodeRecipe,
    opts: &TrainOptions,
    out: &Path,
) -> Result<CodeOutcome, TrainError> {
    if base.card.role != Role::Base {
        return Err(TrainError::Invalid(format!(
            "--base must be a base model's card, but {} is not",
            base.card.name
        )));
    }
    if opts.epochs == 0 || recipe.groups_per_batch == 0 {
        return Err(TrainError::Invalid(
            "epochs and groups per batch must be at least 1".into(),
        ));
    }
    let CodeRecipe { k, r, .. } = *recipe;
    let item = base.network.input().to_vec();
    let classes = base.card.classes.len();
    let spec = LearnedSpec {
        k,
        r,
        encoder: recipe.encoder,
        decoder: recipe.decoder,
        item: item.clone(),
        classes,
    };
    let train = match opts.limit {
        Some(n) => data.train.take(n)?,
        None => data.train.clone(),
    };
    if train.len() < k {
        return Err(TrainError::Invalid(format!(
            "{} training images cannot form a group of {k}",
            train.len()
        )));
    }
    let device = train.images.device().clone();
    let (code, vars) = crate::model::code::fresh(spec, opts.seed, &device)?;
    // F is fixed: its logits on the data are the targets, computed once.
    let train_logits = base.network.forward_batched(&train.images, EVAL_BATCH)?;
    let val_logits = base
        .network
        .forward_batched(&data.validation.images, EVAL_BATCH)?;
    let val_groups = grouping(
        data.validation.len(),
        k,
        super::parity::VALIDATION_GROUPING_SEED,
    );
    let patterns = erasure_patterns(k, r);
    let (keep, lost) = code.erasure_masks(&patterns, &device)?;
    // [1, patterns, k]: which rebuilt outputs count, and how many per group.
    let lost = lost.unsqueeze(0)?;
    let counted = patterns.iter().map(Vec::len).sum::<usize>() as f64;

    let all_vars = vars.all_vars();
    let mut opt = adam(all_vars.clone())?;
    let gpb = recipe.groups_per_batch;
    let groups_per_epoch = train.len() / k;
    let steps_per_epoch = groups_per_epoch.div_ceil(gpb);
    let progress = Progress::new((steps_per_epoch * opts.epochs) as u64, opts.quiet);
    let started = Instant::now();
    let mut best = (0usize, f64::NEG_INFINITY, Snapshot::take(&all_vars)?);
    let mut shape = vec![0, k];
    shape.extend_from_slice(&item);
    // The card of the weights now in `vars`, kept at epoch `best_epoch`
    // of `epochs` run so far.
    let card_of = |best_epoch: usize, score: f64, epochs: usize, wall: f64| {
        let mut card = base.card.clone();
        card.name = code_name(&base.card.name, recipe);
        card.role = Role::Code {
            k,
            r,
            encoder: recipe.encoder,
            decoder: recipe.decoder,
            base_sha256: base.card.weights.sha256.clone(),
            base_name: base.card.name.clone(),
        };
        card.training = Some(Training {
            dataset: "fashion-mnist".into(),
            seed: opts.seed,
            epochs,
            best_epoch,
            batch_size: gpb,
            optimizer: "adam".into(),
            learning_rate: super::LEARNING_RATE,
            weight_decay: super::WEIGHT_DECAY,
            train_examples: train.len(),
            validation_accuracy: score,
            test_accuracy: None,
            wall_seconds: wall,
            images_per_second: (groups_per_epoch * k * epochs) as f64 / wall,
            loss: Some(recipe.loss.name().into()),
        });
        card
    };
    let mut losses = Vec::with_capacity(opts.epochs);
    for epoch in 1..=opts.epochs {
        let mut order = shuffled(train.len(), opts.seed, epoch);
        order.truncate(groups_per_epoch * k);
        let mut loss_sum = 0f64;
        for batch in order.chunks(gpb * k) {
            let g = batch.len() / k;
            shape[0] = g;
            let idx = Tensor::from_slice(batch, batch.len(), &device)?;
            let queries = train
                .images
                .index_select(&idx, 0)?
                .reshape(shape.as_slice())?;
            let outputs = train_logits
                .index_select(&idx, 0)?
                .reshape((g, k, classes))?;
            let decoded = decode_all(&code, &base.network, &queries, &outputs, &keep, true)?;
            // [groups, patterns, k]: the loss of every rebuilt output.
            let per_output = match recipe.loss {
                CodeLoss::Mse => decoded
                    .broadcast_sub(&outputs.unsqueeze(1)?)?
                    .sqr()?
                    .sum(D::Minus1)?,
                CodeLoss::Xent => {
                    let labels = super::label_tensor(&train.labels, batch, &device)?
                        .reshape((g, 1, k, 1))?
                        .broadcast_as((g, patterns.len(), k, 1))?
                        .contiguous()?;
                    candle_nn::ops::log_softmax(&decoded, D::Minus1)?
                        .gather(&labels, D::Minus1)?
                        .squeeze(D::Minus1)?
                        .neg()?
                }
            };
            let loss = (per_output.broadcast_mul(&lost)?.sum_all()? / (g as f64 * counted))?;
            let l = optimiser_step(&mut opt, &loss)?;
            loss_sum += l as f64;
            progress.step(l);
        }
        losses.push(loss_sum / steps_per_epoch as f64);
        // Validation: every single loss (the figure the papers report).
        let val = degraded_accuracy_learned(
            &code,
            &base.network,
            1,
            &data.validation.images,
            &val_logits,
            &data.validation.labels,
            &val_groups,
        )?;
        // Keep the epoch best at what the loss aims for: F's argmax for
        // mse, the true label for xent.
        let score = match recipe.loss {
            CodeLoss::Mse => val.reconstruction,
            CodeLoss::Xent => val.overall,
        };
        let improved = score > best.1;
        if improved {
            best = (epoch, score, Snapshot::take(&all_vars)?);
            // Saved at once: a long run stopped early keeps its best code.
            let wall = started.elapsed().as_secs_f64();
            crate::model::store::save_vars(&vars, &mut card_of(epoch, score, epoch, wall), out)?;
        }
        progress.line(format!(
            "epoch {epoch:>3}/{}  loss {:.4}  validation degraded accuracy {:.2}% (reconstruction {:.2}%)  {:.1} s{}",
            opts.epochs,
            losses[epoch - 1],
            val.overall * 100.0,
            val.reconstruction * 100.0,
            started.elapsed().as_secs_f64(),
            if improved { "  (best)" } else { "" }
        ));
    }
    progress.finish();
    let wall = started.elapsed().as_secs_f64();
    best.2.restore()?;
    let mut card = card_of(best.0, best.1, opts.epochs, wall);
    let card_path = crate::model::store::save_vars(&vars, &mut card, out)?;
    Ok(CodeOutcome {
        card_path,
        card,
        losses,
    })
}

#[cfg(test)]
mod tests;
