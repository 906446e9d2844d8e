//! How missing outputs are rebuilt (`--decoder`): the arithmetic is the
//! linear code's ([`super::linear`]).

/// How a missing output is rebuilt.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
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
}
