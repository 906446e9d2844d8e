//! Accuracy of coded serving, the papers' way: every coding group is scored
//! under each of its k single erasures (and, with r parities, under every
//! pattern of e ≤ r erasures), and a decoded prediction counts for
//! "overall" when its argmax equals the true label and for "reconstruction"
//! when it equals the base model's own argmax.

pub mod berrut;
pub mod learned;
pub mod plot;
pub mod report;

use candle_core::Tensor;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::coding::{CodingError, Encoder, LinearCode, erasure_patterns};
use crate::model::{Network, argmax};

/// Images a forward pass takes at once in evaluation.
pub const EVAL_BATCH: usize = 1000;

/// Degraded-mode accuracy over a set of groups.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Degraded {
    /// Decoded argmax == true label, over groups × erasure patterns × the
    /// lost queries of each.
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

/// One parity model of a code, as scored: parity `index`, its network and
/// its encoder.
pub struct Parity<'a> {
    pub index: usize,
    pub network: &'a Network,
    pub encoder: &'a dyn Encoder,
}

/// Scores `parities` (of `code`) on the groups `groups` (flattened, k per
/// group) of `images`, given the base model's logits for every image:
/// every group under every pattern of exactly `losses` erasures, decoded
/// from all of `parities`.
pub fn degraded_accuracy(
    code: &LinearCode,
    parities: &[Parity<'_>],
    losses: usize,
    images: &Tensor,
    base_logits: &Tensor,
    labels: &[u8],
    groups: &[u32],
) -> Result<Degraded, CodingError> {
    let k = code.k();
    let n_groups = groups.len() / k;
    let classes = base_logits.dim(1)?;
    let base_pred = argmax(base_logits)?;
    let indexes: Vec<usize> = parities.iter().map(|p| p.index).collect();
    let decoders = erasure_patterns(k, losses)
        .into_iter()
        .filter(|p| p.len() == losses)
        .map(|lost| code.weights(&lost, &indexes))
        .collect::<Result<Vec<_>, _>>()?;
    let per_batch = (EVAL_BATCH / k).max(1);
    let (mut overall, mut recon, mut scored) = (0usize, 0usize, 0usize);
    for chunk in groups.chunks(per_batch * k) {
        let g = chunk.len() / k;
        let chunk = &chunk[..g * k];
        let idx = Tensor::from_slice(chunk, chunk.len(), images.device())?;
        let item = images.dims()[1..].to_vec();
        let mut shape = vec![g, k];
        shape.extend(item);
        let queries = images.index_select(&idx, 0)?.reshape(shape)?;
        let parity_out = parities
            .iter()
            .map(|p| {
                p.network
                    .forward(&p.encoder.encode(&queries)?)
                    .map_err(CodingError::from)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let parity_out = Tensor::stack(&parity_out, 1)?;
        let outputs = base_logits
            .index_select(&idx, 0)?
            .reshape((g, k, classes))?;
        for weights in &decoders {
            let lost = weights.lost();
            let decoded = weights.apply_tensors(&parity_out, &outputs)?;
            let pred = argmax(&decoded.reshape((g * lost.len(), classes))?)?;
            for (n, p) in pred.iter().enumerate() {
                let i = chunk[(n / lost.len()) * k + lost[n % lost.len()]] as usize;
                overall += (*p == labels[i] as u32) as usize;
                recon += (*p == base_pred[i]) as usize;
                scored += 1;
            }
        }
    }
    let scored = scored.max(1) as f64;
    Ok(Degraded {
        overall: overall as f64 / scored,
        reconstruction: recon as f64 / scored,
        groups: n_groups,
    })
}
