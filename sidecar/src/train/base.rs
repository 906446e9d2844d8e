//! Training a base model: cross-entropy on the labels, Adam.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_nn::loss::cross_entropy;

use super::{
    Progress, Snapshot, TrainError, TrainOptions, adam, label_tensor, optimiser_step, shuffled,
};
use crate::data::{CLASSES, FashionMnist};
use crate::eval::{EVAL_BATCH, accuracy};
use crate::model::card::{CARD_FORMAT, Training, WeightsRef};
use crate::model::{Arch, ModelCard, Network, Role, TensorSpec, save};

/// Default batch size for base models.
pub const BASE_BATCH: usize = 64;

/// What `train_base` produced.
#[derive(Debug, Clone)]
pub struct BaseOutcome {
    pub card_path: PathBuf,
    pub card: ModelCard,
}

pub fn train_base(
    data: &FashionMnist,
    arch: Arch,
    batch_size: usize,
    opts: &TrainOptions,
    out: &Path,
) -> Result<BaseOutcome, TrainError> {
    if opts.epochs == 0 || batch_size == 0 {
        return Err(TrainError::Invalid(
            "epochs and batch size must be at least 1".into(),
        ));
    }
    let train = match opts.limit {
        Some(n) => data.train.take(n)?,
        None => data.train.clone(),
    };
    let input = [1, crate::data::IMAGE_SIDE, crate::data::IMAGE_SIDE];
    // The model lives where the data does (`FashionMnist::to_device`).
    let device = train.images.device().clone();
    let net = Network::new(arch, input, CLASSES.len(), opts.seed, &device)?;
    let vars = net.varmap().all_vars();
    let mut opt = adam(vars.clone())?;
    let steps_per_epoch = train.len().div_ceil(batch_size);
    let progress = Progress::new((steps_per_epoch * opts.epochs) as u64, opts.quiet);
    let started = Instant::now();
    let mut best = (0usize, f64::NEG_INFINITY, Snapshot::take(&vars)?);
    for epoch in 1..=opts.epochs {
        let order = shuffled(train.len(), opts.seed, epoch);
        let mut loss_sum = 0f64;
        for batch in order.chunks(batch_size) {
            let xs = train.images_at(batch)?;
            let ys = label_tensor(&train.labels, batch, &device)?;
            let loss = cross_entropy(&net.forward_train(&xs)?, &ys)?;
            let l = optimiser_step(&mut opt, &loss)?;
            loss_sum += l as f64;
            progress.step(l);
        }
        let val = accuracy(
            &net.forward_batched(&data.validation.images, EVAL_BATCH)?,
            &data.validation.labels,
        )?;
        let improved = val > best.1;
        if improved {
            best = (epoch, val, Snapshot::take(&vars)?);
        }
        progress.line(format!(
            "epoch {epoch:>3}/{}  loss {:.4}  validation accuracy {:.2}%{}",
            opts.epochs,
            loss_sum / steps_per_epoch as f64,
            val * 100.0,
            if improved { "  (best)" } else { "" }
        ));
    }
    progress.finish();
    let wall = started.elapsed().as_secs_f64();
    best.2.restore()?;
    let test = accuracy(
        &net.forward_batched(&data.test.images, EVAL_BATCH)?,
        &data.test.labels,
    )?;
    let mut card = ModelCard {
        format: CARD_FORMAT.into(),
        name: format!("fashion-{arch}"),
        arch,
        role: Role::Base,
        input: TensorSpec {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: input.to_vec(),
        },
        output: TensorSpec {
            name: "logits".into(),
            datatype: "FP32".into(),
            shape: vec![CLASSES.len()],
        },
        classes: CLASSES.iter().map(|c| c.to_string()).collect(),
        weights: WeightsRef {
            uri: String::new(),
            sha256: String::new(),
            parameters: 0,
        },
        training: Some(Training {
            dataset: "fashion-mnist".into(),
            seed: opts.seed,
            epochs: opts.epochs,
            best_epoch: best.0,
            batch_size,
            optimizer: "adam".into(),
            learning_rate: super::LEARNING_RATE,
            weight_decay: super::WEIGHT_DECAY,
            train_examples: train.len(),
            validation_accuracy: best.1,
            test_accuracy: Some(test),
            wall_seconds: wall,
            images_per_second: (train.len() * opts.epochs) as f64 / wall,
            loss: None,
        }),
    };
    let card_path = save(&net, &mut card, out)?;
    Ok(BaseOutcome { card_path, card })
}
