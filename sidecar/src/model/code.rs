//! A learned code on disk: its card (role `code`: k, r, encoder, decoder,
//! and the base model it was trained for) and its encoder's and decoder's
//! weights, in the same layout as a model (`card.json` + `model.safetensors`).

use std::path::Path;

use candle_core::Device;
use candle_nn::{VarBuilder, VarMap};

use super::store::{ModelError, check_sha256, fill, read_card};
use super::{ModelCard, Role};
use crate::coding::{LearnedCode, LearnedSpec};

/// A learned code with its card and variables.
pub struct CodeModel {
    pub card: ModelCard,
    pub code: LearnedCode,
    pub vars: VarMap,
}

/// The spec a code card describes (item shape and classes: the base's).
pub fn spec(card: &ModelCard, origin: &Path) -> Result<LearnedSpec, ModelError> {
    let Role::Code {
        k,
        r,
        encoder,
        decoder,
        ..
    } = card.role
    else {
        return Err(ModelError::InvalidCard {
            path: origin.to_path_buf(),
            reason: format!(
                "{} is not a learned code's card (train one with `train code`)",
                card.name
            ),
        });
    };
    Ok(LearnedSpec {
        k,
        r,
        encoder,
        decoder,
        item: card.input.shape.clone(),
        classes: card.classes.len(),
    })
}

/// Fresh networks for `spec` on `device`, initialised from `seed` like the
/// models (uniform in ±1/sqrt(fan_in)).
pub fn fresh(
    spec: LearnedSpec,
    seed: u64,
    device: &Device,
) -> Result<(LearnedCode, VarMap), ModelError> {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, candle_core::DType::F32, device);
    let code = LearnedCode::new(spec, vb)?;
    super::init::reseed(&vars, seed)?;
    Ok((code, vars))
}

/// Loads a learned code from its card (file or directory), its weights
/// checked against the card's sha256 and the networks' shapes, on `device`.
pub fn load_code(path: &Path, device: &Device) -> Result<CodeModel, ModelError> {
    let (card, card_path) = read_card(path)?;
    let dir = card_path.parent().unwrap_or(Path::new("."));
    let weights = dir.join(&card.weights.uri);
    let bytes = std::fs::read(&weights).map_err(|source| ModelError::Read {
        path: weights.clone(),
        source,
    })?;
    code_from_bytes(card, &bytes, &weights, device)
}

/// Builds a learned code from its card and the bytes of its weights.
pub fn code_from_bytes(
    card: ModelCard,
    bytes: &[u8],
    origin: &Path,
    device: &Device,
) -> Result<CodeModel, ModelError> {
    let spec = spec(&card, origin)?;
    check_sha256(&card, bytes, origin)?;
    let mismatch = |reason: String| ModelError::Mismatch {
        path: origin.to_path_buf(),
        arch: card.arch,
        reason,
    };
    let tensors = candle_core::safetensors::load_buffer(bytes, device)
        .map_err(|e| mismatch(format!("not a safetensors file: {e}")))?;
    let (code, vars) = fresh(spec, 0, device)?;
    fill(&vars, &tensors).map_err(|e| mismatch(format!("learned code: {e}")))?;
    Ok(CodeModel { card, code, vars })
}
