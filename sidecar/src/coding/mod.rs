//! The erasure code: encoders turn a group of k queries into a parity
//! query per parity (r of them); the decoder rebuilds up to r missing
//! predictions from the parity models' outputs and the other predictions
//! (`linear`: the code's coefficients and the solve).
//!
//! `berrut` is a second kind of code, with no parity model: k queries are
//! interpolated into n coded queries that the base model itself serves.
//!
//! Everything works on batches of groups: queries are `[groups, k, ...item]`.

pub mod berrut;
pub mod decoder;
pub mod encoder;
pub mod learned;
pub mod linear;

use serde::{Deserialize, Serialize};

pub use berrut::BerrutCode;
pub use decoder::Decoder;
pub use encoder::{ConcatEncoder, Encoder, SumEncoder, encoder, parity_encoder};
pub use learned::{LearnedCode, LearnedParity, LearnedSpec};
pub use linear::{LinearCode, MAX_R, Weights, erasure_patterns};

/// Which encoder a parity model was trained for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    /// P = Σ Xᵢ, for any tensor.
    Sum,
    /// The k images downsampled and tiled into one image of the same size.
    Concat,
    /// Learned (Learning a Code): a two-layer MLP over the k flattened
    /// queries gives r parity queries, served by the base model itself.
    Mlp,
    /// Learned: dilated convolutions over the k images stacked as channels.
    Conv,
}

impl EncoderKind {
    /// Learned encoders come with a learned decoder and their own weights
    /// (`train code`), and their parities are served by the base model.
    pub fn is_learned(self) -> bool {
        matches!(self, EncoderKind::Mlp | EncoderKind::Conv)
    }
}

impl std::fmt::Display for EncoderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EncoderKind::Sum => "sum",
            EncoderKind::Concat => "concat",
            EncoderKind::Mlp => "mlp",
            EncoderKind::Conv => "conv",
        })
    }
}

/// Which kind of code the frontend serves (`--code`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum CodeKind {
    /// ParM's: k queries to model instances, r encoded ones to parity
    /// models trained for the code; lost outputs are solved for.
    #[default]
    Parity,
    /// Berrut (ApproxIFER): k queries interpolated into n coded queries
    /// that n base-model instances serve; every answer is interpolated
    /// back from the first k (or, at the deadline, however many) to arrive.
    Berrut,
}

impl std::fmt::Display for CodeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CodeKind::Parity => "parity",
            CodeKind::Berrut => "berrut",
        })
    }
}

/// Smallest group: with k = 1 a parity model is plain replication.
pub const MIN_K: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum CodingError {
    #[error("k = {0} is not a code: a coding group needs k ≥ {MIN_K} queries")]
    KTooSmall(usize),
    #[error("a coding group of this code has {expected} queries, got {found}")]
    GroupSize { expected: usize, found: usize },
    #[error("queries of shape {found:?} do not match the encoder's item shape {expected:?}")]
    ItemShape {
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("the {encoder} encoder cannot encode items of shape {shape:?}: {reason}")]
    UnsupportedShape {
        encoder: EncoderKind,
        shape: Vec<usize>,
        reason: String,
    },
    #[error("{values} values are not {groups} groups of {k} queries of {item} values")]
    FlatLength {
        values: usize,
        groups: usize,
        k: usize,
        item: usize,
    },
    #[error("outputs of shape {found:?} do not fit the parity output of shape {expected:?}")]
    OutputShape {
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error(
        "r = {r} parities per group of k = {k}: a code has 1 ≤ r ≤ k and r ≤ {}",
        linear::MAX_R
    )]
    Parities { k: usize, r: usize },
    #[error(
        "the concat encoder has one parity per group (r = 1), not {0}: tiling has no second, independent combination of the k images"
    )]
    ConcatParities(usize),
    #[error("erasures {lost:?} with parities {parities:?} do not fit a code with k = {k}, r = {r}")]
    Erasures {
        k: usize,
        r: usize,
        lost: Vec<usize>,
        parities: Vec<usize>,
    },
    #[error(
        "{lost} outputs of a group are lost but only {parities} parity outputs are in: at most as many losses as parities can be rebuilt"
    )]
    TooManyLosses { lost: usize, parities: usize },
    #[error(
        "a Berrut code of k = {k} queries needs n coded queries with k < n ≤ {}, not n = {n}",
        berrut::MAX_N
    )]
    CodedQueries { k: usize, n: usize },
    #[error("coded answers {arrived:?} are not distinct answers among n = {n}, or none")]
    Arrived { n: usize, arrived: Vec<usize> },
    #[error(
        "the {0} encoder is learned: it is trained with its decoder (`train code`) and loaded from the code's card, not built by hand"
    )]
    LearnedEncoder(EncoderKind),
    #[error("a learned code decodes with the mlp decoder, not {0}")]
    LearnedDecoder(Decoder),
    #[error("the code's sub-matrix for these erasures is singular")]
    Singular,
    #[error("output {0} of the group is needed to decode but missing")]
    MissingOutput(usize),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}
