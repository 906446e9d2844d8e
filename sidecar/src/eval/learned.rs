//! Degraded-mode accuracy of a learned code, scored like the hand-written
//! ones: every group under every pattern of exactly `losses` erasures, the
//! parities E(X) served by the base model, the lost outputs rebuilt by the
//! decoder.

use candle_core::Tensor;

use super::report::{EvalError, EvalReport, Losses};
use super::{Degraded, EVAL_BATCH, accuracy, grouping};
use crate::coding::{CodingError, LearnedCode, erasure_patterns};
use crate::model::{Network, Role, argmax};

/// The base model's outputs on the code's parity queries, then the decoder
/// under every erasure pattern: `[groups, patterns, k, o]`.
pub fn decode_all(
    code: &LearnedCode,
    base: &Network,
    queries: &Tensor,
    outputs: &Tensor,
    keep: &Tensor,
    frozen_graph: bool,
) -> Result<Tensor, CodingError> {
    let spec = code.spec();
    let (k, r, o) = (spec.k, spec.r, spec.classes);
    let g = queries.dim(0)?;
    let mut shape = vec![g * r];
    shape.extend_from_slice(&spec.item);
    let parity = code.encode(queries)?.reshape(shape)?;
    // Training needs the graph through F (to reach the encoder); scoring not.
    let parity_out = if frozen_graph {
        base.forward_frozen(&parity)?
    } else {
        base.forward(&parity)?
    };
    let all = Tensor::cat(&[outputs, &parity_out.reshape((g, r, o))?], 1)?;
    debug_assert_eq!(all.dims(), [g, k + r, o]);
    code.decode_patterns(&all, keep)
}

/// Scores `code` on the groups `groups` (flattened, k per group) of
/// `images`, given the base model's logits for every image.
pub fn degraded_accuracy_learned(
    code: &LearnedCode,
    base: &Network,
    losses: usize,
    images: &Tensor,
    base_logits: &Tensor,
    labels: &[u8],
    groups: &[u32],
) -> Result<Degraded, CodingError> {
    let spec = code.spec();
    let (k, o) = (spec.k, spec.classes);
    let patterns: Vec<Vec<usize>> = erasure_patterns(k, losses)
        .into_iter()
        .filter(|p| p.len() == losses)
        .collect();
    let (keep, _) = code.erasure_masks(&patterns, images.device())?;
    let base_pred = argmax(base_logits)?;
    let per_batch = (EVAL_BATCH / (k * patterns.len().max(1))).max(1);
    let (mut overall, mut recon, mut scored) = (0usize, 0usize, 0usize);
    for chunk in groups.chunks(per_batch * k) {
        let g = chunk.len() / k;
        let chunk = &chunk[..g * k];
        let idx = Tensor::from_slice(chunk, chunk.len(), images.device())?;
        let mut shape = vec![g, k];
        shape.extend_from_slice(&spec.item);
        let queries = images.index_select(&idx, 0)?.reshape(shape)?;
        let outputs = base_logits.index_select(&idx, 0)?.reshape((g, k, o))?;
        let decoded = decode_all(code, base, &queries, &outputs, &keep, false)?;
        let pred = argmax(&decoded.reshape((g * patterns.len() * k, o))?)?;
        for group in 0..g {
            for (p, lost) in patterns.iter().enumerate() {
                for &j in lost {
                    let guess = pred[(group * patterns.len() + p) * k + j];
                    let i = chunk[group * k + j] as usize;
                    overall += (guess == labels[i] as u32) as usize;
                    recon += (guess == base_pred[i]) as usize;
                    scored += 1;
                }
            }
        }
    }
    let scored = scored.max(1) as f64;
    Ok(Degraded {
        overall: overall as f64 / scored,
        reconstruction: recon as f64 / scored,
        groups: groups.len() / k,
    })
}

/// Scores a learned code against `base` on `test`, groups drawn with
/// `seed`, under every pattern of 1..=r losses; the floor is the same
/// networks untrained (seeded like the training run's start).
pub fn evaluate_code(
    base: &crate::model::Model,
    code: &crate::model::CodeModel,
    test: &crate::data::Split,
    seed: u64,
) -> Result<EvalReport, EvalError> {
    let Role::Code {
        k,
        r,
        encoder,
        decoder,
        ref base_sha256,
        ..
    } = code.card.role
    else {
        return Err(EvalError::Mismatch(format!(
            "--code-card {} is not a learned code's card",
            code.card.name
        )));
    };
    if base.card.role != Role::Base {
        return Err(EvalError::Mismatch(format!(
            "--base {} is not a base model; pass the base model's card",
            base.card.name
        )));
    }
    if !base_sha256.eq_ignore_ascii_case(&base.card.weights.sha256) {
        return Err(EvalError::Mismatch(format!(
            "learned code {} was trained for base weights {base_sha256}, not for {} ({})",
            code.card.name, base.card.name, base.card.weights.sha256
        )));
    }
    let device = test.images.device();
    let (untrained, _vars) = crate::model::code::fresh(code.code.spec().clone(), 0, device)
        .map_err(|e| EvalError::Mismatch(e.to_string()))?;
    let base_logits = base.network.forward_batched(&test.images, EVAL_BATCH)?;
    let groups = grouping(test.len(), k, seed);
    let score = |c: &LearnedCode, losses| {
        degraded_accuracy_learned(
            c,
            &base.network,
            losses,
            &test.images,
            &base_logits,
            &test.labels,
            &groups,
        )
    };
    let by_losses = (1..=r)
        .map(|losses| {
            Ok(Losses {
                losses,
                degraded: score(&code.code, losses)?,
                floor: score(&untrained, losses)?,
            })
        })
        .collect::<Result<Vec<_>, CodingError>>()?;
    Ok(EvalReport {
        base: base.card.name.clone(),
        parity: code.card.name.clone(),
        arch: base.card.arch,
        k,
        r,
        encoder,
        decoder: Some(decoder),
        test_images: test.len(),
        seed,
        available_accuracy: accuracy(&base_logits, &test.labels)?,
        degraded: by_losses[0].degraded,
        floor: by_losses[0].floor,
        by_losses,
    })
}
