//! The model card: a small JSON file beside the weights that says what the
//! model is, what it takes and returns, how it was trained, and the sha256
//! of its weights.

use serde::{Deserialize, Serialize};

use super::Arch;
use crate::coding::{Decoder, EncoderKind, LinearCode};

/// Version tag of the card format.
pub const CARD_FORMAT: &str = "coded-serving/model-card/v1";
/// File name of a card inside a model directory.
pub const CARD_FILE: &str = "card.json";
/// File name of the weights inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub format: String,
    pub name: String,
    pub arch: Arch,
    pub role: Role,
    pub input: TensorSpec,
    pub output: TensorSpec,
    /// Class names, index = logit position.
    pub classes: Vec<String>,
    pub weights: WeightsRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
}

/// Base model, parity model trained for a code, or a learned code's
/// encoder and decoder (whose parities the base model serves).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Role {
    Base,
    Parity {
        k: usize,
        encoder: EncoderKind,
        /// Which base model's outputs it learned to sum (its weights' sha256).
        base_sha256: String,
        base_name: String,
        /// Parities of the code (cards from before r ≥ 2 say nothing: 1).
        #[serde(default = "one")]
        r: usize,
        /// Which parity of the code this model is, 0..r.
        #[serde(default)]
        index: usize,
        /// Row `index` of the code: it learned Σ_j c_j F(X_j) (empty on
        /// older cards: all ones, the sum).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        coefficients: Vec<f64>,
    },
    /// A learned code (Learning a Code): encoder and decoder networks
    /// trained with the base model frozen; the card's arch, input, output
    /// and classes are the base model's.
    Code {
        k: usize,
        r: usize,
        encoder: EncoderKind,
        decoder: Decoder,
        base_sha256: String,
        base_name: String,
    },
}

fn one() -> usize {
    1
}

/// Shape (without the batch dimension) and KServe v2 datatype of a tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsRef {
    /// Path relative to the card, or a URI.
    pub uri: String,
    pub sha256: String,
    pub parameters: usize,
}

/// How the weights were made, and what they scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Training {
    pub dataset: String,
    pub seed: u64,
    pub epochs: usize,
    /// The epoch whose weights were kept (best validation score).
    pub best_epoch: usize,
    pub batch_size: usize,
    pub optimizer: String,
    pub learning_rate: f64,
    pub weight_decay: f64,
    pub train_examples: usize,
    /// Base: validation accuracy; parity: validation reconstruction accuracy.
    pub validation_accuracy: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    pub wall_seconds: f64,
    pub images_per_second: f64,
    /// The loss, where the role leaves a choice (learned codes: mse or xent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
}

impl ModelCard {
    /// The `[channels, height, width]` input this card's networks take.
    pub fn image_input(&self) -> Option<[usize; 3]> {
        match self.input.shape.as_slice() {
            &[c, h, w] => Some([c, h, w]),
            _ => None,
        }
    }

    pub fn is_parity(&self) -> bool {
        matches!(self.role, Role::Parity { .. })
    }

    pub fn is_code(&self) -> bool {
        matches!(self.role, Role::Code { .. })
    }

    /// Checks that this is the learned code (k, r, encoder, decoder) asked
    /// for: one line saying what differs.
    pub fn check_code(
        &self,
        k: usize,
        r: usize,
        encoder: EncoderKind,
        decoder: Decoder,
    ) -> Result<(), String> {
        let Role::Code {
            k: ck,
            r: cr,
            encoder: ce,
            decoder: cd,
            ..
        } = self.role
        else {
            return Err(format!(
                "{} is not a learned code's card (train one with `train code`)",
                self.name
            ));
        };
        if (ck, cr, ce, cd) != (k, r, encoder, decoder) {
            return Err(format!(
                "learned code {} is k = {ck}, r = {cr}, encoder {ce}, decoder {cd}, but the flags ask for k = {k}, r = {r}, encoder {encoder}, decoder {decoder}",
                self.name
            ));
        }
        Ok(())
    }

    /// Checks that this is parity `index` of `code` with `encoder`: one
    /// line saying what differs, for the frontend, `local` and `eval`.
    pub fn check_parity(
        &self,
        code: &LinearCode,
        encoder: EncoderKind,
        index: usize,
    ) -> Result<(), String> {
        let Role::Parity {
            k,
            encoder: trained,
            r,
            index: card_index,
            ref coefficients,
            ..
        } = self.role
        else {
            return Err(format!("{} is a base model, not a parity model", self.name));
        };
        let (want_k, want_r) = (code.k(), code.r());
        if (k, r, trained, card_index) != (want_k, want_r, encoder, index) {
            return Err(format!(
                "parity model {} is parity {card_index} of k = {k}, r = {r}, {trained}, but parity {index} of k = {want_k}, r = {want_r}, {encoder} is needed",
                self.name
            ));
        }
        let ones = vec![1.0; k];
        let coefficients = if coefficients.is_empty() {
            &ones
        } else {
            coefficients
        };
        if !code.matches_row(index, coefficients) {
            return Err(format!(
                "parity model {} was trained with coefficients {coefficients:?}, not this code's {:?}",
                self.name,
                code.row(index)
            ));
        }
        Ok(())
    }
}
