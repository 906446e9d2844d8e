//! Training: base models on labels, parity models on the sum of the base
//! model's logits (the papers' recipe). Both keep the weights of the epoch
//! with the best validation score.

pub mod base;
pub mod code;
pub mod parity;
mod progress;

use candle_core::{Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};

pub use base::train_base;
pub use code::train_code;
pub use parity::train_parity;
pub use progress::Progress;

use crate::coding::CodingError;
use crate::data::DataError;
use crate::model::ModelError;

/// The recipe's optimiser: Adam, lr 1e-3, weight decay 1e-5.
pub const LEARNING_RATE: f64 = 1e-3;
pub const WEIGHT_DECAY: f64 = 1e-5;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Coding(#[from] CodingError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
}

/// What every training run takes.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub epochs: usize,
    pub seed: u64,
    /// Use only the first N training images (quick runs and tests).
    pub limit: Option<usize>,
    /// No progress bar or per-epoch lines.
    pub quiet: bool,
}

pub(crate) fn adam(vars: Vec<Var>) -> candle_core::Result<AdamW> {
    // AdamW's decoupled decay at 1e-5 differs from Adam's L2 term only
    // by lr × wd per step: negligible, and it is what candle provides.
    AdamW::new(
        vars,
        ParamsAdamW {
            lr: LEARNING_RATE,
            weight_decay: WEIGHT_DECAY,
            ..Default::default()
        },
    )
}

/// A copy of every variable's value, to restore the best epoch's weights.
pub(crate) struct Snapshot(Vec<(Var, Tensor)>);

impl Snapshot {
    pub fn take(vars: &[Var]) -> candle_core::Result<Self> {
        vars.iter()
            .map(|v| Ok((v.clone(), v.as_tensor().copy()?)))
            .collect::<candle_core::Result<_>>()
            .map(Snapshot)
    }

    pub fn restore(&self) -> candle_core::Result<()> {
        self.0.iter().try_for_each(|(var, value)| var.set(value))
    }
}

/// Labels as a u32 tensor for cross-entropy.
pub(crate) fn label_tensor(
    labels: &[u8],
    idx: &[u32],
    device: &candle_core::Device,
) -> candle_core::Result<Tensor> {
    let ys: Vec<u32> = idx.iter().map(|&i| labels[i as usize] as u32).collect();
    Tensor::from_vec(ys, idx.len(), device)
}

pub(crate) fn shuffled(n: usize, seed: u64, epoch: usize) -> Vec<u32> {
    crate::eval::grouping(
        n,
        1,
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    )
}

pub(crate) fn optimiser_step(opt: &mut AdamW, loss: &Tensor) -> candle_core::Result<f32> {
    opt.backward_step(loss)?;
    loss.to_scalar::<f32>()
}
