//! Training a parity model: the base architecture, freshly initialised,
//! regressed (MSE) onto the sum of the base model's logits over the k
//! queries of each group, fed the encoded group. Parity l of an r-parity
//! code learns the weighted sum Σ_j c_lj F(X_j) from P_l = Σ_j c_lj X_j.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use candle_nn::loss::mse;

use super::{Progress, Snapshot, TrainError, TrainOptions, adam, optimiser_step, shuffled};
use crate::coding::{EncoderKind, LinearCode, parity_encoder};
use crate::data::FashionMnist;
use crate::eval::{EVAL_BATCH, Parity, degraded_accuracy, grouping};
use crate::model::card::Training;
use crate::model::{Model, ModelCard, Network, Role};

/// Groups per batch in the papers: 64 for k = 2, 32 for larger k.
pub fn default_groups_per_batch(k: usize) -> usize {
    if k <= 2 { 64 } else { 32 }
}

/// Seed of the fixed validation grouping (independent of the training seed,
/// so checkpoints of different runs are chosen on the same groups).
pub const VALIDATION_GROUPING_SEED: u64 = 0x5eed;

#[derive(Debug, Clone)]
pub struct ParityOutcome {
    pub card_path: PathBuf,
    pub card: ModelCard,
}

/// The card name of parity `index` of `code` for `base`: r = 1 keeps the
/// name it always had.
pub fn parity_name(base: &str, code: &LinearCode, kind: EncoderKind, index: usize) -> String {
    let k = code.k();
    match code.r() {
        1 => format!("{base}-parity-k{k}-{kind}"),
        r => format!("{base}-parity-k{k}-{kind}-r{r}-{index}"),
    }
}

/// Trains parity `index` of `code` for `base`.
#[allow(clippy::too_many_arguments)]
pub fn train_parity(
    data: &FashionMnist,
    base: &Model,
    code: &LinearCode,
    index: usize,
    kind: EncoderKind,
    groups_per_batch: usize,
    opts: &TrainOptions,
    out: &Path,
) -> Result<ParityOutcome, TrainError> {
    if base.card.is_parity() {
        return Err(TrainError::Invalid(format!(
            "--base must be a base model's card, but {} is a parity model",
            base.card.name
        )));
    }
    if opts.epochs == 0 || groups_per_batch == 0 {
        return Err(TrainError::Invalid(
            "epochs and groups per batch must be at least 1".into(),
        ));
    }
    let k = code.k();
    let input = base.network.input();
    let enc = parity_encoder(kind, code, index, &input)?;
    let row: Vec<f32> = code.row(index).iter().map(|&c| c as f32).collect();
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
    // The base model is fixed: its logits are the targets, computed once.
    let train_logits = base.network.forward_batched(&train.images, EVAL_BATCH)?;
    let val_logits = base
        .network
        .forward_batched(&data.validation.images, EVAL_BATCH)?;
    let val_groups = grouping(data.validation.len(), k, VALIDATION_GROUPING_SEED);
    let classes = base.card.classes.len();

    // The parity model lives where the data and the base model do.
    let device = train.images.device().clone();
    let net = Network::new(base.card.arch, input, classes, opts.seed, &device)?;
    let vars = net.varmap().all_vars();
    let mut opt = adam(vars.clone())?;
    let weights = Tensor::from_vec(row, (1, k, 1), &device)?;
    let groups_per_epoch = train.len() / k;
    let steps_per_epoch = groups_per_epoch.div_ceil(groups_per_batch);
    let progress = Progress::new((steps_per_epoch * opts.epochs) as u64, opts.quiet);
    let started = Instant::now();
    let mut best = (0usize, f64::NEG_INFINITY, Snapshot::take(&vars)?);
    let mut shape = vec![0, k];
    shape.extend(input);
    for epoch in 1..=opts.epochs {
        let mut order = shuffled(train.len(), opts.seed, epoch);
        order.truncate(groups_per_epoch * k);
        let mut loss_sum = 0f64;
        for batch in order.chunks(groups_per_batch * k) {
            let g = batch.len() / k;
            shape[0] = g;
            let idx = Tensor::from_slice(batch, batch.len(), &device)?;
            let queries = train
                .images
                .index_select(&idx, 0)?
                .reshape(shape.as_slice())?;
            let target = train_logits
                .index_select(&idx, 0)?
                .reshape((g, k, classes))?
                .broadcast_mul(&weights)?
                .sum(1)?;
            let loss = mse(&net.forward_train(&enc.encode(&queries)?)?, &target)?;
            let l = optimiser_step(&mut opt, &loss)?;
            loss_sum += l as f64;
            progress.step(l);
        }
        // Every single erasure, rebuilt from this parity alone.
        let parity = Parity {
            index,
            network: &net,
            encoder: enc.as_ref(),
        };
        let val = degraded_accuracy(
            code,
            &[parity],
            1,
            &data.validation.images,
            &val_logits,
            &data.validation.labels,
            &val_groups,
        )?;
        let improved = val.reconstruction > best.1;
        if improved {
            best = (epoch, val.reconstruction, Snapshot::take(&vars)?);
        }
        let which = if code.r() > 1 {
            format!("parity {index}/{}  ", code.r())
        } else {
            String::new()
        };
        progress.line(format!(
            "{which}epoch {epoch:>3}/{}  loss {:.4}  validation degraded accuracy {:.2}% (reconstruction {:.2}%){}",
            opts.epochs,
            loss_sum / steps_per_epoch as f64,
            val.overall * 100.0,
            val.reconstruction * 100.0,
            if improved { "  (best)" } else { "" }
        ));
    }
    progress.finish();
    let wall = started.elapsed().as_secs_f64();
    best.2.restore()?;
    let mut card = base.card.clone();
    card.name = parity_name(&base.card.name, code, kind, index);
    card.role = Role::Parity {
        k,
        encoder: kind,
        base_sha256: base.card.weights.sha256.clone(),
        base_name: base.card.name.clone(),
        r: code.r(),
        index,
        coefficients: code.row(index).to_vec(),
    };
    card.training = Some(Training {
        dataset: "fashion-mnist".into(),
        seed: opts.seed,
        epochs: opts.epochs,
        best_epoch: best.0,
        batch_size: groups_per_batch,
        optimizer: "adam".into(),
        learning_rate: super::LEARNING_RATE,
        weight_decay: super::WEIGHT_DECAY,
        train_examples: train.len(),
        validation_accuracy: best.1,
        test_accuracy: None,
        wall_seconds: wall,
        images_per_second: (groups_per_epoch * k * opts.epochs) as f64 / wall,
        loss: None,
    });
    let card_path = crate::model::save(&net, &mut card, out)?;
    Ok(ParityOutcome { card_path, card })
}
