use proptest::prelude::*;

use super::*;

/// Every subset of `0..n` with at least `min` members, as sorted lists.
fn subsets(n: usize, min: usize) -> Vec<Vec<usize>> {
    (1u32..(1 << n))
        .map(|mask| (0..n).filter(|i| mask & (1 << i) != 0).collect::<Vec<_>>())
        .filter(|s| s.len() >= min)
        .collect()
}

/// A fixed pseudo-random query batch, values in [0, 1).
fn queries(len: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

#[test]
fn the_nodes_are_chebyshev_points() {
    let code = BerrutCode::new(2, 4).expect("code");
    let h = std::f64::consts::FRAC_1_SQRT_2;
    assert!((code.data_nodes()[0] - h).abs() < 1e-12);
    assert!((code.data_nodes()[1] + h).abs() < 1e-12);
    let z = code.eval_nodes();
    assert_eq!(z.len(), 4);
    assert!((z[0] - 1.0).abs() < 1e-12 && (z[3] + 1.0).abs() < 1e-12);
    assert!((z[1] - 0.5).abs() < 1e-12 && (z[2] + 0.5).abs() < 1e-12);
}

#[test]
fn codes_need_k_at_least_2_and_more_coded_queries_than_k() {
    assert!(matches!(
        BerrutCode::new(1, 3),
        Err(CodingError::KTooSmall(1))
    ));
    assert!(matches!(
        BerrutCode::new(3, 3),
        Err(CodingError::CodedQueries { k: 3, n: 3 })
    ));
    assert!(BerrutCode::new(2, MAX_N + 1).is_err());
    assert!(BerrutCode::new(2, 3).is_ok());
}

#[test]
fn weights_sum_to_one_and_are_indicators_at_nodes() {
    for k in 2..=6 {
        for n in k + 1..=k + 3 {
            let code = BerrutCode::new(k, n).expect("code");
            for i in 0..n {
                let sum: f64 = code.encode_row(i).iter().sum();
                assert!((sum - 1.0).abs() < 1e-12, "k={k} n={n} row {i}: {sum}");
            }
            for s in subsets(n, 1) {
                let m = code.decode_matrix(&s).expect("decodes");
                for row in m.chunks(s.len()) {
                    let sum: f64 = row.iter().sum();
                    assert!((sum - 1.0).abs() < 1e-9, "k={k} n={n} {s:?}: {sum}");
                }
            }
        }
    }
    let nodes = [0.9, 0.1, -0.4];
    assert_eq!(berrut_weights(&nodes, 0.1), vec![0.0, 1.0, 0.0]);
}

#[test]
fn k3_has_a_coded_query_equal_to_the_middle_query() {
    // α_1 = cos(π/2) = z_2 for n = 5: coded query 2 is X_1 itself (exactly
    // or nearly, as the two cosines round).
    let code = BerrutCode::new(3, 5).expect("code");
    let row = code.encode_row(2);
    assert!(row[0].abs() < 1e-9 && (row[1] - 1.0).abs() < 1e-9 && row[2].abs() < 1e-9);
}

#[test]
fn decoding_commutes_with_an_affine_model() {
    // Both maps are linear with weights summing to 1, so for F(x) = A x + b,
    // decode(F(encode(X))) = F(decode(encode(X))) for every subset.
    let (item, out, groups) = (5, 3, 4);
    let a: Vec<f32> = queries(out * item, 7).iter().map(|v| v - 0.5).collect();
    let b = [0.3f32, -1.0, 2.0];
    let f = |x: &[f32]| -> Vec<f32> {
        (0..out)
            .map(|o| b[o] + (0..item).map(|i| a[o * item + i] * x[i]).sum::<f32>())
            .collect()
    };
    for k in 2..=4 {
        for n in k + 1..=k + 2 {
            let code = BerrutCode::new(k, n).expect("code");
            let x = queries(groups * k * item, (k * 10 + n) as u64);
            let coded = code.encode_flat(&x, groups, item).expect("encodes");
            for s in subsets(n, 1) {
                let mut answers = Vec::new();
                let mut inputs = Vec::new();
                for g in 0..groups {
                    for &i in &s {
                        let at = (g * n + i) * item;
                        answers.extend(f(&coded[at..at + item]));
                        inputs.extend_from_slice(&coded[at..at + item]);
                    }
                }
                let decoded = code.decode_flat(&s, &answers, groups, out).expect("out");
                let x_hat = code.decode_flat(&s, &inputs, groups, item).expect("in");
                for (q, chunk) in x_hat.chunks(item).enumerate() {
                    let want = f(chunk);
                    let got = &decoded[q * out..(q + 1) * out];
                    for (w, g) in want.iter().zip(got) {
                        assert!((w - g).abs() < 1e-4, "k={k} n={n} {s:?}: {w} vs {g}");
                    }
                }
            }
        }
    }
}

#[test]
fn every_subset_of_at_least_k_answers_decodes_to_finite_values_near_the_truth() {
    // F the identity: the decoded queries should come back near the
    // queries. Berrut's interpolant is approximate, and random queries are
    // no smooth function of the node: with all n answers in, the squared
    // error is a small share of the queries' spread about their group's
    // mean (measured ≤ 0.12 for k ≤ 4, n ≤ k + 2); with two adjacent end
    // nodes lost at k = 4, n = 6 it reaches 1.7 times it (ApproxIFER's
    // accuracy loss), so that bound is loose.
    let (item, groups) = (8, 50);
    for k in 2..=4 {
        for n in k + 1..=k + 2 {
            let code = BerrutCode::new(k, n).expect("code");
            let x = queries(groups * k * item, (k * 100 + n) as u64);
            let coded = code.encode_flat(&x, groups, item).expect("encodes");
            for s in subsets(n, k) {
                let answers: Vec<f32> = (0..groups)
                    .flat_map(|g| {
                        s.iter()
                            .flat_map(move |&i| (0..item).map(move |v| (g * n + i) * item + v))
                    })
                    .map(|at| coded[at])
                    .collect();
                let decoded = code.decode_flat(&s, &answers, groups, item).expect("dec");
                assert!(decoded.iter().all(|v| v.is_finite()), "k={k} n={n} {s:?}");
                let (mut err, mut spread) = (0f64, 0f64);
                for g in 0..groups {
                    let group = &x[g * k * item..(g + 1) * k * item];
                    for v in 0..item {
                        let mean = (0..k).map(|j| group[j * item + v]).sum::<f32>() / k as f32;
                        for j in 0..k {
                            let truth = group[j * item + v];
                            let got = decoded[(g * k + j) * item + v];
                            err += f64::from((got - truth).powi(2));
                            spread += f64::from((mean - truth).powi(2));
                        }
                    }
                }
                let bound = if s.len() == n { 0.2 } else { 2.5 };
                assert!(err < bound * spread, "k={k} n={n} {s:?}: {err} vs {spread}");
            }
        }
    }
}

#[test]
fn bad_shapes_and_subsets_are_refused() {
    let code = BerrutCode::new(2, 4).expect("code");
    assert!(matches!(
        code.decode_matrix(&[]),
        Err(CodingError::Arrived { .. })
    ));
    assert!(code.decode_matrix(&[1, 1]).is_err());
    assert!(code.decode_matrix(&[4]).is_err());
    assert!(matches!(
        code.encode_flat(&[0.0; 5], 1, 3),
        Err(CodingError::FlatLength { .. })
    ));
    assert!(code.encode_one(4, &[0.0; 6], 1, 3).is_err());
    assert!(code.decode_flat(&[0, 2], &[0.0; 5], 1, 3).is_err());
    // Columns follow the order the answers are given in.
    let a = code.decode_matrix(&[0, 3]).expect("a");
    let b = code.decode_matrix(&[3, 0]).expect("b");
    assert_eq!((a[0], a[1]), (b[1], b[0]));
}

proptest! {
    /// Weights stay finite, sum to 1 and tend to a node's indicator near
    /// it, from either side and at any distance, down to the exact node.
    #[test]
    fn weights_are_continuous_at_nodes(
        k in 2usize..8,
        node in 0usize..8,
        exp in 1i32..320,
        above in any::<bool>(),
    ) {
        let code = BerrutCode::new(k, k + 1).expect("code");
        let nodes = code.data_nodes();
        let j = node % k;
        let d = 10f64.powi(-exp);
        let z = if above { nodes[j] + d } else { nodes[j] - d };
        let w = berrut_weights(nodes, z);
        prop_assert!(w.iter().all(|v| v.is_finite()));
        prop_assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        if exp >= 8 {
            prop_assert!((w[j] - 1.0).abs() < 1e-5, "{:?} at {}", w, z);
        }
        let exact = berrut_weights(nodes, nodes[j]);
        prop_assert_eq!(exact[j], 1.0);
    }

    /// Decoding any non-empty subset at any values gives finite outputs.
    #[test]
    fn any_subset_decodes_finite(
        k in 2usize..5,
        extra in 1usize..3,
        mask in 1u32..32,
        values in proptest::collection::vec(-1e3f32..1e3, 8),
    ) {
        let n = k + extra;
        let code = BerrutCode::new(k, n).expect("code");
        let s: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
        prop_assume!(!s.is_empty());
        let outputs: Vec<f32> = (0..s.len()).map(|i| values[i % values.len()]).collect();
        let decoded = code.decode_flat(&s, &outputs, 1, 1).expect("decodes");
        prop_assert!(decoded.iter().all(|v| v.is_finite()));
        prop_assert_eq!(decoded.len(), k);
    }
}
