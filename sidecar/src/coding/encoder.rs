//! Encoders: `[groups, k, ...item]` queries → `[groups, ...item]` parity queries.

use candle_core::{DType, Device, Tensor};

use super::{CodingError, EncoderKind, LinearCode, MIN_K};

pub trait Encoder: Send + Sync {
    fn kind(&self) -> EncoderKind;
    fn k(&self) -> usize;
    /// The shape of one query, without batch dimensions.
    fn item_shape(&self) -> &[usize];
    /// Encodes each group of k queries into one parity query.
    fn encode(&self, queries: &Tensor) -> Result<Tensor, CodingError>;

    /// The same on `groups` groups laid out flat (`[groups, k, ...item]`,
    /// row-major), giving `[groups, ...item]` flat: the frontend's form.
    /// By default through a tensor.
    fn encode_flat(&self, flat: Vec<f32>, groups: usize) -> Result<Vec<f32>, CodingError> {
        let mut shape = vec![groups, self.k()];
        shape.extend_from_slice(self.item_shape());
        // CPU by design: the frontend codes the flat f32 rows of requests
        // (a few sums per query); a GPU round trip would cost more.
        let queries = Tensor::from_vec(flat, shape, &Device::Cpu)?;
        Ok(self.encode(&queries)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Checks that `queries` is `[groups, k, ...item]` and returns `groups`.
    fn check_groups(&self, queries: &Tensor) -> Result<usize, CodingError> {
        let dims = queries.dims();
        if dims.len() != self.item_shape().len() + 2 {
            return Err(CodingError::ItemShape {
                expected: self.item_shape().to_vec(),
                found: dims.get(2..).unwrap_or_default().to_vec(),
            });
        }
        if dims[1] != self.k() {
            return Err(CodingError::GroupSize {
                expected: self.k(),
                found: dims[1],
            });
        }
        if &dims[2..] != self.item_shape() {
            return Err(CodingError::ItemShape {
                expected: self.item_shape().to_vec(),
                found: dims[2..].to_vec(),
            });
        }
        Ok(dims[0])
    }
}

/// Builds the encoder of `kind` for groups of `k` queries of `item_shape`.
pub fn encoder(
    kind: EncoderKind,
    k: usize,
    item_shape: &[usize],
) -> Result<Box<dyn Encoder>, CodingError> {
    Ok(match kind {
        EncoderKind::Sum => Box::new(SumEncoder::new(k, item_shape)?),
        EncoderKind::Concat => Box::new(ConcatEncoder::new(k, item_shape)?),
        kind @ (EncoderKind::Mlp | EncoderKind::Conv) => {
            return Err(CodingError::LearnedEncoder(kind));
        }
    })
}

/// Builds the encoder of parity l of `code`: for `sum`, the weighted sum
/// with the code's row l (all ones for l = 0); `concat` has no second
/// parity.
pub fn parity_encoder(
    kind: EncoderKind,
    code: &LinearCode,
    l: usize,
    item_shape: &[usize],
) -> Result<Box<dyn Encoder>, CodingError> {
    if l >= code.r() {
        return Err(CodingError::Parities {
            k: code.k(),
            r: l + 1,
        });
    }
    Ok(match kind {
        EncoderKind::Sum => Box::new(SumEncoder::weighted(code.k(), item_shape, code.row(l))?),
        EncoderKind::Concat if code.r() > 1 => return Err(CodingError::ConcatParities(code.r())),
        EncoderKind::Concat => Box::new(ConcatEncoder::new(code.k(), item_shape)?),
        kind @ (EncoderKind::Mlp | EncoderKind::Conv) => {
            return Err(CodingError::LearnedEncoder(kind));
        }
    })
}

/// P = X₁ + … + X_k: works for any tensor, and is exact for a linear F.
/// Parity l of an r-parity code weighs the queries: P = Σ c_lj X_j.
pub struct SumEncoder {
    k: usize,
    item: Vec<usize>,
    /// None: all ones (ParM's sum, and row 0 of every code).
    weights: Option<Vec<f32>>,
}

impl SumEncoder {
    pub fn new(k: usize, item_shape: &[usize]) -> Result<Self, CodingError> {
        if k < MIN_K {
            return Err(CodingError::KTooSmall(k));
        }
        Ok(Self {
            k,
            item: item_shape.to_vec(),
            weights: None,
        })
    }

    /// P = Σ w_j X_j, with one weight per query.
    pub fn weighted(k: usize, item_shape: &[usize], weights: &[f64]) -> Result<Self, CodingError> {
        let mut enc = Self::new(k, item_shape)?;
        if weights.len() != k {
            return Err(CodingError::GroupSize {
                expected: k,
                found: weights.len(),
            });
        }
        if weights.iter().any(|&w| w != 1.0) {
            enc.weights = Some(weights.iter().map(|&w| w as f32).collect());
        }
        Ok(enc)
    }
}

impl Encoder for SumEncoder {
    fn kind(&self) -> EncoderKind {
        EncoderKind::Sum
    }
    fn k(&self) -> usize {
        self.k
    }
    fn item_shape(&self) -> &[usize] {
        &self.item
    }
    fn encode(&self, queries: &Tensor) -> Result<Tensor, CodingError> {
        self.check_groups(queries)?;
        let Some(w) = &self.weights else {
            return Ok(queries.sum(1)?);
        };
        let mut shape = vec![1, self.k];
        shape.extend(std::iter::repeat_n(1, self.item.len()));
        let w = Tensor::from_slice(w, shape, queries.device())?;
        Ok(queries.broadcast_mul(&w)?.sum(1)?)
    }

    /// Adds the slices directly: a tensor's set-up cost more than the sum
    /// itself at the frontend's batch sizes (5% of its CPU under load).
    fn encode_flat(&self, flat: Vec<f32>, groups: usize) -> Result<Vec<f32>, CodingError> {
        let item: usize = self.item.iter().product();
        if item == 0 || flat.len() != groups * self.k * item {
            return Err(CodingError::FlatLength {
                values: flat.len(),
                groups,
                k: self.k,
                item,
            });
        }
        let mut out = vec![0f32; groups * item];
        for (sum, group) in out
            .chunks_exact_mut(item)
            .zip(flat.chunks_exact(self.k * item))
        {
            for (j, query) in group.chunks_exact(item).enumerate() {
                match &self.weights {
                    None => sum.iter_mut().zip(query).for_each(|(s, x)| *s += x),
                    Some(w) => sum.iter_mut().zip(query).for_each(|(s, x)| *s += w[j] * x),
                }
            }
        }
        Ok(out)
    }
}

/// Tiles the k images, each downsampled by area averaging, on a grid of
/// `rows × cols` cells inside one image of the original size: k = 2 side by
/// side (28×14 cells on 28×28), k = 3 and 4 in quadrants (14×14), larger k
/// on a ⌈√k⌉-wide grid. Unused cells and leftover pixels are zero.
pub struct ConcatEncoder {
    k: usize,
    item: Vec<usize>,
    rows: usize,
    cols: usize,
    /// `[cell_h, H]` and `[W, cell_w]`: resizing is two matrix products.
    shrink_h: Tensor,
    shrink_w_t: Tensor,
}

impl ConcatEncoder {
    pub fn new(k: usize, item_shape: &[usize]) -> Result<Self, CodingError> {
        if k < MIN_K {
            return Err(CodingError::KTooSmall(k));
        }
        let unsupported = |reason: String| CodingError::UnsupportedShape {
            encoder: EncoderKind::Concat,
            shape: item_shape.to_vec(),
            reason,
        };
        let &[_, h, w] = item_shape else {
            return Err(unsupported(
                "it tiles images, so queries must be [channels, height, width]".into(),
            ));
        };
        let (rows, cols) = grid(k);
        if h < rows || w < cols {
            return Err(unsupported(format!(
                "a {h}×{w} image has no room for a {rows}×{cols} grid of k = {k} images"
            )));
        }
        let shrink_h = area_resize_matrix(h, h / rows)?;
        let shrink_w_t = area_resize_matrix(w, w / cols)?.t()?.contiguous()?;
        Ok(Self {
            k,
            item: item_shape.to_vec(),
            rows,
            cols,
            shrink_h,
            shrink_w_t,
        })
    }

    /// The grid's `(rows, cols)`.
    pub fn grid(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
}

/// Rows × cols of the tiling for k images: one row for k = 2, else a
/// ⌈√k⌉-wide square-ish grid.
pub fn grid(k: usize) -> (usize, usize) {
    let cols = (k as f64).sqrt().ceil() as usize;
    let cols = cols.max(2);
    (k.div_ceil(cols), cols)
}

/// `[n_out, n_in]`: each output pixel is the mean of the input interval it
/// covers, with fractional overlaps weighted.
fn area_resize_matrix(n_in: usize, n_out: usize) -> candle_core::Result<Tensor> {
    let scale = n_in as f64 / n_out as f64;
    let mut m = vec![0f32; n_out * n_in];
    for o in 0..n_out {
        let (lo, hi) = (o as f64 * scale, (o + 1) as f64 * scale);
        for i in lo.floor() as usize..(hi.ceil() as usize).min(n_in) {
            let overlap = (hi.min(i as f64 + 1.0) - lo.max(i as f64)).max(0.0);
            m[o * n_in + i] = (overlap / scale) as f32;
        }
    }
    // Built on the host once; `encode` moves it to the queries' device.
    Tensor::from_vec(m, (n_out, n_in), &Device::Cpu)
}

impl Encoder for ConcatEncoder {
    fn kind(&self) -> EncoderKind {
        EncoderKind::Concat
    }
    fn k(&self) -> usize {
        self.k
    }
    fn item_shape(&self) -> &[usize] {
        &self.item
    }
    fn encode(&self, queries: &Tensor) -> Result<Tensor, CodingError> {
        let groups = self.check_groups(queries)?;
        let [c, h, w] = [self.item[0], self.item[1], self.item[2]];
        let (cell_h, cell_w) = (h / self.rows, w / self.cols);
        let dev = queries.device();
        let cells = queries.reshape((groups * self.k * c, h, w))?;
        let cells = self
            .shrink_h
            .to_device(dev)?
            .broadcast_matmul(&cells)?
            .broadcast_matmul(&self.shrink_w_t.to_device(dev)?)?
            .reshape((groups, self.k, c, cell_h, cell_w))?;
        let zeros = |hh: usize, ww: usize| Tensor::zeros((groups, c, hh, ww), DType::F32, dev);
        let mut grid_rows = Vec::with_capacity(self.rows + 1);
        for r in 0..self.rows {
            let mut row = Vec::with_capacity(self.cols + 1);
            for col in 0..self.cols {
                let i = r * self.cols + col;
                row.push(if i < self.k {
                    cells.narrow(1, i, 1)?.squeeze(1)?
                } else {
                    zeros(cell_h, cell_w)?
                });
            }
            if w > cell_w * self.cols {
                row.push(zeros(cell_h, w - cell_w * self.cols)?);
            }
            grid_rows.push(Tensor::cat(&row, 3)?);
        }
        if h > cell_h * self.rows {
            grid_rows.push(zeros(h - cell_h * self.rows, w)?);
        }
        Ok(Tensor::cat(&grid_rows, 2)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

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

    fn cpu() -> Device {
        Device::Cpu
    }

    #[test]
    fn flat_encoding_matches_the_tensor_one() {
        let item = [1, 4, 6];
        for (kind, k) in [
            (EncoderKind::Sum, 2),
            (EncoderKind::Sum, 3),
            (EncoderKind::Concat, 2),
        ] {
            let code = encoder(kind, k, &item).unwrap();
            let groups = 3;
            let flat: Vec<f32> = (0..groups * k * 24)
                .map(|i| (i % 17) as f32 * 0.25)
                .collect();
            let queries = Tensor::from_vec(flat.clone(), (groups, k, 1, 4, 6), &cpu()).unwrap();
            let want: Vec<f32> = code
                .encode(&queries)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let got = code.encode_flat(flat, groups).unwrap();
            assert_eq!(got.len(), groups * 24, "{kind} k={k}");
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{kind} k={k}: {a} vs {b}");
            }
        }
        let code = LinearCode::new(3, 2).unwrap();
        let weighted = parity_encoder(EncoderKind::Sum, &code, 1, &item).unwrap();
        let flat: Vec<f32> = (0..2 * 3 * 24).map(|i| (i % 13) as f32 * 0.5).collect();
        let queries = Tensor::from_vec(flat.clone(), (2, 3, 1, 4, 6), &cpu()).unwrap();
        let want: Vec<f32> = weighted
            .encode(&queries)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = weighted.encode_flat(flat.clone(), 2).unwrap();
        let row = code.row(1);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            let (g, p) = (i / 24, i % 24);
            let by_hand: f32 = (0..3)
                .map(|j| row[j] as f32 * flat[(g * 3 + j) * 24 + p])
                .sum();
            assert!(
                (a - b).abs() < 1e-4 && (a - by_hand).abs() < 1e-4,
                "{a} {b} {by_hand}"
            );
        }
        let sum = encoder(EncoderKind::Sum, 2, &item).unwrap();
        assert!(matches!(
            sum.encode_flat(vec![0.0; 47], 1),
            Err(CodingError::FlatLength { values: 47, .. })
        ));
    }

    #[test]
    fn parity_zero_is_the_plain_sum_and_concat_has_one_parity() {
        let code = LinearCode::new(2, 2).unwrap();
        let qs = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 2, 2), &cpu()).unwrap();
        let p0 = parity_encoder(EncoderKind::Sum, &code, 0, &[2]).unwrap();
        assert_eq!(
            p0.encode(&qs).unwrap().to_vec2::<f32>().unwrap(),
            vec![vec![4., 6.]]
        );
        let one = LinearCode::new(2, 1).unwrap();
        assert!(parity_encoder(EncoderKind::Concat, &one, 0, &[1, 28, 28]).is_ok());
        let err = parity_encoder(EncoderKind::Concat, &code, 0, &[1, 28, 28])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("one parity per group"), "{err}");
        assert!(parity_encoder(EncoderKind::Sum, &code, 2, &[2]).is_err());
    }

