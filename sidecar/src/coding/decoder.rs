//! How missing outputs are rebuilt (`--decoder`): the arithmetic is the
//! linear code's ([`super::linear`]) or a learned network's
//! ([`super::learned`]).

/// How a missing output is rebuilt.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Decoder {
    /// Subtract the outputs that arrived from the parity outputs and solve
    /// for the missing ones (r = 1: F(Xᵢ) ≈ F_P(P) − Σ_{j≠i} F(Xⱼ)).
    #[default]
    Subtract,
    /// Learned (Learning a Code): an MLP over the k + r outputs, missing
    /// ones zeroed, trained with its encoder (`train code`).
    Mlp,
}

impl std::fmt::Display for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decoder::Subtract => "subtract",
            Decoder::Mlp => "mlp",
        })
    }
}
