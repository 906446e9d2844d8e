//! The code's properties (row 0 all ones, every square sub-matrix invertible
//! and bounded in condition) and exact decoding on a linear F for every
//! erasure pattern.

use candle_core::{Device, Tensor};
use proptest::prelude::*;

use super::*;
use crate::coding::{EncoderKind, parity_encoder};

/// Subsets of `0..n` of size `s`.
fn subsets(n: usize, s: usize) -> Vec<Vec<usize>> {
    (0u64..1 << n)
        .filter(|m| m.count_ones() as usize == s)
        .map(|m| (0..n).filter(|i| m >> i & 1 == 1).collect())
        .collect()
}

/// The 2-norm condition number of a square matrix: the square root of the
/// ratio of AᵀA's extreme eigenvalues (cyclic Jacobi).
fn condition(m: &[f64], n: usize) -> f64 {
    let mut a = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..n {
            a[i * n + j] = (0..n).map(|r| m[r * n + i] * m[r * n + j]).sum();
        }
    }
    for _ in 0..100 {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                off += apq * apq;
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = if theta == 0.0 {
                    1.0
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
        if off < 1e-30 {
            break;
        }
    }
    let ev: Vec<f64> = (0..n).map(|i| a[i * n + i].abs()).collect();
    let max = ev.iter().copied().fold(0.0, f64::max);
    let min = ev.iter().copied().fold(f64::INFINITY, f64::min);
    (max / min).sqrt()
}

#[test]
fn row_zero_is_all_ones_so_r_1_is_the_sum_code() {
    for k in 2..=16 {
        for r in 1..=MAX_R.min(k) {
            let code = LinearCode::new(k, r).unwrap();
            assert!(code.row(0).iter().all(|&c| c == 1.0), "k {k} r {r}");
            assert!(code.matches_row(0, &vec![1.0; k]));
        }
    }
    // One loss, one parity: plain subtraction.
    let w = LinearCode::new(3, 1).unwrap().weights(&[1], &[0]).unwrap();
    assert_eq!(w.parity, vec![1.0]);
    assert_eq!(w.known, vec![-1.0, 0.0, -1.0]);
}

/// The figures stated in the module's comment: every square sub-matrix is
/// invertible and its condition number is at most 40 for r ≤ 2, 5e3 for
/// r = 3 and 5e4 for r = 4, for every k up to 16.
#[test]
fn every_square_sub_matrix_is_invertible_and_bounded_in_condition() {
    for k in 2..=16 {
        for r in 2..=MAX_R.min(k) {
            let code = LinearCode::new(k, r).unwrap();
            let bound = match r {
                2 => 40.0,
                3 => 5e3,
                _ => 5e4,
            };
            let mut worst = 0f64;
            for s in 1..=r {
                for rows in subsets(r, s) {
                    for cols in subsets(k, s) {
                        let m: Vec<f64> = rows
                            .iter()
                            .flat_map(|&l| {
                                let row = code.row(l);
                                cols.iter().map(move |&j| row[j])
                            })
                            .collect();
                        let c = condition(&m, s);
                        assert!(c.is_finite(), "k {k} r {r}: rows {rows:?} cols {cols:?}");
                        worst = worst.max(c);
                    }
                }
            }
            assert!(worst <= bound, "k {k} r {r}: condition {worst} > {bound}");
        }
    }
}

#[test]
fn bad_codes_and_patterns_are_refused_clearly() {
    assert!(matches!(
        LinearCode::new(1, 1),
        Err(CodingError::KTooSmall(1))
    ));
    for (k, r) in [(2, 0), (2, 3), (8, 5)] {
        let err = LinearCode::new(k, r).unwrap_err().to_string();
        assert!(err.contains("1 ≤ r ≤ k"), "{err}");
    }
    let code = LinearCode::new(4, 2).unwrap();
    let err = code.weights(&[0, 1, 2], &[0, 1]).unwrap_err();
    assert!(matches!(
        err,
        CodingError::TooManyLosses {
            lost: 3,
            parities: 2
        }
    ));
    assert!(
        err.to_string()
            .contains("at most as many losses as parities")
    );
    assert!(matches!(
        code.weights(&[0, 1], &[1]),
        Err(CodingError::TooManyLosses {
            lost: 2,
            parities: 1
        })
    ));
    assert!(matches!(
        code.weights(&[4], &[0]),
        Err(CodingError::Erasures { .. })
    ));
    assert!(matches!(
        code.weights(&[1, 1], &[0, 1]),
        Err(CodingError::Erasures { .. })
    ));
    assert!(matches!(
        code.weights(&[1], &[2]),
        Err(CodingError::Erasures { .. })
    ));
    // A needed output that is not there.
    let w = code.weights(&[0], &[0]).unwrap();
    let p = [1f32, 2.];
    assert!(matches!(
        w.apply(&[&p], &[None, None, Some(&p), Some(&p)], 2),
        Err(CodingError::MissingOutput(1))
    ));
}

