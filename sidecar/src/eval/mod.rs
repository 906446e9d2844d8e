//! Accuracy of coded serving, the papers' way: every coding group is scored
//! under each of its k single erasures, and a decoded prediction counts for
//! "overall" when its argmax equals the true label and for "reconstruction"
//! when it equals the base model's own argmax.

pub mod plot;
pub mod report;

use candle_core::Tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::coding::{CodingError, Decoder, Encoder};
use crate::model::{Network, argmax};

/// Images a forward pass takes at once in evaluation.
pub const EVAL_BATCH: usize = 1000;

/// Degraded-mode accuracy over a set of groups.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Degraded {
    /// Decoded argmax == true label, over groups × k erasures.
    pub overall: f64,
    /// Decoded argmax == base model's argmax.
    pub reconstruction: f64,
    pub groups: usize,
}

/// Fraction of rows whose argmax equals `labels`.
pub fn accuracy(logits: &Tensor, labels: &[u8]) -> candle_core::Result<f64> {
    let pred = argmax(logits)?;
    let hits = pred
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p == **l as u32)
        .count();
    Ok(hits as f64 / labels.len().max(1) as f64)
}

/// A seeded split of `0..n` into groups of `k` (the remainder is dropped),
/// flattened: group g is `[g*k, (g+1)*k)`.
pub fn grouping(n: usize, k: usize, seed: u64) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..n as u32).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    idx.truncate(n / k * k);
    idx
}

/// Scores `parity` on the groups `groups` (flattened, k per group) of
/// `images`, given the base model's logits for every image.
pub fn degraded_accuracy(
    parity: &Network,
    encoder: &dyn Encoder,
    images: &Tensor,
    base_logits: &Tensor,
    labels: &[u8],
    groups: &[u32],
) -> Result<Degraded, CodingError> {
    let k = encoder.k();
    let n_groups = groups.len() / k;
    let classes = base_logits.dim(1)?;
    let base_pred = argmax(base_logits)?;
    let per_batch = (EVAL_BATCH / k).max(1);
    let (mut overall, mut recon) = (0usize, 0usize);
    for chunk in groups.chunks(per_batch * k) {
        let g = chunk.len() / k;
        let chunk = &chunk[..g * k];
        let idx = Tensor::from_slice(chunk, chunk.len(), images.device())?;
        let item = images.dims()[1..].to_vec();
        let mut shape = vec![g, k];
        shape.extend(item);
        let queries = images.index_select(&idx, 0)?.reshape(shape)?;
        let parity_out = parity.forward(&encoder.encode(&queries)?)?;
        let outputs = base_logits
            .index_select(&idx, 0)?
            .reshape((g, k, classes))?;
        let decoded = Decoder::Subtract.decode_each(&parity_out, &outputs)?;
        let pred = argmax(&decoded.reshape((g * k, classes))?)?;
        for (p, &i) in pred.iter().zip(chunk) {
            overall += (*p == labels[i as usize] as u32) as usize;
            recon += (*p == base_pred[i as usize]) as usize;
        }
    }
    let scored = (n_groups * k).max(1) as f64;
    Ok(Degraded {
        overall: overall as f64 / scored,
        reconstruction: recon as f64 / scored,
        groups: n_groups,
    })
}
