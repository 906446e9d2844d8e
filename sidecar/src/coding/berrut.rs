//! A training-free code: Berrut rational interpolation (ApproxIFER,
//! Soleymani, Jahani-Nezhad and Mahdavifar, AAAI 2022).
//!
//! The k queries of a group are the values at the data nodes
//! `α_j = cos((2j+1)π/(2k))` (Chebyshev points of the first kind) of
//! Berrut's interpolant `u(z) = Σ_j w_j(z) X_j`; the n coded queries are
//! `u(z_i)` at the evaluation nodes `z_i = cos(iπ/(n−1))` (second kind),
//! and the base model itself serves them. From any non-empty set S of the
//! answers `Y_s = F(u(z_s))`, Berrut's interpolant through them, evaluated
//! at `α_j`, estimates `F(X_j)`. Both steps are linear maps (an n × k encode
//! matrix, a k × |S| decode matrix per S), so any model behind any v2
//! server is protected, and every answer is approximate.
//!
//! Berrut's weights `(−1)^j/(z − x_j)`, normalised, have no real poles for
//! any ordered nodes (unlike Lagrange's, they need no well-placed nodes to
//! stay bounded), which is why any subset of answers decodes.

use super::{CodingError, MIN_K};

/// Most coded queries per group: beyond, the frontend would need as many
/// distinct instances per batch, and the nodes crowd together.
pub const MAX_N: usize = 64;

/// The code for groups of k queries coded into n.
#[derive(Debug, Clone, PartialEq)]
pub struct BerrutCode {
    k: usize,
    n: usize,
    /// α_j, j = 0..k.
    data_nodes: Vec<f64>,
    /// z_i, i = 0..n.
    eval_nodes: Vec<f64>,
    /// Row-major n × k: coded query i is Σ_j encode[i][j] X_j.
    encode: Vec<f64>,
}

/// Berrut's weights of the nodes `nodes` (in order) at `z`: they sum to 1,
/// and at a node they are that node's indicator. Near a node `1/(z − x)`
/// grows without bound; once it is no longer finite the point counts as
/// the node, which is where the weights tend to anyway.
pub fn berrut_weights(nodes: &[f64], z: f64) -> Vec<f64> {
    let mut terms = Vec::with_capacity(nodes.len());
    for (j, &x) in nodes.iter().enumerate() {
        let inv = 1.0 / (z - x);
        if z == x || !inv.is_finite() {
            let mut w = vec![0.0; nodes.len()];
            w[j] = 1.0;
            return w;
        }
        terms.push(if j % 2 == 0 { inv } else { -inv });
    }
    let sum: f64 = terms.iter().sum();
    terms.iter().map(|t| t / sum).collect()
}

