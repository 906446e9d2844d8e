//! Learned codes (Learning a Code, Kosaian, Rashmi, Venkataraman, arXiv
//! 1806.01259): the encoder and the decoder are small networks trained with
//! the base model F frozen, and F itself serves the parity queries.
//!
//! - encoder `mlp`: the k queries flattened (k·d) → Linear(k·d, k·d) → ReLU →
//!   Linear(k·d, r·d): r parity queries of the item's shape;
//! - encoder `conv`: the k images stacked as channels through dilated 3×3
//!   convolutions (20·k channels, dilations 1, 1, 2, 4, 8, 1) and a 1×1 one
//!   to r channels: r images (multi-channel items are coded per channel);
//! - decoder `mlp`: the k + r outputs concatenated ((k+r)·o, a missing one
//!   zeroed) → Linear((k+r)·o, (k+r)·o) → ReLU → Linear(·, k·o) → ReLU →
//!   Linear(k·o, k·o): the k outputs, of which the lost ones are used.
//!
//! Pure math on tensors; weights come in through a `VarBuilder`.

use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarBuilder, conv2d, linear};

use super::{CodingError, Decoder, Encoder, EncoderKind, MIN_K};

/// What a learned code is: its size, its networks and the shapes it codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedSpec {
    pub k: usize,
    pub r: usize,
    pub encoder: EncoderKind,
    pub decoder: Decoder,
    /// One query's shape, `[channels, height, width]`.
    pub item: Vec<usize>,
    /// Values in one model output (the classes' logits).
    pub classes: usize,
}

/// Channels per query in the conv encoder's hidden layers (the paper's 20).
const CONV_CHANNELS_PER_QUERY: usize = 20;
/// Dilations of the conv encoder's 3×3 layers; the receptive field (33
/// pixels) covers a 28×28 image, so every parity pixel sees every query.
const CONV_DILATIONS: [usize; 6] = [1, 1, 2, 4, 8, 1];

impl LearnedSpec {
    fn check(&self) -> Result<(), CodingError> {
        if self.k < MIN_K {
            return Err(CodingError::KTooSmall(self.k));
        }
        if self.r == 0 || self.r > self.k {
            return Err(CodingError::Parities {
                k: self.k,
                r: self.r,
            });
        }
        let unsupported = |reason: &str| CodingError::UnsupportedShape {
            encoder: self.encoder,
            shape: self.item.clone(),
            reason: reason.into(),
        };
        if !self.encoder.is_learned() {
            return Err(unsupported("a learned code needs the mlp or conv encoder"));
        }
        if self.decoder != Decoder::Mlp {
            return Err(CodingError::LearnedDecoder(self.decoder));
        }
        if self.item.len() != 3 || self.item.contains(&0) {
            return Err(unsupported("queries must be [channels, height, width]"));
        }
        if self.classes == 0 {
            return Err(unsupported("model outputs must not be empty"));
        }
        Ok(())
    }

    fn item_len(&self) -> usize {
        self.item.iter().product()
    }
}

enum LearnedEncoder {
    Mlp(Linear, Linear),
    Conv(Vec<Conv2d>),
}

/// The encoder and decoder networks of a learned code.
pub struct LearnedCode {
    spec: LearnedSpec,
    encoder: LearnedEncoder,
    /// Three layers: (k+r)·o → (k+r)·o → k·o → k·o.
    decoder: [Linear; 3],
}

impl std::fmt::Debug for LearnedCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LearnedCode")
            .field("spec", &self.spec)
            .finish()
    }
}