#[test]
fn erasure_patterns_are_every_set_of_up_to_r_slots() {
    assert_eq!(
        erasure_patterns(3, 2),
        vec![
            vec![0],
            vec![1],
            vec![2],
            vec![0, 1],
            vec![0, 2],
            vec![1, 2]
        ]
    );
    assert_eq!(erasure_patterns(4, 1).len(), 4);
    assert_eq!(erasure_patterns(4, 3).len(), 4 + 6 + 4);
}

/// A seeded stream of values in [−1, 1).
fn stream(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A linear F (no bias, so F(Σ c x) = Σ c F(x)), queries and their outputs,
/// and each parity's output F(P_l) through the real encoders.
struct Case {
    outputs: Vec<Vec<f32>>,
    parities: Vec<Vec<f32>>,
    outputs_t: Tensor,
    parities_t: Tensor,
}

fn case(code: &LinearCode, groups: usize, d_in: usize, d_out: usize, seed: u64) -> Case {
    let dev = Device::Cpu;
    let (k, r) = (code.k(), code.r());
    let mut next = stream(seed);
    let w: Vec<f32> = (0..d_out * d_in).map(|_| next()).collect();
    let w = Tensor::from_vec(w, (d_out, d_in), &dev).unwrap();
    let f = |x: &Tensor| x.matmul(&w.t().unwrap()).unwrap();
    let qs: Vec<f32> = (0..groups * k * d_in).map(|_| next()).collect();
    let qs = Tensor::from_vec(qs, (groups, k, d_in), &dev).unwrap();
    let outputs_t = f(&qs.reshape((groups * k, d_in)).unwrap())
        .reshape((groups, k, d_out))
        .unwrap();
    let parity_outs: Vec<Tensor> = (0..r)
        .map(|l| {
            let enc = parity_encoder(EncoderKind::Sum, code, l, &[d_in]).unwrap();
            f(&enc.encode(&qs).unwrap())
        })
        .collect();
    let parities_t = Tensor::stack(&parity_outs, 1).unwrap();
    Case {
        outputs: outputs_t
            .reshape((groups * k, d_out))
            .unwrap()
            .to_vec2()
            .unwrap(),
        parities: parities_t
            .reshape((groups * r, d_out))
            .unwrap()
            .to_vec2()
            .unwrap(),
        outputs_t,
        parities_t,
    }
}

/// Decodes every pattern of up to r losses from every set of at least as
/// many parities, per group (slices) and batched (tensors), and checks the
/// rebuilt outputs against the true ones.
fn check_every_pattern(code: &LinearCode, c: &Case, groups: usize, d_out: usize, tol: f32) {
    let (k, r) = (code.k(), code.r());
    for lost in erasure_patterns(k, r) {
        for s in lost.len()..=r {
            for parities in subsets(r, s) {
                let w = code.weights(&lost, &parities).unwrap();
                let idx = Tensor::new(
                    parities
                        .iter()
                        .map(|&l| l as u32)
                        .collect::<Vec<_>>()
                        .as_slice(),
                    &Device::Cpu,
                )
                .unwrap();
                let batched = w
                    .apply_tensors(&c.parities_t.index_select(&idx, 1).unwrap(), &c.outputs_t)
                    .unwrap();
                assert_eq!(batched.dims(), &[groups, lost.len(), d_out]);
                let batched: Vec<Vec<Vec<f32>>> = batched.to_vec3().unwrap();
                for (g, batched) in batched.iter().enumerate() {
                    let ps: Vec<&[f32]> = parities
                        .iter()
                        .map(|&l| &c.parities[g * r + l][..])
                        .collect();
                    let ys: Vec<Option<&[f32]>> = (0..k)
                        .map(|j| (!lost.contains(&j)).then_some(&c.outputs[g * k + j][..]))
                        .collect();
                    let rebuilt = w.apply(&ps, &ys, d_out).unwrap();
                    for (e, &j) in lost.iter().enumerate() {
                        let truth = &c.outputs[g * k + j];
                        for (got, want) in [(&rebuilt[e], truth), (&batched[e], truth)] {
                            for (a, b) in got.iter().zip(want.iter()) {
                                assert!(
                                    (a - b).abs() <= tol,
                                    "k {k} r {r} lost {lost:?} parities {parities:?}: {got:?} vs {want:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn every_erasure_pattern_decodes_exactly_on_a_linear_f() {
    for k in 2..=4 {
        for r in 1..=3.min(k) {
            let code = LinearCode::new(k, r).unwrap();
            let c = case(&code, 3, 5, 4, (k * 10 + r) as u64);
            check_every_pattern(&code, &c, 3, 4, 1e-3);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Random linear models and queries, every pattern of up to r losses.
    #[test]
    fn random_linear_models_decode_exactly(
        k in 2usize..=5,
        r in 1usize..=3,
        groups in 1usize..4,
        d_in in 1usize..10,
        d_out in 1usize..6,
        seed in any::<u64>(),
    ) {
        let r = r.min(k);
        let code = LinearCode::new(k, r).unwrap();
        let c = case(&code, groups, d_in, d_out, seed);
        check_every_pattern(&code, &c, groups, d_out, 2e-3);
    }
}
