//! The erasure code: encoders turn a group of k queries into one parity
//! query; the decoder rebuilds a missing prediction from the parity model's
//! output and the other k−1 predictions.
//!
//! Everything works on batches of groups: queries are `[groups, k, ...item]`.

pub mod decoder;
pub mod encoder;

use serde::{Deserialize, Serialize};

pub use decoder::Decoder;
pub use encoder::{ConcatEncoder, Encoder, SumEncoder, encoder};

/// Which encoder a parity model was trained for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    /// P = Σ Xᵢ, for any tensor.
    Sum,
    /// The k images downsampled and tiled into one image of the same size.
    Concat,
}

impl std::fmt::Display for EncoderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EncoderKind::Sum => "sum",
            EncoderKind::Concat => "concat",
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
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}
