//! Saving and loading a model: `card.json` + `model.safetensors`, with the
//! weights checked against the card's sha256 and against the architecture.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use candle_nn::VarMap;
use sha2::{Digest, Sha256};

use super::card::{CARD_FILE, CARD_FORMAT, WEIGHTS_FILE};
use super::{Model, ModelCard, Network, Placement};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a model card: {source}")]
    Card {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    InvalidCard { path: PathBuf, reason: String },
    #[error(
        "weights {path} do not match the card: sha256 is {actual}, the card says {expected} (tampered or wrong file)"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("weights {path} do not fit a {arch} network: {reason}")]
    Mismatch {
        path: PathBuf,
        arch: super::Arch,
        reason: String,
    },
    #[error("a {arch} network cannot run in {dtype} on {device}: {reason}")]
    Placement {
        arch: super::Arch,
        dtype: String,
        device: String,
        reason: String,
    },
    #[error(transparent)]
    Coding(#[from] crate::coding::CodingError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes the network's weights and its card (with the weights' sha256 and
/// parameter count filled in) into `dir`, and returns the card's path.
pub fn save(network: &Network, card: &mut ModelCard, dir: &Path) -> Result<PathBuf, ModelError> {
    card.arch = network.arch();
    save_vars(network.varmap(), card, dir)
}

/// Writes the variables of `vars` as the weights of `card` (a network's,
/// or a learned code's) into `dir`, fills in their sha256 and count, and
/// writes the card; returns the card's path.
pub fn save_vars(vars: &VarMap, card: &mut ModelCard, dir: &Path) -> Result<PathBuf, ModelError> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let weights = dir.join(WEIGHTS_FILE);
    let tensors: HashMap<String, Tensor> = vars
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&tensors, &weights)?;
    let bytes = std::fs::read(&weights).map_err(|source| ModelError::Read {
        path: weights.clone(),
        source,
    })?;
    card.format = CARD_FORMAT.to_string();
    card.weights.uri = WEIGHTS_FILE.to_string();
    card.weights.sha256 = sha256_hex(&bytes);
    card.weights.parameters = tensors.values().map(|t| t.elem_count()).sum();
    let card_path = dir.join(CARD_FILE);
    let json = serde_json::to_string_pretty(card).map_err(|source| ModelError::Card {
        path: card_path.clone(),
        source,
    })?;
    std::fs::write(&card_path, json + "\n").map_err(|source| ModelError::Write {
        path: card_path.clone(),
        source,
    })?;
    Ok(card_path)
}

