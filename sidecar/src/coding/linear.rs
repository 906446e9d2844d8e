//! r parities as a real linear code: parity l encodes `P_l = Σ_j c_lj X_j`,
//! its parity model learns `F_P,l(P_l) ≈ Σ_j c_lj F(X_j)`, and the decoder
//! solves for up to r missing outputs from the parity outputs and the
//! outputs that did arrive.
//!
//! The coefficients: a Cauchy matrix `1/(x_l − y_j)` with its columns
//! scaled so that row 0 is all ones, `c_lj = (x_0 − y_j)/(x_l − y_j)`.
//! Every square sub-matrix of a Cauchy matrix is invertible, and scaling
//! rows and columns by non-zero factors keeps that, so any e ≤ r losses are
//! solvable from any e parities. Row 0 all ones makes r = 1 exactly ParM's
//! sum code (today's `sum` parity models and cards keep working). The
//! points: `y_j = j/(k−1)` evenly on [0, 1], and the `x_l` alternately
//! below and above that interval (−½, 3/2, −3/2, 5/2): on one side only,
//! the rows grow alike and sub-matrices are far worse conditioned (k = 16,
//! r = 2: 266 against 37), and a real Vandermonde on positive nodes (also
//! totally positive, so every minor is non-zero) measured 2–4× worse at
//! every (k, r) tried. The worst 2-norm condition number over every square
//! sub-matrix, measured: k ≤ 16 and r ≤ 2: 37; r = 3: 4.2e3; r = 4: 4.3e4
//! (a real code's conditioning grows fast with r; [`MAX_R`] stops at 4).

use candle_core::Tensor;

use super::{CodingError, MIN_K};

/// Most parities a code may have: beyond, sub-matrices are too badly
/// conditioned for approximate parity outputs to decode usefully.
pub const MAX_R: usize = 4;

/// The code's points: `y_j` for the queries, `x_l` for the parities.
fn parity_point(l: usize) -> f64 {
    let m = (l / 2) as f64;
    if l % 2 == 0 { -0.5 - m } else { 1.5 + m }
}

fn query_point(j: usize, k: usize) -> f64 {
    j as f64 / (k - 1) as f64
}

/// The r × k coefficients of a code with k queries and r parities per group.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearCode {
    k: usize,
    r: usize,
    /// Row-major, r × k.
    coefficients: Vec<f64>,
}

