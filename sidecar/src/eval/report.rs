//! `coded-sidecar eval`'s result: available accuracy, degraded-mode accuracy
//! of the trained parity model, and the untrained floor.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Degraded, EVAL_BATCH, accuracy, degraded_accuracy, grouping};
use crate::coding::{CodingError, EncoderKind, encoder};
use crate::data::Split;
use crate::model::{Arch, Model, Role};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Coding(#[from] CodingError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub base: String,
    pub parity: String,
    pub arch: Arch,
    pub k: usize,
    pub encoder: EncoderKind,
    pub test_images: usize,
    pub seed: u64,
    /// The base model's accuracy: what clients get when nothing is lost.
    pub available_accuracy: f64,
    /// Every group under each single erasure, decoded with the trained parity model.
    pub degraded: Degraded,
    /// The same with the base model standing in as the parity model.
    pub floor: Degraded,
}

/// Scores `parity` against `base` on `test`, groups drawn with `seed`.
pub fn evaluate(
    base: &Model,
    parity: &Model,
    test: &Split,
    seed: u64,
) -> Result<EvalReport, EvalError> {
    if base.card.is_parity() {
        return Err(EvalError::Mismatch(format!(
            "--base {} is a parity model; pass the base model's card",
            base.card.name
        )));
    }
    let Role::Parity {
        k,
        encoder: kind,
        ref base_sha256,
        ..
    } = parity.card.role
    else {
        return Err(EvalError::Mismatch(format!(
            "--parity {} is a base model; pass a parity model's card",
            parity.card.name
        )));
    };
    if !base_sha256.eq_ignore_ascii_case(&base.card.weights.sha256) {
        return Err(EvalError::Mismatch(format!(
            "parity model {} was trained for base weights {base_sha256}, not for {} ({})",
            parity.card.name, base.card.name, base.card.weights.sha256
        )));
    }
    let enc = encoder(kind, k, &base.network.input())?;
    let base_logits: Tensor = base.network.forward_batched(&test.images, EVAL_BATCH)?;
    let groups = grouping(test.len(), k, seed);
    let score = |net| {
        degraded_accuracy(
            net,
            enc.as_ref(),
            &test.images,
            &base_logits,
            &test.labels,
            &groups,
        )
    };
    Ok(EvalReport {
        base: base.card.name.clone(),
        parity: parity.card.name.clone(),
        arch: base.card.arch,
        k,
        encoder: kind,
        test_images: test.len(),
        seed,
        available_accuracy: accuracy(&base_logits, &test.labels)?,
        degraded: score(&parity.network)?,
        floor: score(&base.network)?,
    })
}

impl EvalReport {
    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let pct = |x: f64| format!("{:>6.2}%", x * 100.0);
        let mut s = format!(
            "{} + {} ({} k={} {}, {} test images, {} groups)\n",
            self.base,
            self.parity,
            self.arch,
            self.k,
            self.encoder,
            self.test_images,
            self.degraded.groups
        );
        s += "                          overall   reconstruction\n";
        s += &format!(
            "available (no loss)       {}\n",
            pct(self.available_accuracy)
        );
        s += &format!(
            "degraded (parity model)   {}   {}\n",
            pct(self.degraded.overall),
            pct(self.degraded.reconstruction)
        );
        s += &format!(
            "floor (base as parity)    {}   {}\n",
            pct(self.floor.overall),
            pct(self.floor.reconstruction)
        );
        s
    }
}

/// Reference points for the Fashion-MNIST MLP: the untrained floor and the
/// recipe as reproduced on these machines (DESIGN.md), by (k, encoder).
fn reference(arch: Arch, k: usize, encoder: EncoderKind) -> (Option<f64>, Option<f64>) {
    if arch != Arch::Mlp {
        return (None, None);
    }
    let floor = match (k, encoder) {
        (2, EncoderKind::Sum) => Some(46.0),
        (3, EncoderKind::Sum) => Some(24.0),
        (4, EncoderKind::Sum) => Some(18.0),
        _ => None,
    };
    let reproduced = match (k, encoder) {
        (2, EncoderKind::Sum) => Some(78.8),
        (4, EncoderKind::Sum) => Some(65.7),
        (2, EncoderKind::Concat) => Some(82.1),
        _ => None,
    };
    (floor, reproduced)
}

/// The results table of docs/accuracy.md.
pub fn markdown_table(reports: &[EvalReport]) -> String {
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let opt = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.1}%"));
    let mut s = String::from(
        "| model | k | encoder | available | degraded overall | degraded reconstruction | floor overall | reference degraded | reference floor |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in reports {
        let (floor, reproduced) = reference(r.arch, r.k, r.encoder);
        s += &format!(
            "| {} | {} | {} | {} | **{}** | {} | {} | {} | {} |\n",
            r.arch,
            r.k,
            r.encoder,
            pct(r.available_accuracy),
            pct(r.degraded.overall),
            pct(r.degraded.reconstruction),
            pct(r.floor.overall),
            opt(reproduced),
            opt(floor)
        );
    }
    s
}