impl LearnedCode {
    /// Builds the networks; their variables are `encoder.*` and `decoder.*`
    /// in `vb` (fresh from a `VarMap` to train, or loaded weights).
    pub fn new(spec: LearnedSpec, vb: VarBuilder) -> Result<Self, CodingError> {
        spec.check()?;
        let (k, r, d, o) = (spec.k, spec.r, spec.item_len(), spec.classes);
        let enc = vb.pp("encoder");
        let encoder = match spec.encoder {
            EncoderKind::Conv => {
                let hidden = CONV_CHANNELS_PER_QUERY * k;
                let mut layers = Vec::with_capacity(CONV_DILATIONS.len() + 1);
                let mut channels = k;
                for (i, &dilation) in CONV_DILATIONS.iter().enumerate() {
                    let cfg = Conv2dConfig {
                        padding: dilation,
                        dilation,
                        ..Default::default()
                    };
                    layers.push(conv2d(channels, hidden, 3, cfg, enc.pp(i))?);
                    channels = hidden;
                }
                let last = CONV_DILATIONS.len();
                layers.push(conv2d(hidden, r, 1, Default::default(), enc.pp(last))?);
                LearnedEncoder::Conv(layers)
            }
            _ => LearnedEncoder::Mlp(
                linear(k * d, k * d, enc.pp(0))?,
                linear(k * d, r * d, enc.pp(1))?,
            ),
        };
        let dec = vb.pp("decoder");
        let decoder = [
            linear((k + r) * o, (k + r) * o, dec.pp(0))?,
            linear((k + r) * o, k * o, dec.pp(1))?,
            linear(k * o, k * o, dec.pp(2))?,
        ];
        Ok(Self {
            spec,
            encoder,
            decoder,
        })
    }

    pub fn spec(&self) -> &LearnedSpec {
        &self.spec
    }

    /// `[groups, k, ...item]` queries → `[groups, r, ...item]` parity queries.
    pub fn encode(&self, queries: &Tensor) -> Result<Tensor, CodingError> {
        let (k, r) = (self.spec.k, self.spec.r);
        let dims = queries.dims();
        if dims.len() != 5 || dims[1] != k || dims[2..] != self.spec.item[..] {
            return Err(CodingError::ItemShape {
                expected: self.spec.item.clone(),
                found: dims.get(2..).unwrap_or_default().to_vec(),
            });
        }
        let g = dims[0];
        let (c, h, w) = (dims[2], dims[3], dims[4]);
        let parity = match &self.encoder {
            LearnedEncoder::Mlp(l1, l2) => {
                let x = queries.reshape((g, k * c * h * w))?;
                l2.forward(&l1.forward(&x)?.relu()?)?
                    .reshape((g, r, c, h, w))?
            }
            LearnedEncoder::Conv(layers) => {
                // Channel ch of the k queries is coded on its own, as in the paper.
                let mut x = queries
                    .transpose(1, 2)?
                    .contiguous()?
                    .reshape((g * c, k, h, w))?;
                let last = layers.len() - 1;
                for (i, layer) in layers.iter().enumerate() {
                    x = layer.forward(&x)?;
                    if i < last {
                        x = x.relu()?;
                    }
                }
                x.reshape((g, c, r, h, w))?.transpose(1, 2)?.contiguous()?
            }
        };
        Ok(parity)
    }

    /// `[groups, k + r, o]` outputs (the k model outputs, then the r parity
    /// outputs, a missing one all zeros) → `[groups, k, o]` rebuilt outputs.
    pub fn decode(&self, outputs: &Tensor) -> Result<Tensor, CodingError> {
        let (k, r, o) = (self.spec.k, self.spec.r, self.spec.classes);
        let dims = outputs.dims();
        if dims.len() != 3 || dims[1] != k + r || dims[2] != o {
            return Err(CodingError::OutputShape {
                expected: vec![k + r, o],
                found: dims.get(1..).unwrap_or_default().to_vec(),
            });
        }
        let g = dims[0];
        let [l1, l2, l3] = &self.decoder;
        let x = outputs.reshape((g, (k + r) * o))?;
        let x = l2.forward(&l1.forward(&x)?.relu()?)?.relu()?;
        Ok(l3.forward(&x)?.reshape((g, k, o))?)
    }

    /// Decodes every group under every erasure pattern at once: `outputs`
    /// `[groups, k + r, o]` all present, `keep` from [`Self::erasure_masks`];
    /// gives `[groups, patterns, k, o]`.
    pub fn decode_patterns(&self, outputs: &Tensor, keep: &Tensor) -> Result<Tensor, CodingError> {
        let (k, r, o) = (self.spec.k, self.spec.r, self.spec.classes);
        let g = outputs.dim(0)?;
        let p = keep.dim(0)?;
        let erased = outputs
            .unsqueeze(1)?
            .broadcast_mul(&keep.unsqueeze(0)?)?
            .reshape((g * p, k + r, o))?;
        Ok(self.decode(&erased)?.reshape((g, p, k, o))?)
    }