impl BerrutCode {
    /// A code for groups of `k` queries coded into `n > k` (n − k answers
    /// may be lost while k still arrive).
    pub fn new(k: usize, n: usize) -> Result<Self, CodingError> {
        if k < MIN_K {
            return Err(CodingError::KTooSmall(k));
        }
        if n <= k || n > MAX_N {
            return Err(CodingError::CodedQueries { k, n });
        }
        let pi = std::f64::consts::PI;
        let data_nodes: Vec<f64> = (0..k)
            .map(|j| ((2 * j + 1) as f64 * pi / (2 * k) as f64).cos())
            .collect();
        let eval_nodes: Vec<f64> = (0..n)
            .map(|i| (i as f64 * pi / (n - 1) as f64).cos())
            .collect();
        let encode = eval_nodes
            .iter()
            .flat_map(|&z| berrut_weights(&data_nodes, z))
            .collect();
        Ok(BerrutCode {
            k,
            n,
            data_nodes,
            eval_nodes,
            encode,
        })
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    pub fn data_nodes(&self) -> &[f64] {
        &self.data_nodes
    }

    pub fn eval_nodes(&self) -> &[f64] {
        &self.eval_nodes
    }

    /// The n × k encode matrix, row-major.
    pub fn encode_matrix(&self) -> &[f64] {
        &self.encode
    }

    /// Row i of the encode matrix: coded query i's weights of the k queries.
    pub fn encode_row(&self, i: usize) -> &[f64] {
        &self.encode[i * self.k..(i + 1) * self.k]
    }

    /// The k × |S| decode matrix for the answers of the coded queries
    /// `arrived` (distinct, in any order; the columns follow that order):
    /// row j is Berrut's weights of those nodes, taken in node order, at α_j.
    pub fn decode_matrix(&self, arrived: &[usize]) -> Result<Vec<f64>, CodingError> {
        let distinct = arrived
            .iter()
            .enumerate()
            .all(|(a, i)| *i < self.n && !arrived[..a].contains(i));
        if arrived.is_empty() || !distinct {
            return Err(CodingError::Arrived {
                n: self.n,
                arrived: arrived.to_vec(),
            });
        }
        let mut order: Vec<usize> = (0..arrived.len()).collect();
        order.sort_by_key(|&c| arrived[c]);
        let nodes: Vec<f64> = order.iter().map(|&c| self.eval_nodes[arrived[c]]).collect();
        let mut matrix = vec![0.0; self.k * arrived.len()];
        for (j, &alpha) in self.data_nodes.iter().enumerate() {
            let row = &mut matrix[j * arrived.len()..(j + 1) * arrived.len()];
            for (w, &c) in berrut_weights(&nodes, alpha).into_iter().zip(&order) {
                row[c] = w;
            }
        }
        Ok(matrix)
    }

    /// Coded query i of each of `groups` groups: `flat` is
    /// `[groups, k, item]`, the result `[groups, item]`.
    pub fn encode_one(
        &self,
        i: usize,
        flat: &[f32],
        groups: usize,
        item: usize,
    ) -> Result<Vec<f32>, CodingError> {
        if i >= self.n {
            return Err(CodingError::Arrived {
                n: self.n,
                arrived: vec![i],
            });
        }
        check_len(flat.len(), groups, self.k, item)?;
        Ok(combine(self.encode_row(i), flat, groups, self.k, item))
    }

    /// All n coded queries: `[groups, k, item]` → `[groups, n, item]`.
    pub fn encode_flat(
        &self,
        flat: &[f32],
        groups: usize,
        item: usize,
    ) -> Result<Vec<f32>, CodingError> {
        check_len(flat.len(), groups, self.k, item)?;
        let mut out = vec![0f32; groups * self.n * item];
        for i in 0..self.n {
            let coded = combine(self.encode_row(i), flat, groups, self.k, item);
            for (g, row) in coded.chunks_exact(item.max(1)).enumerate() {
                let at = (g * self.n + i) * item;
                out[at..at + item].copy_from_slice(row);
            }
        }
        Ok(out)
    }

    /// The k estimated outputs of each group from the answers of the coded
    /// queries `arrived`: `outputs` is `[groups, |arrived|, out]` (in the
    /// order of `arrived`), the result `[groups, k, out]`.
    pub fn decode_flat(
        &self,
        arrived: &[usize],
        outputs: &[f32],
        groups: usize,
        out: usize,
    ) -> Result<Vec<f32>, CodingError> {
        let matrix = self.decode_matrix(arrived)?;
        let s = arrived.len();
        check_len(outputs.len(), groups, s, out)?;
        let mut decoded = vec![0f32; groups * self.k * out];
        for g in 0..groups {
            let answers = &outputs[g * s * out..(g + 1) * s * out];
            for j in 0..self.k {
                let row = &matrix[j * s..(j + 1) * s];
                let target = &mut decoded[(g * self.k + j) * out..(g * self.k + j + 1) * out];
                for (w, answer) in row.iter().zip(answers.chunks_exact(out.max(1))) {
                    let w = *w as f32;
                    target.iter_mut().zip(answer).for_each(|(t, y)| *t += w * y);
                }
            }
        }
        Ok(decoded)
    }
}

fn check_len(values: usize, groups: usize, k: usize, item: usize) -> Result<(), CodingError> {
    if item == 0 || values != groups * k * item {
        return Err(CodingError::FlatLength {
            values,
            groups,
            k,
            item,
        });
    }
    Ok(())
}

/// `Σ_j weights[j] X_j` for each group of `flat` (`[groups, k, item]`).
fn combine(weights: &[f64], flat: &[f32], groups: usize, k: usize, item: usize) -> Vec<f32> {
    let mut out = vec![0f32; groups * item];
    for (sum, group) in out
        .chunks_exact_mut(item)
        .zip(flat.chunks_exact(k * item).take(groups))
    {
        for (w, query) in weights.iter().zip(group.chunks_exact(item)) {
            let w = *w as f32;
            sum.iter_mut().zip(query).for_each(|(s, x)| *s += w * x);
        }
    }
    out
}

#[cfg(test)]
mod tests;