/// Reads a card; `path` may be the card file or the directory holding it.
pub fn read_card(path: &Path) -> Result<(ModelCard, PathBuf), ModelError> {
    let card_path = if path.is_dir() {
        path.join(CARD_FILE)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read(&card_path).map_err(|source| ModelError::Read {
        path: card_path.clone(),
        source,
    })?;
    Ok((parse_card(&text, &card_path)?, card_path))
}

/// Parses and checks a card's JSON (`origin` names it in errors).
pub fn parse_card(text: &[u8], origin: &Path) -> Result<ModelCard, ModelError> {
    let card: ModelCard = serde_json::from_slice(text).map_err(|source| ModelError::Card {
        path: origin.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| ModelError::InvalidCard {
        path: origin.to_path_buf(),
        reason,
    };
    if card.format != CARD_FORMAT {
        return Err(invalid(format!(
            "card format {:?} is not {CARD_FORMAT:?}",
            card.format
        )));
    }
    if card.image_input().is_none() {
        return Err(invalid(format!(
            "input shape {:?} is not [channels, height, width]",
            card.input.shape
        )));
    }
    if card.input.datatype != "FP32" || card.output.datatype != "FP32" {
        return Err(invalid("only FP32 inputs and outputs are supported".into()));
    }
    if card.output.shape != [card.classes.len()] {
        return Err(invalid(format!(
            "output shape {:?} does not match {} classes",
            card.output.shape,
            card.classes.len()
        )));
    }
    if let super::Role::Parity { k, r, index, .. } = card.role {
        if k < crate::coding::MIN_K {
            return Err(invalid(format!("parity model for k = {k}; k must be ≥ 2")));
        }
        if r == 0 || index >= r {
            return Err(invalid(format!(
                "parity index {index} of r = {r} parities: the index must be below r"
            )));
        }
    }
    Ok(card)
}

/// Loads a model from its card (file or directory), checking the weights'
/// sha256 and that every tensor the architecture needs is there with the
/// right shape, and nothing else; placed on `placement`'s device in its
/// precision.
pub fn load(path: &Path, placement: &Placement) -> Result<Model, ModelError> {
    let (card, card_path) = read_card(path)?;
    let base = card_path.parent().unwrap_or(Path::new("."));
    let weights = base.join(&card.weights.uri);
    let bytes = std::fs::read(&weights).map_err(|source| ModelError::Read {
        path: weights.clone(),
        source,
    })?;
    load_from_bytes(card, &bytes, &weights, placement)
}

/// Checks the bytes of weights against the card's sha256 (`origin` names
/// them in errors).
pub fn check_sha256(card: &ModelCard, bytes: &[u8], origin: &Path) -> Result<(), ModelError> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(&card.weights.sha256) {
        Ok(())
    } else {
        Err(ModelError::Checksum {
            path: origin.to_path_buf(),
            expected: card.weights.sha256.clone(),
            actual,
        })
    }
}

/// Builds a model from a card and the bytes of its weights (`origin` names
/// them in errors), on `placement`'s device in its precision. A model placed
/// anywhere but f32 on the CPU runs one forward pass here, so that a
/// device or precision the network cannot run in fails at start.
pub fn load_from_bytes(
    card: ModelCard,
    bytes: &[u8],
    origin: &Path,
    placement: &Placement,
) -> Result<Model, ModelError> {
    if card.is_code() {
        return Err(ModelError::InvalidCard {
            path: origin.to_path_buf(),
            reason: format!(
                "{} is a learned code (encoder and decoder), not a model: pass it as --code",
                card.name
            ),
        });
    }
    check_sha256(&card, bytes, origin)?;
    let mismatch = |reason: String| ModelError::Mismatch {
        path: origin.to_path_buf(),
        arch: card.arch,
        reason,
    };
    let input = card
        .image_input()
        .ok_or_else(|| mismatch("card input is not an image".into()))?;
    let tensors = candle_core::safetensors::load_buffer(bytes, &placement.device)
        .map_err(|e| mismatch(format!("not a safetensors file: {e}")))?;
    let network = Network::placed(card.arch, input, card.classes.len(), 0, placement)?;
    fill(network.varmap(), &tensors).map_err(mismatch)?;
    if placement.dtype != candle_core::DType::F32 || !placement.device.is_cpu() {
        probe(&network, input).map_err(|e| ModelError::Placement {
            arch: card.arch,
            dtype: placement.dtype.as_str().to_owned(),
            device: crate::device::name(&placement.device),
            reason: e.to_string().lines().next().unwrap_or_default().to_owned(),
        })?;
    }
    Ok(Model { card, network })
}

/// Sets every variable of `vars` from `tensors`: each one there with the
/// right shape, and nothing else (the reason why not, otherwise).
pub fn fill(vars: &VarMap, tensors: &HashMap<String, Tensor>) -> Result<(), String> {
    let vars = vars
        .data()
        .lock()
        .map_err(|_| "variable map lock poisoned".to_string())?;
    let mut missing: Vec<&String> = vars.keys().filter(|n| !tensors.contains_key(*n)).collect();
    missing.sort();
    if !missing.is_empty() {
        return Err(format!("missing tensors {missing:?}"));
    }
    let mut extra: Vec<&String> = tensors.keys().filter(|n| !vars.contains_key(*n)).collect();
    extra.sort();
    if !extra.is_empty() {
        return Err(format!("unexpected tensors {extra:?}"));
    }
    for (name, var) in vars.iter() {
        let t = &tensors[name];
        if t.dims() != var.dims() {
            return Err(format!(
                "tensor {name} has shape {:?}, the network needs {:?}",
                t.dims(),
                var.dims()
            ));
        }
        t.to_dtype(var.dtype())
            .and_then(|t| var.set(&t))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One forward pass of a zero image: every layer's kernel in the
/// network's device and precision.
fn probe(network: &Network, input: [usize; 3]) -> candle_core::Result<()> {
    let [c, h, w] = input;
    let xs = Tensor::zeros((1, c, h, w), candle_core::DType::F32, network.device())?;
    network.forward(&xs)?.to_vec2::<f32>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::card::{Role, TensorSpec, WeightsRef};
    use crate::model::{Arch, argmax};
    use candle_core::Device;

    fn cpu() -> Placement {
        Placement::f32(Device::Cpu)
    }

    pub(crate) fn base_card(arch: Arch) -> ModelCard {
        ModelCard {
            format: CARD_FORMAT.into(),
            name: "test".into(),
            arch,
            role: Role::Base,
            input: TensorSpec {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![1, 28, 28],
            },
            output: TensorSpec {
                name: "logits".into(),
                datatype: "FP32".into(),
                shape: vec![10],
            },
            classes: (0..10).map(|i| i.to_string()).collect(),
            weights: WeightsRef {
                uri: String::new(),
                sha256: String::new(),
                parameters: 0,
            },
            training: None,
        }
    }

    fn saved(arch: Arch) -> (tempfile::TempDir, Network, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let net = Network::new(arch, [1, 28, 28], 10, 3, &Device::Cpu).unwrap();
        let mut card = base_card(arch);
        let path = save(&net, &mut card, dir.path()).unwrap();
        (dir, net, path)
    }

    #[test]
    fn save_load_round_trip_gives_the_same_outputs() {
        for arch in [Arch::Mlp, Arch::Cnn] {
            let (dir, net, _) = saved(arch);
            let model = load(dir.path(), &cpu()).unwrap();
            assert_eq!(model.card.weights.sha256.len(), 64);
            let xs = Tensor::rand(0f32, 1., (4, 1, 28, 28), &Device::Cpu).unwrap();
            let a = net.forward(&xs).unwrap();
            let b = model.network.forward(&xs).unwrap();
            assert_eq!(argmax(&a).unwrap(), argmax(&b).unwrap());
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        }
    }

    /// Half precision on the CPU: weights cast at load, logits back in f32,
    /// close to the f32 model's.
    #[test]
    fn f16_placements_load_and_agree_with_f32() {
        let placement = Placement {
            device: Device::Cpu,
            dtype: candle_core::DType::F16,
        };
        for arch in [Arch::Mlp, Arch::Cnn, Arch::Resnet18] {
            let (dir, net, _) = saved(arch);
            let xs = Tensor::rand(0f32, 1., (3, 1, 28, 28), &Device::Cpu).unwrap();
            let want = net.forward(&xs).unwrap();
            let model =
                load(dir.path(), &placement).unwrap_or_else(|e| panic!("{arch} in f16: {e}"));
            assert_eq!(model.network.dtype(), candle_core::DType::F16);
            let got = model.network.forward(&xs).unwrap();
            assert_eq!(got.dtype(), candle_core::DType::F32);
            let diff = (&want - got).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(diff < 0.05, "{arch} in f16: max difference {diff}");
        }
    }

    /// candle's CPU backend has no bf16 convolution: the load refuses the
    /// placement with one clear line instead of failing on the first request.
    #[test]
    fn a_precision_the_device_cannot_run_fails_at_load() {
        let (dir, _, _) = saved(Arch::Cnn);
        let placement = Placement {
            device: Device::Cpu,
            dtype: candle_core::DType::BF16,
        };
        let err = load(dir.path(), &placement).err().unwrap().to_string();
        assert!(
            err.starts_with("a cnn network cannot run in bf16 on cpu: "),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn tampered_weights_are_refused() {
        let (dir, _, _) = saved(Arch::Mlp);
        let w = dir.path().join(WEIGHTS_FILE);
        let mut bytes = std::fs::read(&w).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&w, bytes).unwrap();
        let err = load(dir.path(), &cpu()).err().unwrap().to_string();
        assert!(err.contains("tampered"), "{err}");
    }

    #[test]
    fn weights_of_another_arch_are_refused() {
        let (dir, _, card_path) = saved(Arch::Mlp);
        let mut card: ModelCard =
            serde_json::from_str(&std::fs::read_to_string(&card_path).unwrap()).unwrap();
        card.arch = Arch::Cnn;
        std::fs::write(&card_path, serde_json::to_string(&card).unwrap()).unwrap();
        let err = load(dir.path(), &cpu()).err().unwrap().to_string();
        assert!(err.contains("do not fit a cnn network"), "{err}");
    }

    #[test]
    fn bad_cards_are_refused() {
        let (dir, _, card_path) = saved(Arch::Mlp);
        std::fs::write(&card_path, "{not json").unwrap();
        let err = load(dir.path(), &cpu()).err().unwrap().to_string();
        assert!(err.contains("is not a model card"), "{err}");

        let mut card = base_card(Arch::Mlp);
        card.role = Role::Parity {
            k: 1,
            encoder: crate::coding::EncoderKind::Sum,
            base_sha256: String::new(),
            base_name: String::new(),
            r: 1,
            index: 0,
            coefficients: Vec::new(),
        };
        std::fs::write(&card_path, serde_json::to_string(&card).unwrap()).unwrap();
        let err = load(dir.path(), &cpu()).err().unwrap().to_string();
        assert!(err.contains("k must be ≥ 2"), "{err}");
        if let Role::Parity { k, index, r, .. } = &mut card.role {
            (*k, *index, *r) = (2, 2, 2);
        }
        std::fs::write(&card_path, serde_json::to_string(&card).unwrap()).unwrap();
        let err = load(dir.path(), &cpu()).err().unwrap().to_string();
        assert!(err.contains("the index must be below r"), "{err}");

        let err = load(&dir.path().join("nope.json"), &cpu())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }
}
