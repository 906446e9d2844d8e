//! The Berrut code's accuracy, scored like the others: the test images in
//! seeded groups of k, each group's n coded queries answered by the base
//! model itself, and every group decoded under every pattern of e lost
//! coded answers. Every answer is decoded (approximate), so each of the k
//! queries of a group counts, with 0 losses too.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Degraded, EVAL_BATCH, accuracy, grouping};
use crate::coding::{BerrutCode, CodingError};
use crate::data::Split;
use crate::model::{Model, Network, argmax};

/// One (k, n, losses) cell: every query decoded under every pattern.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BerrutRow {
    pub k: usize,
    pub n: usize,
    pub losses: usize,
    /// Loss patterns scored (every choice of `losses` of the n).
    pub patterns: usize,
    pub degraded: Degraded,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BerrutReport {
    pub base: String,
    pub test_images: usize,
    pub seed: u64,
    pub available_accuracy: f64,
    pub rows: Vec<BerrutRow>,
}

/// Every choice of `e` of `0..n`, as sorted lists.
fn choose(n: usize, e: usize) -> Vec<Vec<usize>> {
    if e == 0 {
        return vec![Vec::new()];
    }
    if e > n {
        return Vec::new();
    }
    let mut out = Vec::new();
    for first in 0..n {
        for rest in choose(n - first - 1, e - 1) {
            let mut p = vec![first];
            p.extend(rest.into_iter().map(|r| r + first + 1));
            out.push(p);
        }
    }
    out
}

/// Scores `code` on the groups `groups` (flattened, k per group) of
/// `images` with `network` as the model: under every pattern of exactly
/// `losses` lost coded answers (at least one answer always remains).
pub fn berrut_accuracy(
    code: &BerrutCode,
    network: &Network,
    losses: usize,
    images: &Tensor,
    base_logits: &Tensor,
    labels: &[u8],
    groups: &[u32],
) -> Result<(usize, Degraded), CodingError> {
    let (k, n) = (code.k(), code.n());
    let classes = base_logits.dim(1)?;
    let base_pred = argmax(base_logits)?;
    let patterns: Vec<Vec<usize>> = choose(n, losses.min(n - 1))
        .into_iter()
        .map(|lost| (0..n).filter(|i| !lost.contains(i)).collect())
        .collect();
    let item_dims = images.dims()[1..].to_vec();
    let item: usize = item_dims.iter().product();
    let per_batch = (EVAL_BATCH / n).max(1);
    let (mut overall, mut recon, mut scored) = (0usize, 0usize, 0usize);
    for chunk in groups.chunks(per_batch * k) {
        let g = chunk.len() / k;
        let chunk = &chunk[..g * k];
        let idx = Tensor::from_slice(chunk, chunk.len(), images.device())?;
        let queries = images
            .index_select(&idx, 0)?
            .flatten_all()?
            .to_device(&candle_core::Device::Cpu)?
            .to_vec1::<f32>()?;
        let coded = code.encode_flat(&queries, g, item)?;
        let mut shape = vec![g * n];
        shape.extend(&item_dims);
        let coded = Tensor::from_vec(coded, shape, images.device())?;
        // [g, n, classes], flat.
        let answers = network
            .forward(&coded)?
            .flatten_all()?
            .to_device(&candle_core::Device::Cpu)?
            .to_vec1::<f32>()?;
        for arrived in &patterns {
            let mut outputs = Vec::with_capacity(g * arrived.len() * classes);
            for group in 0..g {
                for &i in arrived {
                    let at = (group * n + i) * classes;
                    outputs.extend_from_slice(&answers[at..at + classes]);
                }
            }
            let decoded = code.decode_flat(arrived, &outputs, g, classes)?;
            let decoded = Tensor::from_vec(decoded, (g * k, classes), &candle_core::Device::Cpu)?;
            for (q, p) in argmax(&decoded)?.iter().enumerate() {
                let i = chunk[q] as usize;
                overall += (*p == labels[i] as u32) as usize;
                recon += (*p == base_pred[i]) as usize;
                scored += 1;
            }
        }
    }
    let total = scored.max(1) as f64;
    Ok((
        patterns.len(),
        Degraded {
            overall: overall as f64 / total,
            reconstruction: recon as f64 / total,
            groups: groups.len() / k,
        },
    ))
}

/// Scores Berrut codes for every k of `ks`, n = k + each of `extras`, and
/// 0..=`max_losses` lost coded answers, with the base model `base`.
pub fn evaluate_berrut(
    base: &Model,
    test: &Split,
    seed: u64,
    ks: &[usize],
    extras: &[usize],
    max_losses: usize,
) -> Result<BerrutReport, CodingError> {
    let base_logits = base.network.forward_batched(&test.images, EVAL_BATCH)?;
    let mut rows = Vec::new();
    for &k in ks {
        let groups = grouping(test.len(), k, seed);
        for &extra in extras {
            let code = BerrutCode::new(k, k + extra)?;
            for losses in 0..=max_losses.min(code.n() - 1) {
                let (patterns, degraded) = berrut_accuracy(
                    &code,
                    &base.network,
                    losses,
                    &test.images,
                    &base_logits,
                    &test.labels,
                    &groups,
                )?;
                rows.push(BerrutRow {
                    k,
                    n: code.n(),
                    losses,
                    patterns,
                    degraded,
                });
            }
        }
    }
    Ok(BerrutReport {
        base: base.card.name.clone(),
        test_images: test.len(),
        seed,
        available_accuracy: accuracy(&base_logits, &test.labels)?,
        rows,
    })
}

impl BerrutReport {
    /// A markdown table (terminal and docs alike).
    pub fn table(&self) -> String {
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        let mut s = format!(
            "{} with the Berrut code ({} test images, seed {}): available accuracy {}\n\n\
             | k | n | lost | from | patterns | degraded overall | reconstruction |\n\
             | --- | --- | --- | --- | --- | --- | --- |\n",
            self.base,
            self.test_images,
            self.seed,
            pct(self.available_accuracy)
        );
        for r in &self.rows {
            let from = r.n - r.losses;
            s += &format!(
                "| {} | {} | {} | {}{} | {} | **{}** | {} |\n",
                r.k,
                r.n,
                r.losses,
                from,
                if from < r.k { " (< k)" } else { "" },
                r.patterns,
                pct(r.degraded.overall),
                pct(r.degraded.reconstruction)
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn choose_lists_every_pattern_once() {
        assert_eq!(choose(3, 0), vec![Vec::<usize>::new()]);
        assert_eq!(choose(3, 2), vec![vec![0, 1], vec![0, 2], vec![1, 2]]);
        assert_eq!(choose(6, 2).len(), 15);
        assert!(choose(2, 3).is_empty());
    }
}