impl LinearCode {
    pub fn new(k: usize, r: usize) -> Result<Self, CodingError> {
        if k < MIN_K {
            return Err(CodingError::KTooSmall(k));
        }
        if r == 0 || r > MAX_R || r > k {
            return Err(CodingError::Parities { k, r });
        }
        let x0 = parity_point(0);
        let coefficients = (0..r)
            .flat_map(|l| {
                (0..k).map(move |j| {
                    let y = query_point(j, k);
                    (x0 - y) / (parity_point(l) - y)
                })
            })
            .collect();
        Ok(LinearCode { k, r, coefficients })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn r(&self) -> usize {
        self.r
    }

    /// `c_l·`, the weights of parity l's encoder and its training target.
    pub fn row(&self, l: usize) -> &[f64] {
        &self.coefficients[l * self.k..(l + 1) * self.k]
    }

    /// Whether `coefficients` (from a model card) are row l of this code.
    pub fn matches_row(&self, l: usize, coefficients: &[f64]) -> bool {
        l < self.r
            && coefficients.len() == self.k
            && self
                .row(l)
                .iter()
                .zip(coefficients)
                .all(|(a, b)| (a - b).abs() <= 1e-9 * a.abs().max(1.0))
    }

    /// How to rebuild the outputs of the queries `lost` (slots 0..k) from
    /// the outputs of `parities` (indexes 0..r) and the other outputs.
    /// With more parities than losses the system is solved in the least
    /// squares sense, which averages the parity models' errors.
    pub fn weights(&self, lost: &[usize], parities: &[usize]) -> Result<Weights, CodingError> {
        let (e, s) = (lost.len(), parities.len());
        let in_range = |v: &[usize], n: usize| {
            v.iter().all(|&i| i < n) && v.iter().enumerate().all(|(a, i)| !v[..a].contains(i))
        };
        if !in_range(lost, self.k) || !in_range(parities, self.r) {
            return Err(CodingError::Erasures {
                k: self.k,
                r: self.r,
                lost: lost.to_vec(),
                parities: parities.to_vec(),
            });
        }
        if e > s {
            return Err(CodingError::TooManyLosses {
                lost: e,
                parities: s,
            });
        }
        // A = C[S, E] (s × e). z = (AᵀA)⁻¹ Aᵀ (p_S − C[S, ¬E] y): the
        // normal equations are at most 4 × 4 and solved in f64, where
        // squaring a condition number of 4e4 still leaves 7 digits.
        let a = |i: usize, c: usize| self.coefficients[parities[i] * self.k + lost[c]];
        let mut ata = vec![0f64; e * e];
        for r in 0..e {
            for c in 0..e {
                ata[r * e + c] = (0..s).map(|i| a(i, r) * a(i, c)).sum();
            }
        }
        // Aᵀ as the right-hand side: solving gives (AᵀA)⁻¹Aᵀ, e × s.
        let mut at = vec![0f64; e * s];
        for r in 0..e {
            for i in 0..s {
                at[r * s + i] = a(i, r);
            }
        }
        let parity = solve(ata, at, e, s).ok_or(CodingError::Singular)?;
        // Each lost output is Σ_i parity[r, i] (p_i − Σ_{j∉E} c_ij y_j).
        let mut known = vec![0f64; e * self.k];
        for r in 0..e {
            for j in (0..self.k).filter(|j| !lost.contains(j)) {
                known[r * self.k + j] = -(0..s)
                    .map(|i| parity[r * s + i] * self.coefficients[parities[i] * self.k + j])
                    .sum::<f64>();
            }
        }
        Ok(Weights {
            k: self.k,
            lost: lost.to_vec(),
            parities: parities.to_vec(),
            parity,
            known,
        })
    }
}

/// Gaussian elimination with partial pivoting: solves `a x = b` for an
/// n × n `a` and n × m `b` (row-major); None when `a` is singular.
fn solve(mut a: Vec<f64>, mut b: Vec<f64>, n: usize, m: usize) -> Option<Vec<f64>> {
    let scale = a.iter().fold(0f64, |s, v| s.max(v.abs()));
    for col in 0..n {
        let pivot =
            (col..n).max_by(|&x, &y| a[x * n + col].abs().total_cmp(&a[y * n + col].abs()))?;
        if a[pivot * n + col].abs() <= scale * 1e-12 {
            return None;
        }
        if pivot != col {
            for c in 0..n {
                a.swap(pivot * n + c, col * n + c);
            }
            for c in 0..m {
                b.swap(pivot * m + c, col * m + c);
            }
        }
        for row in 0..n {
            if row == col {
                continue;
            }
            let f = a[row * n + col] / a[col * n + col];
            if f == 0.0 {
                continue;
            }
            for c in col..n {
                a[row * n + c] -= f * a[col * n + c];
            }
            for c in 0..m {
                b[row * m + c] -= f * b[col * m + c];
            }
        }
    }
    for row in 0..n {
        let d = a[row * n + row];
        for c in 0..m {
            b[row * m + c] /= d;
        }
    }
    Some(b)
}

/// A decoding of one erasure pattern: lost output r is
/// `Σ_i parity[r, i] · F_P,i + Σ_j known[r, j] · F(X_j)` (`known` is zero
/// at the lost slots).
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    k: usize,
    lost: Vec<usize>,
    parities: Vec<usize>,
    /// |lost| × |parities|.
    parity: Vec<f64>,
    /// |lost| × k.
    known: Vec<f64>,
}

impl Weights {
    pub fn lost(&self) -> &[usize] {
        &self.lost
    }

    pub fn parities(&self) -> &[usize] {
        &self.parities
    }

