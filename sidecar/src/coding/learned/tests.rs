use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::*;

fn spec(encoder: EncoderKind, k: usize, r: usize, item: &[usize]) -> LearnedSpec {
    LearnedSpec {
        k,
        r,
        encoder,
        decoder: Decoder::Mlp,
        item: item.to_vec(),
        classes: 10,
    }
}

fn code(spec: LearnedSpec) -> (LearnedCode, VarMap) {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    (LearnedCode::new(spec, vb).unwrap(), vars)
}

#[test]
fn mlp_encoder_gives_r_parity_queries_of_the_item_shape() {
    let (c, vars) = code(spec(EncoderKind::Mlp, 3, 2, &[1, 4, 4]));
    let q = Tensor::rand(0f32, 1., (5, 3, 1, 4, 4), &Device::Cpu).unwrap();
    assert_eq!(c.encode(&q).unwrap().dims(), [5, 2, 1, 4, 4]);
    // k·d → k·d → r·d, with biases.
    let params: usize = vars.all_vars().iter().map(|v| v.elem_count()).sum();
    let (kd, rd, ko, kro) = (48, 32, 30, 50);
    let dec = kro * kro + kro + kro * ko + ko + ko * ko + ko;
    assert_eq!(params, kd * kd + kd + kd * rd + rd + dec);
}

#[test]
fn conv_encoder_codes_each_channel_into_r_images() {
    let (c, _) = code(spec(EncoderKind::Conv, 2, 1, &[3, 6, 6]));
    let q = Tensor::rand(0f32, 1., (4, 2, 3, 6, 6), &Device::Cpu).unwrap();
    assert_eq!(c.encode(&q).unwrap().dims(), [4, 1, 3, 6, 6]);
    // Channels do not mix: changing channel 0 leaves channel 1's parity as it was.
    let a = c.encode(&q).unwrap();
    let bumped = (q.narrow(2, 0, 1).unwrap() + 1.0).unwrap();
    let q2 = Tensor::cat(&[&bumped, &q.narrow(2, 1, 2).unwrap()], 2).unwrap();
    let b = c.encode(&q2).unwrap();
    let diff = |ch| {
        (a.narrow(2, ch, 1).unwrap() - b.narrow(2, ch, 1).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert!(diff(0) > 1e-4);
    assert!(diff(1) < 1e-6);
}

#[test]
fn wrong_shapes_are_refused() {
    let (c, _) = code(spec(EncoderKind::Mlp, 2, 1, &[1, 4, 4]));
    let q = Tensor::zeros((1, 3, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(c.encode(&q), Err(CodingError::ItemShape { .. })));
    let o = Tensor::zeros((1, 2, 10), DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(c.decode(&o), Err(CodingError::OutputShape { .. })));
    let mut bad = spec(EncoderKind::Sum, 2, 1, &[1, 4, 4]);
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    assert!(LearnedCode::new(bad.clone(), vb.clone()).is_err());
    bad.encoder = EncoderKind::Mlp;
    bad.decoder = Decoder::Subtract;
    assert!(matches!(
        LearnedCode::new(bad, vb),
        Err(CodingError::LearnedDecoder(Decoder::Subtract))
    ));
}

#[test]
fn decode_group_rebuilds_the_zeroed_slot() {
    let (c, _) = code(spec(EncoderKind::Mlp, 2, 1, &[1, 4, 4]));
    let outs = Tensor::rand(-1f32, 1., (3, 10), &Device::Cpu).unwrap();
    let rows: Vec<Vec<f32>> = (0..3)
        .map(|i| outs.get(i).unwrap().to_vec1().unwrap())
        .collect();
    // Output 1 lost: the decoder sees zeros in its slot.
    let got = c
        .decode_group(&[Some(&rows[0]), None, Some(&rows[2])], &[1])
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].len(), 10);
    let zeroed = Tensor::cat(
        &[
            &outs.narrow(0, 0, 1).unwrap(),
            &Tensor::zeros((1, 10), DType::F32, &Device::Cpu).unwrap(),
            &outs.narrow(0, 2, 1).unwrap(),
        ],
        0,
    )
    .unwrap()
    .unsqueeze(0)
    .unwrap();
    let want: Vec<f32> = c
        .decode(&zeroed)
        .unwrap()
        .get(0)
        .unwrap()
        .get(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got[0], want);
    // The real output differs from what the decoder gets with it zeroed.
    let full = outs.unsqueeze(0).unwrap();
    let with_it: Vec<f32> = c
        .decode(&full)
        .unwrap()
        .get(0)
        .unwrap()
        .get(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_ne!(with_it, want);
    // A slot that arrived is not "lost", and a parity slot is not rebuilt.
    let all = [Some(&rows[0][..]), Some(&rows[1][..]), None];
    assert!(c.decode_group(&all, &[1]).is_err());
    assert!(c.decode_group(&all, &[2]).is_err());
}

#[test]
fn erasure_masks_zero_the_lost_slots() {
    let (c, _) = code(spec(EncoderKind::Mlp, 3, 2, &[1, 2, 2]));
    let (keep, lost) = c
        .erasure_masks(&[vec![0], vec![1, 2]], &Device::Cpu)
        .unwrap();
    let keep: Vec<f32> = keep.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(keep, [0., 1., 1., 1., 1., 1., 0., 0., 1., 1.]);
    let lost: Vec<f32> = lost.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(lost, [1., 0., 0., 0., 1., 1.]);
    assert!(c.erasure_masks(&[vec![3]], &Device::Cpu).is_err());
}

#[test]
fn learned_parity_is_one_slice_of_the_encoding() {
    let (c, _) = code(spec(EncoderKind::Mlp, 2, 2, &[1, 3, 3]));
    let c = Arc::new(c);
    let q = Tensor::rand(0f32, 1., (2, 2, 1, 3, 3), &Device::Cpu).unwrap();
    let all = c.encode(&q).unwrap();
    let p1 = LearnedParity::new(c.clone(), 1).unwrap();
    let got: Vec<f32> = p1
        .encode(&q)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<f32> = all
        .get_on_dim(1, 1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(got, want);
    let flat: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(p1.encode_flat(flat, 2).unwrap(), want);
    assert!(LearnedParity::new(c, 2).is_err());
    assert!(matches!(
        crate::coding::encoder(EncoderKind::Mlp, 2, &[1, 3, 3]),
        Err(CodingError::LearnedEncoder(EncoderKind::Mlp))
    ));
}