    /// The frontend's form of [`Self::decode`]: one group's outputs, `None`
    /// where missing, each `o` values; gives the rebuilt output of each slot
    /// in `lost`.
    pub fn decode_group(
        &self,
        outputs: &[Option<&[f32]>],
        lost: &[usize],
    ) -> Result<Vec<Vec<f32>>, CodingError> {
        let (k, r, o) = (self.spec.k, self.spec.r, self.spec.classes);
        if outputs.len() != k + r {
            return Err(CodingError::GroupSize {
                expected: k + r,
                found: outputs.len(),
            });
        }
        let mut flat = vec![0f32; (k + r) * o];
        for (slot, out) in flat.chunks_exact_mut(o).zip(outputs) {
            match out {
                Some(v) if v.len() == o => slot.copy_from_slice(v),
                Some(v) => {
                    return Err(CodingError::OutputShape {
                        expected: vec![o],
                        found: vec![v.len()],
                    });
                }
                None => {}
            }
        }
        if let Some(&j) = lost.iter().find(|&&j| j >= k || outputs[j].is_some()) {
            return Err(CodingError::Erasures {
                k,
                r,
                lost: vec![j],
                parities: vec![],
            });
        }
        // CPU by design, like the hand-written codes: a few small products.
        let x = Tensor::from_vec(flat, (1, k + r, o), &Device::Cpu)?;
        let rebuilt = self.decode(&x)?.reshape((k, o))?;
        lost.iter()
            .map(|&j| Ok(rebuilt.get(j)?.to_vec1::<f32>()?))
            .collect()
    }

    /// Masks that erase each pattern of `patterns` (slots of the k model
    /// outputs): `[patterns, k + r, 1]` with zeros where lost (to multiply
    /// the decoder's input) and `[patterns, k]` with ones where lost (to
    /// pick the reconstructions that count).
    pub fn erasure_masks(
        &self,
        patterns: &[Vec<usize>],
        device: &Device,
    ) -> Result<(Tensor, Tensor), CodingError> {
        let (k, r) = (self.spec.k, self.spec.r);
        let mut keep = vec![1f32; patterns.len() * (k + r)];
        let mut lost = vec![0f32; patterns.len() * k];
        for (p, pattern) in patterns.iter().enumerate() {
            for &j in pattern {
                if j >= k {
                    return Err(CodingError::Erasures {
                        k,
                        r,
                        lost: pattern.clone(),
                        parities: vec![],
                    });
                }
                keep[p * (k + r) + j] = 0.0;
                lost[p * k + j] = 1.0;
            }
        }
        Ok((
            Tensor::from_vec(keep, (patterns.len(), k + r, 1), device)?,
            Tensor::from_vec(lost, (patterns.len(), k), device)?,
        ))
    }
}

/// One parity query of a learned code as an [`Encoder`], so the frontend
/// dispatches learned parities like the hand-written ones.
pub struct LearnedParity {
    code: Arc<LearnedCode>,
    index: usize,
}

impl LearnedParity {
    pub fn new(code: Arc<LearnedCode>, index: usize) -> Result<Self, CodingError> {
        if index >= code.spec.r {
            return Err(CodingError::Parities {
                k: code.spec.k,
                r: index + 1,
            });
        }
        Ok(Self { code, index })
    }
}

impl Encoder for LearnedParity {
    fn kind(&self) -> EncoderKind {
        self.code.spec.encoder
    }
    fn k(&self) -> usize {
        self.code.spec.k
    }
    fn item_shape(&self) -> &[usize] {
        &self.code.spec.item
    }
    fn encode(&self, queries: &Tensor) -> Result<Tensor, CodingError> {
        self.check_groups(queries)?;
        let queries = queries.to_dtype(DType::F32)?;
        Ok(self.code.encode(&queries)?.get_on_dim(1, self.index)?)
    }
}

#[cfg(test)]
mod tests;