    /// Rebuilds one group's lost outputs from its parity outputs (one per
    /// entry of `parities()`, in that order) and its k outputs (`None` at
    /// the lost slots, which are not read). Each output has `out_len` values.
    pub fn apply(
        &self,
        parity_outputs: &[&[f32]],
        outputs: &[Option<&[f32]>],
        out_len: usize,
    ) -> Result<Vec<Vec<f32>>, CodingError> {
        let (e, s) = (self.lost.len(), self.parities.len());
        let bad_len = |found: usize| CodingError::OutputShape {
            expected: vec![out_len],
            found: vec![found],
        };
        if parity_outputs.len() != s || outputs.len() != self.k {
            return Err(CodingError::GroupSize {
                expected: self.k + s,
                found: outputs.len() + parity_outputs.len(),
            });
        }
        let mut rebuilt = vec![vec![0f64; out_len]; e];
        for (i, p) in parity_outputs.iter().enumerate() {
            if p.len() != out_len {
                return Err(bad_len(p.len()));
            }
            for (r, out) in rebuilt.iter_mut().enumerate() {
                let w = self.parity[r * s + i];
                for (o, v) in out.iter_mut().zip(*p) {
                    *o += w * *v as f64;
                }
            }
        }
        for (j, y) in outputs.iter().enumerate() {
            if self.lost.contains(&j) {
                continue;
            }
            let y = y.ok_or(CodingError::MissingOutput(j))?;
            if y.len() != out_len {
                return Err(bad_len(y.len()));
            }
            for (r, out) in rebuilt.iter_mut().enumerate() {
                let w = self.known[r * self.k + j];
                for (o, v) in out.iter_mut().zip(y) {
                    *o += w * *v as f64;
                }
            }
        }
        Ok(rebuilt
            .into_iter()
            .map(|v| v.into_iter().map(|x| x as f32).collect())
            .collect())
    }

    /// The same on tensors: parity outputs `[groups, |parities|, ...out]`
    /// and all k outputs `[groups, k, ...out]` (the lost ones' values are
    /// not used) give `[groups, |lost|, ...out]`.
    pub fn apply_tensors(&self, parity: &Tensor, outputs: &Tensor) -> Result<Tensor, CodingError> {
        let (e, s) = (self.lost.len(), self.parities.len());
        let dims = outputs.dims();
        if dims.len() < 2
            || dims[1] != self.k
            || parity.dims().len() != dims.len()
            || parity.dim(1)? != s
            || parity.dim(0)? != dims[0]
            || parity.dims()[2..] != dims[2..]
        {
            return Err(CodingError::OutputShape {
                expected: dims.to_vec(),
                found: parity.dims().to_vec(),
            });
        }
        let groups = dims[0];
        let out: usize = dims[2..].iter().product();
        let dev = outputs.device();
        let mat = |w: &[f64], rows: usize, cols: usize| {
            Tensor::from_vec(
                w.iter().map(|&v| v as f32).collect::<Vec<f32>>(),
                (rows, cols),
                dev,
            )
        };
        let wp = mat(&self.parity, e, s)?;
        let wk = mat(&self.known, e, self.k)?;
        let p = parity.reshape((groups, s, out))?;
        let y = outputs.reshape((groups, self.k, out))?;
        let rebuilt = (wp.broadcast_matmul(&p)? + wk.broadcast_matmul(&y)?)?;
        let mut shape = vec![groups, e];
        shape.extend_from_slice(&dims[2..]);
        Ok(rebuilt.reshape(shape)?)
    }
}

/// Every erasure pattern of 1..=r of k slots, smallest first, each sorted.
pub fn erasure_patterns(k: usize, r: usize) -> Vec<Vec<usize>> {
    let mut patterns: Vec<Vec<usize>> = (1u64..1 << k)
        .filter(|m| m.count_ones() as usize <= r)
        .map(|m| (0..k).filter(|j| m >> j & 1 == 1).collect())
        .collect();
    patterns.sort_by_key(|p: &Vec<usize>| (p.len(), p.clone()));
    patterns
}

#[cfg(test)]
mod tests;