    #[test]
    fn grids() {
        assert_eq!(grid(2), (1, 2));
        assert_eq!(grid(3), (2, 2));
        assert_eq!(grid(4), (2, 2));
        assert_eq!(grid(5), (2, 3));
        assert_eq!(grid(9), (3, 3));
    }

    #[test]
    fn area_matrix_rows_average() {
        let m = area_resize_matrix(28, 14)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0][0], 0.5);
        assert_eq!(m[0][1], 0.5);
        assert_eq!(m[13][27], 0.5);
        let m = area_resize_matrix(28, 9).unwrap().to_vec2::<f32>().unwrap();
        for row in m {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn concat_k2_places_halves_side_by_side() {
        let enc = ConcatEncoder::new(2, &[1, 28, 28]).unwrap();
        let a = Tensor::ones((1, 1, 1, 28, 28), DType::F32, &cpu()).unwrap();
        let b = Tensor::zeros((1, 1, 1, 28, 28), DType::F32, &cpu()).unwrap();
        let p = enc.encode(&Tensor::cat(&[a, b], 1).unwrap()).unwrap();
        assert_eq!(p.dims(), &[1, 1, 28, 28]);
        let img = p
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert!(img.iter().all(|r| r[..14].iter().all(|&v| v == 1.0)));
        assert!(img.iter().all(|r| r[14..].iter().all(|&v| v == 0.0)));
    }

    #[test]
    fn concat_k4_downsamples_into_quadrants() {
        let enc = ConcatEncoder::new(4, &[1, 28, 28]).unwrap();
        // Query i has the constant value i + 1; a 2×2 average keeps it.
        let qs: Vec<Tensor> = (0..4)
            .map(|i| Tensor::full(i as f32 + 1.0, (1, 1, 1, 28, 28), &cpu()).unwrap())
            .collect();
        let p = enc.encode(&Tensor::cat(&qs, 1).unwrap()).unwrap();
        let img = p
            .squeeze(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(
            (img[0][0], img[0][27], img[27][0], img[27][27]),
            (1., 2., 3., 4.)
        );
    }

    #[test]
    fn concat_k3_leaves_the_fourth_quadrant_empty() {
        let enc = ConcatEncoder::new(3, &[1, 28, 28]).unwrap();
        let qs = Tensor::ones((2, 3, 1, 28, 28), DType::F32, &cpu()).unwrap();
        let p = enc.encode(&qs).unwrap();
        let img = p
            .get(1)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!((img[20][5], img[20][20]), (1.0, 0.0));
    }

    #[test]
    fn concat_rejects_non_images() {
        let err = ConcatEncoder::new(2, &[784]).err().unwrap().to_string();
        assert!(err.contains("[channels, height, width]"), "{err}");
        let err = ConcatEncoder::new(9, &[1, 2, 28])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no room"), "{err}");
    }

    #[test]
    fn k_below_two_is_rejected() {
        assert!(matches!(
            encoder(EncoderKind::Sum, 1, &[3]).err(),
            Some(CodingError::KTooSmall(1))
        ));
        assert!(matches!(
            encoder(EncoderKind::Concat, 0, &[1, 28, 28]).err(),
            Some(CodingError::KTooSmall(0))
        ));
    }

    #[test]
    fn encoders_reject_mismatched_groups() {
        let enc = SumEncoder::new(3, &[4]).unwrap();
        let two = Tensor::zeros((5, 2, 4), DType::F32, &cpu()).unwrap();
        assert!(matches!(
            enc.encode(&two),
            Err(CodingError::GroupSize {
                expected: 3,
                found: 2
            })
        ));
        let wrong = Tensor::zeros((5, 3, 5), DType::F32, &cpu()).unwrap();
        assert!(matches!(
            enc.encode(&wrong),
            Err(CodingError::ItemShape { .. })
        ));
        let flat = Tensor::zeros((5, 3), DType::F32, &cpu()).unwrap();
        assert!(matches!(
            enc.encode(&flat),
            Err(CodingError::ItemShape { .. })
        ));
    }
}
