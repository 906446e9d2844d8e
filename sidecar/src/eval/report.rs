//! `coded-sidecar eval`'s result: available accuracy, degraded-mode accuracy
//! of the trained parity models (per number of losses, up to r), and the
//! untrained floor.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{Degraded, EVAL_BATCH, Parity, accuracy, degraded_accuracy, grouping};
use crate::coding::{CodingError, EncoderKind, LinearCode, parity_encoder};
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
    /// Parities per group (reports from before r ≥ 2: 1).
    #[serde(default = "one")]
    pub r: usize,
    pub encoder: EncoderKind,
    /// The learned decoder of a learned code (none: subtract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder: Option<crate::coding::Decoder>,
    pub test_images: usize,
    pub seed: u64,
    /// The base model's accuracy: what clients get when nothing is lost.
    pub available_accuracy: f64,
    /// Every group under each single erasure, decoded with the trained parity model.
    pub degraded: Degraded,
    /// The same with the base model standing in as the parity model.
    pub floor: Degraded,
    /// Per number of losses 1..=r: every pattern of that many erasures,
    /// decoded from all r parities (one row, the above, for r = 1).
    #[serde(default)]
    pub by_losses: Vec<Losses>,
}

/// Degraded accuracy under every pattern of `losses` erasures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Losses {
    pub losses: usize,
    pub degraded: Degraded,
    pub floor: Degraded,
}

fn one() -> usize {
    1
}

