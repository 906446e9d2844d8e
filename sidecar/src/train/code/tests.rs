use candle_core::{Device, Tensor};

use super::*;
use crate::data::Split;
use crate::model::{Arch, Network};

/// Random images labelled by the base model itself, so that the labels
/// are something a decoder of F's outputs can learn.
fn data(base: &Model, n: usize) -> FashionMnist {
    let split = |n: usize, scale: f64| {
        let images = Tensor::rand(0f32, 1., (n, 1, 28, 28), &Device::Cpu).unwrap();
        let images = (images * scale).unwrap();
        let logits = base.network.forward(&images).unwrap();
        let labels = crate::model::argmax(&logits)
            .unwrap()
            .into_iter()
            .map(|c| c as u8)
            .collect();
        Split { images, labels }
    };
    FashionMnist {
        train: split(n, 1.0),
        validation: split(n / 4, 0.9),
        test: split(n / 4, 0.8),
    }
}

fn base() -> Model {
    let network = Network::new(Arch::Mlp, [1, 28, 28], 10, 5, &Device::Cpu).unwrap();
    let card: ModelCard = serde_json::from_value(serde_json::json!({
        "format": crate::model::card::CARD_FORMAT,
        "name": "tiny",
        "arch": "mlp",
        "role": {"kind": "base"},
        "input": {"name": "input", "datatype": "FP32", "shape": [1, 28, 28]},
        "output": {"name": "logits", "datatype": "FP32", "shape": [10]},
        "classes": (0..10).map(|c| c.to_string()).collect::<Vec<_>>(),
        "weights": {"uri": "model.safetensors", "sha256": "ab", "parameters": 0},
    }))
    .unwrap();
    Model { card, network }
}

fn recipe(loss: CodeLoss) -> CodeRecipe {
    CodeRecipe {
        k: 2,
        r: 1,
        encoder: EncoderKind::Mlp,
        decoder: Decoder::Mlp,
        loss,
        groups_per_batch: 16,
    }
}

fn opts(epochs: usize) -> TrainOptions {
    TrainOptions {
        epochs,
        seed: 1,
        limit: None,
        quiet: true,
    }
}

#[test]
fn training_reduces_the_loss_and_saves_a_code_card() {
    let base = base();
    let data = data(&base, 256);
    let out = tempfile::tempdir().unwrap();
    for loss in [CodeLoss::Mse, CodeLoss::Xent] {
        let dir = out.path().join(loss.name());
        let done = train_code(&data, &base, &recipe(loss), &opts(4), &dir).unwrap();
        let (first, last) = (done.losses[0], done.losses[3]);
        assert!(last < 0.9 * first, "{loss:?}: loss {first} -> {last}");
        assert_eq!(done.card.name, "tiny-code-k2-mlp-mlp");
        assert!(
            done.card
                .check_code(2, 1, EncoderKind::Mlp, Decoder::Mlp)
                .is_ok()
        );
        let err = done
            .card
            .check_code(3, 1, EncoderKind::Mlp, Decoder::Mlp)
            .unwrap_err();
        assert!(err.contains("k = 2") && err.contains("k = 3"), "{err}");
        // What was saved loads back as the same code.
        let loaded = crate::model::load_code(&done.card_path, &Device::Cpu).unwrap();
        assert_eq!(loaded.card, done.card);
        assert_eq!(loaded.code.spec().k, 2);
        // And is no model to serve.
        let placement = crate::model::Placement::f32(Device::Cpu);
        assert!(crate::model::load(&done.card_path, &placement).is_err());
    }
}

#[test]
fn a_parity_or_code_card_is_no_base() {
    let mut base = base();
    let data = data(&base, 32);
    base.card.role = Role::Code {
        k: 2,
        r: 1,
        encoder: EncoderKind::Mlp,
        decoder: Decoder::Mlp,
        base_sha256: String::new(),
        base_name: String::new(),
    };
    let out = tempfile::tempdir().unwrap();
    let err = train_code(&data, &base, &recipe(CodeLoss::Mse), &opts(1), out.path());
    assert!(matches!(err, Err(TrainError::Invalid(_))));
}
