//! The `subtract` decoder: F(Xᵢ) ≈ F_P(P) − Σ_{j≠i} F(Xⱼ).

use candle_core::Tensor;

use super::CodingError;

/// How a missing output is rebuilt. Only `subtract` exists today; r > 1
/// codes will add coefficients here.
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
    #[default]
    Subtract,
}

impl Decoder {
    /// Rebuilds one output per group from the parity output `[groups, ...out]`
    /// and the k−1 outputs that did arrive, `[groups, k−1, ...out]`.
    pub fn decode(&self, parity: &Tensor, others: &Tensor) -> Result<Tensor, CodingError> {
        check_shapes(parity, others)?;
        Ok((parity - others.sum(1)?)?)
    }

    /// Every single-erasure reconstruction at once: from all k outputs
    /// `[groups, k, ...out]`, element `[g, i]` of the result is what the
    /// decoder gives for query i of group g when that query is the lost one.
    pub fn decode_each(&self, parity: &Tensor, outputs: &Tensor) -> Result<Tensor, CodingError> {
        check_shapes(parity, outputs)?;
        // parity − (total − out_i) for each i.
        let rest = parity.sub(&outputs.sum(1)?)?.unsqueeze(1)?;
        Ok(outputs.broadcast_add(&rest)?)
    }
}

/// `outputs` must be `[groups, n, ...out]` for a parity output `[groups, ...out]`.
fn check_shapes(parity: &Tensor, outputs: &Tensor) -> Result<(), CodingError> {
    if outputs.rank() != parity.rank() + 1
        || outputs.dim(0)? != parity.dim(0)?
        || outputs.dims()[2..] != parity.dims()[1..]
    {
        return Err(CodingError::OutputShape {
            expected: parity.dims().to_vec(),
            found: outputs.dims().to_vec(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coding::{Encoder, SumEncoder};
    use candle_core::{DType, Device};
    use proptest::prelude::*;

    /// A linear F: x ↦ W·x (+ no bias, so F(Σx) = ΣF(x) exactly).
    fn linear_f(w: &Tensor, xs: &Tensor) -> Tensor {
        xs.matmul(&w.t().unwrap()).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// With a linear F and F_P = F the sum code is exact: every single
        /// erasure of every group decodes to the true output.
        #[test]
        fn sum_code_decodes_every_single_erasure(
            k in 2usize..=8,
            groups in 1usize..5,
            d_in in 1usize..12,
            d_out in 1usize..6,
            seed in any::<u64>(),
        ) {
            let dev = Device::Cpu;
            let mut rng = seed;
            let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 };
            let w = Tensor::from_vec((0..d_out * d_in).map(|_| next()).collect::<Vec<f32>>(), (d_out, d_in), &dev).unwrap();
            let qs = Tensor::from_vec((0..groups * k * d_in).map(|_| next()).collect::<Vec<f32>>(), (groups, k, d_in), &dev).unwrap();
            let enc = SumEncoder::new(k, &[d_in]).unwrap();
            let parity_in = enc.encode(&qs).unwrap();
            prop_assert_eq!(parity_in.dims(), &[groups, d_in]);
            let parity_out = linear_f(&w, &parity_in);
            let outs = linear_f(&w, &qs.reshape((groups * k, d_in)).unwrap()).reshape((groups, k, d_out)).unwrap();
            let each = Decoder::Subtract.decode_each(&parity_out, &outs).unwrap();
            prop_assert!(max_abs(&(&each - &outs).unwrap()) < 1e-4);
            for lost in 0..k {
                let kept: Vec<u32> = (0..k as u32).filter(|&j| j as usize != lost).collect();
                let idx = Tensor::new(kept.as_slice(), &dev).unwrap();
                let others = outs.index_select(&idx, 1).unwrap();
                let rebuilt = Decoder::Subtract.decode(&parity_out, &others).unwrap();
                let truth = outs.narrow(1, lost, 1).unwrap().squeeze(1).unwrap();
                prop_assert!(max_abs(&(rebuilt - truth).unwrap()) < 1e-4);
            }
        }

        /// The sum encoder keeps the item shape.
        #[test]
        fn sum_encoder_keeps_shape(k in 2usize..6, groups in 1usize..4, c in 1usize..3, h in 1usize..6) {
            let qs = Tensor::zeros((groups, k, c, h, h), DType::F32, &Device::Cpu).unwrap();
            let p = SumEncoder::new(k, &[c, h, h]).unwrap().encode(&qs).unwrap();
            prop_assert_eq!(p.dims(), &[groups, c, h, h]);
        }

        /// The concat encoder keeps the image shape for every k that fits.
        #[test]
        fn concat_encoder_keeps_shape(k in 2usize..10, groups in 1usize..3, side in 6usize..30) {
            let qs = Tensor::ones((groups, k, 1, side, side), DType::F32, &Device::Cpu).unwrap();
            let p = crate::coding::ConcatEncoder::new(k, &[1, side, side]).unwrap().encode(&qs).unwrap();
            prop_assert_eq!(p.dims(), &[groups, 1, side, side]);
        }
    }

    #[test]
    fn decode_rejects_mismatched_outputs() {
        let dev = Device::Cpu;
        let parity = Tensor::zeros((2, 10), DType::F32, &dev).unwrap();
        let bad = Tensor::zeros((2, 1, 9), DType::F32, &dev).unwrap();
        assert!(matches!(
            Decoder::Subtract.decode(&parity, &bad),
            Err(CodingError::OutputShape { .. })
        ));
        let bad = Tensor::zeros((3, 1, 10), DType::F32, &dev).unwrap();
        assert!(Decoder::Subtract.decode_each(&parity, &bad).is_err());
    }
}