/// Scores the parity models of one code (`parities`: one card per parity
/// index, in any order) against `base` on `test`, groups drawn with `seed`.
pub fn evaluate(
    base: &Model,
    parities: &[&Model],
    test: &Split,
    seed: u64,
) -> Result<EvalReport, EvalError> {
    if base.card.is_parity() {
        return Err(EvalError::Mismatch(format!(
            "--base {} is a parity model; pass the base model's card",
            base.card.name
        )));
    }
    let Some(first) = parities.first() else {
        return Err(EvalError::Mismatch(
            "pass at least one --parity card".into(),
        ));
    };
    let Role::Parity {
        k,
        encoder: kind,
        r,
        ..
    } = first.card.role
    else {
        return Err(EvalError::Mismatch(format!(
            "--parity {} is a base model; pass a parity model's card",
            first.card.name
        )));
    };
    let code = LinearCode::new(k, r)?;
    if parities.len() != r {
        return Err(EvalError::Mismatch(format!(
            "{} is one of r = {r} parity models: pass all {r} (--parity, once per index), not {}",
            first.card.name,
            parities.len()
        )));
    }
    let mut by_index: Vec<Option<&Model>> = vec![None; r];
    for parity in parities {
        let Role::Parity {
            index,
            ref base_sha256,
            ..
        } = parity.card.role
        else {
            return Err(EvalError::Mismatch(format!(
                "--parity {} is a base model; pass a parity model's card",
                parity.card.name
            )));
        };
        parity
            .card
            .check_parity(&code, kind, index.min(r - 1))
            .map_err(EvalError::Mismatch)?;
        if !base_sha256.eq_ignore_ascii_case(&base.card.weights.sha256) {
            return Err(EvalError::Mismatch(format!(
                "parity model {} was trained for base weights {base_sha256}, not for {} ({})",
                parity.card.name, base.card.name, base.card.weights.sha256
            )));
        }
        if by_index[index].replace(parity).is_some() {
            return Err(EvalError::Mismatch(format!(
                "two --parity cards are parity {index} of the code"
            )));
        }
    }
    let models: Vec<&Model> = by_index.into_iter().flatten().collect();
    let input = base.network.input();
    let encoders = (0..r)
        .map(|l| parity_encoder(kind, &code, l, &input))
        .collect::<Result<Vec<_>, _>>()?;
    let base_logits: Tensor = base.network.forward_batched(&test.images, EVAL_BATCH)?;
    let groups = grouping(test.len(), k, seed);
    let score = |nets: &[&crate::model::Network], losses| {
        let parities: Vec<Parity<'_>> = nets
            .iter()
            .zip(&encoders)
            .enumerate()
            .map(|(index, (network, encoder))| Parity {
                index,
                network,
                encoder: encoder.as_ref(),
            })
            .collect();
        degraded_accuracy(
            &code,
            &parities,
            losses,
            &test.images,
            &base_logits,
            &test.labels,
            &groups,
        )
    };
    let trained: Vec<&crate::model::Network> = models.iter().map(|m| &m.network).collect();
    let floor_nets = vec![&base.network; r];
    let by_losses = (1..=r)
        .map(|losses| {
            Ok(Losses {
                losses,
                degraded: score(&trained, losses)?,
                floor: score(&floor_nets, losses)?,
            })
        })
        .collect::<Result<Vec<_>, CodingError>>()?;
    Ok(EvalReport {
        base: base.card.name.clone(),
        parity: models
            .iter()
            .map(|m| m.card.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        arch: base.card.arch,
        k,
        r,
        encoder: kind,
        decoder: None,
        test_images: test.len(),
        seed,
        available_accuracy: accuracy(&base_logits, &test.labels)?,
        degraded: by_losses[0].degraded,
        floor: by_losses[0].floor,
        by_losses,
    })
}

impl EvalReport {
    /// A plain-text table for the terminal.
    pub fn table(&self) -> String {
        let pct = |x: f64| format!("{:>6.2}%", x * 100.0);
        let mut s = format!(
            "{} + {} ({} k={}{} {}{}, {} test images, {} groups)\n",
            self.base,
            self.parity,
            self.arch,
            self.k,
            if self.r > 1 {
                format!(" r={}", self.r)
            } else {
                String::new()
            },
            self.encoder,
            match self.decoder {
                Some(d) => format!(" encoder, {d} decoder"),
                None => String::new(),
            },
            self.test_images,
            self.degraded.groups
        );
        let mut rows = vec![(
            "available (no loss)".to_owned(),
            self.available_accuracy,
            None,
        )];
        let (trained, floor) = match self.decoder {
            Some(_) => ("learned code", "untrained code"),
            None if self.r > 1 => ("parity models", "base as parity"),
            None => ("parity model", "base as parity"),
        };
        if self.r == 1 {
            rows.push((
                format!("degraded ({trained})"),
                self.degraded.overall,
                Some(self.degraded.reconstruction),
            ));
            rows.push((
                format!("floor ({floor})"),
                self.floor.overall,
                Some(self.floor.reconstruction),
            ));
        }
        for row in self.by_losses.iter().filter(|_| self.r > 1) {
            let n = row.losses;
            rows.push((
                format!("degraded, {n} lost ({trained})"),
                row.degraded.overall,
                Some(row.degraded.reconstruction),
            ));
            rows.push((
                format!("floor, {n} lost ({floor})"),
                row.floor.overall,
                Some(row.floor.reconstruction),
            ));
        }
        let width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0) + 3;
        s += &format!("{:width$}overall   reconstruction\n", "");
        for (label, overall, recon) in rows {
            s += &format!("{label:width$}{}", pct(overall));
            if let Some(recon) = recon {
                s += &format!("   {}", pct(recon));
            }
            s += "\n";
        }
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

/// The results table of docs/accuracy.md: one row per report and number
/// of losses (1..=r), the references beside the r = 1 rows they stand for.
pub fn markdown_table(reports: &[EvalReport]) -> String {
    let pct = |x: f64| format!("{:.1}%", x * 100.0);
    let opt = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.1}%"));
    let mut s = String::from(
        "| model | k | r | code | lost | available | degraded overall | degraded reconstruction | floor overall | reference degraded | reference floor |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for r in reports {
        let code = match r.decoder {
            Some(decoder) => format!("{} / {decoder}", r.encoder),
            None => r.encoder.to_string(),
        };
        let rows: Vec<(usize, Degraded, Degraded)> = if r.by_losses.is_empty() {
            vec![(1, r.degraded, r.floor)]
        } else {
            r.by_losses
                .iter()
                .map(|l| (l.losses, l.degraded, l.floor))
                .collect()
        };
        for (lost, degraded, floor_run) in rows {
            let (floor, reproduced) = if r.r == 1 && lost == 1 && r.decoder.is_none() {
                reference(r.arch, r.k, r.encoder)
            } else {
                (None, None)
            };
            s += &format!(
                "| {} | {} | {} | {code} | {lost} | {} | **{}** | {} | {} | {} | {} |\n",
                r.arch,
                r.k,
                r.r,
                pct(r.available_accuracy),
                pct(degraded.overall),
                pct(degraded.reconstruction),
                pct(floor_run.overall),
                opt(reproduced),
                opt(floor)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn degraded(overall: f64) -> Degraded {
        Degraded {
            overall,
            reconstruction: overall,
            groups: 10,
        }
    }

    fn report(r: usize, by_losses: Vec<Losses>) -> EvalReport {
        EvalReport {
            base: "b".into(),
            parity: "p".into(),
            arch: Arch::Mlp,
            k: 2,
            r,
            encoder: EncoderKind::Sum,
            decoder: None,
            test_images: 20,
            seed: 0,
            available_accuracy: 0.9,
            degraded: degraded(0.8),
            floor: degraded(0.5),
            by_losses,
        }
    }

    #[test]
    fn the_table_has_a_row_per_number_of_losses_and_references_only_for_r_one() {
        let losses = |n, overall| Losses {
            losses: n,
            degraded: degraded(overall),
            floor: degraded(0.2),
        };
        let table = markdown_table(&[
            report(1, Vec::new()),
            report(2, vec![losses(1, 0.81), losses(2, 0.77)]),
        ]);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), 3, "{table}");
        // r = 1: the reproduced recipe (78.8%) and floor (46.0%) beside it.
        assert!(
            rows[0].starts_with("| mlp | 2 | 1 | sum | 1 | 90.0% | **80.0%** |"),
            "{table}"
        );
        assert!(rows[0].ends_with("| 78.8% | 46.0% |"), "{table}");
        assert!(
            rows[1].starts_with("| mlp | 2 | 2 | sum | 1 | 90.0% | **81.0%** |"),
            "{table}"
        );
        assert!(
            rows[2].starts_with("| mlp | 2 | 2 | sum | 2 | 90.0% | **77.0%** |"),
            "{table}"
        );
        assert!(rows[2].ends_with("| 20.0% | – | – |"), "{table}");
    }
}
