//! A learned code served end to end: `train code` (Learning a Code) for a
//! freshly trained MLP, workers that all serve the base model (the parity
//! queries E(X) are base-model queries), and a frontend that encodes with
//! the code's encoder network and rebuilds with its decoder network when a
//! model worker is stopped. Also: a code card that does not match the
//! frontend's flags is refused with one clear line.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use candle_core::{Device, Tensor};
use coded_sidecar::coding::{Decoder, EncoderKind};
use coded_sidecar::data::{DEFAULT_DATA_DIR, FashionMnist};
use coded_sidecar::local::Child;
use coded_sidecar::model::{self, CodeModel, Model};
use coded_sidecar::protocol::client::{Client, Encoding};
use coded_sidecar::protocol::{InferRequest, NamedTensor, OutputSelection};
use nix::sys::signal::Signal;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_coded-sidecar");
const NAME: &str = "fashion-mlp";

fn run(args: &[&str]) {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run coded-sidecar");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A base MLP and its k = 2 learned code (mlp encoder, mlp decoder), both
/// trained briefly by the real binary.
fn train(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (base, code) = (dir.join("base"), dir.join("code"));
    let (b, c) = (base.to_str().unwrap(), code.to_str().unwrap());
    run(&[
        "train", "base", "--quiet", "--out", b, "--epochs", "1", "--limit", "5000",
    ]);
    run(&[
        "train",
        "code",
        "--base",
        b,
        "--k",
        "2",
        "--encoder",
        "mlp",
        "--decoder",
        "mlp",
        "--quiet",
        "--out",
        c,
        "--epochs",
        "1",
        "--limit",
        "2000",
    ]);
    (base, code)
}

fn request(images: &[Vec<f32>]) -> InferRequest {
    InferRequest {
        id: None,
        parameters: Default::default(),
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![images.len(), 1, 28, 28],
            data: images.concat(),
        }],
        outputs: OutputSelection::default(),
    }
}

/// What the decoder gives for group (a, b) with output `lost` missing: the
/// base model's outputs, and its output on the code's parity query.
fn expected(base: &Model, code: &CodeModel, a: &[f32], b: &[f32], lost: usize) -> Vec<f32> {
    let cpu = Device::Cpu;
    let q = Tensor::from_vec([a, b].concat(), (1, 2, 1, 28, 28), &cpu).unwrap();
    let f = |x: &Tensor| -> Vec<f32> {
        base.network
            .forward(x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let parity = f(&code
        .code
        .encode(&q)
        .unwrap()
        .reshape((1, 1, 28, 28))
        .unwrap());
    let outs = [
        f(&q.get_on_dim(1, 0).unwrap()),
        f(&q.get_on_dim(1, 1).unwrap()),
    ];
    let mut slots: Vec<Option<&[f32]>> = outs.iter().map(|o| Some(o.as_slice())).collect();
    slots[lost] = None;
    slots.push(Some(&parity));
    code.code.decode_group(&slots, &[lost]).unwrap().remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_s_answers_are_rebuilt_by_the_learned_decoder() {
    coded_sidecar::tls::init();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("learned-models");
    let (base, code) = train(&dir);
    let cpu = model::Placement::f32(Device::Cpu);
    let base_model = model::load(&base, &cpu).unwrap();
    let code_model = model::load_code(&code, &Device::Cpu).unwrap();
    let data = FashionMnist::load(DEFAULT_DATA_DIR.as_ref()).expect("Fashion-MNIST");
    let flat: Vec<f32> = data
        .test
        .take(200)
        .unwrap()
        .images
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let images: Vec<Vec<f32>> = flat.chunks(784).map(<[f32]>::to_vec).collect();

    // Every worker, parity included, serves the base model.
    let worker = |name: &str| {
        [
            "worker",
            "--model",
            base.to_str().unwrap(),
            "--model-name",
            name,
            "--port",
            "0",
        ]
        .map(String::from)
        .to_vec()
    };
    let mut children = Vec::new();
    for name in ["model-0", "model-1", "parity"] {
        children.push(
            Child::spawn_exe(BIN.as_ref(), name, &worker(NAME), "warn")
                .await
                .unwrap(),
        );
    }
    let args: Vec<String> = [
        "frontend",
        "--port",
        "0",
        "--model-card",
        base.to_str().unwrap(),
        "--model-endpoints",
        &format!("{},{}", children[0].url, children[1].url),
        "--parity-endpoints",
        &children[2].url,
        "--k",
        "2",
        "--encoder",
        "mlp",
        "--decoder",
        "mlp",
        "--code-card",
        code.to_str().unwrap(),
        "--timeout-ms",
        "5000",
    ]
    .map(String::from)
    .to_vec();
    let frontend = Child::spawn_exe(BIN.as_ref(), "frontend", &args, "warn")
        .await
        .unwrap();
    let client = Client::new(&frontend.url, Duration::from_secs(10)).unwrap();
    let ask = async |pair: &[Vec<f32>]| {
        let r = client
            .infer(NAME, None, &request(pair), Encoding::Binary)
            .await
            .expect("no query lost");
        let rebuilt: Vec<usize> = match r.parameters.get("reconstructed_rows") {
            Some(Value::Array(rows)) => rows
                .iter()
                .filter_map(|v| v.as_u64())
                .map(|v| v as usize)
                .collect(),
            _ if r.parameters.get("reconstructed") == Some(&Value::Bool(true)) => vec![0],
            _ => Vec::new(),
        };
        (r.outputs[0].data.clone(), rebuilt)
    };
    // Warm up with everything running: answers are the base model's.
    for pair in images[..20].chunks(2) {
        let (out, rebuilt) = ask(pair).await;
        assert!(rebuilt.is_empty());
        assert_eq!(out.len(), 20);
    }
    children[1].signal(Signal::SIGSTOP).unwrap();
    let mut checked = 0;
    for pair in images[20..].chunks(2) {
        let (out, rebuilt) = ask(pair).await;
        for &j in &rebuilt {
            // One request of two rows is one group: row j is slot j.
            let want = expected(&base_model, &code_model, &pair[0], &pair[1], j);
            let got = &out[j * 10..(j + 1) * 10];
            let diff = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs())
                .fold(0f32, f32::max);
            assert!(
                diff < 1e-3,
                "row {j} rebuilt as {got:?}, the decoder gives {want:?}"
            );
            checked += 1;
        }
    }
    children[1].signal(Signal::SIGCONT).unwrap();
    assert!(checked >= 1, "the stopped worker's queries were rebuilt");
    children.push(frontend);
    coded_sidecar::local::stop_all(children).await;
}

/// A code card for another k, encoder or decoder than the flags give is
/// refused at start, and learned flags without a card too.
#[tokio::test]
async fn a_code_card_of_another_code_is_refused() {
    use coded_sidecar::frontend::FrontendOptions;
    use coded_sidecar::model::{ModelCard, Role, TensorSpec, card};
    let dir = tempfile::tempdir().unwrap();
    let c = ModelCard {
        format: card::CARD_FORMAT.into(),
        name: "learned-k2".into(),
        arch: coded_sidecar::model::Arch::Mlp,
        role: Role::Code {
            k: 2,
            r: 1,
            encoder: EncoderKind::Mlp,
            decoder: Decoder::Mlp,
            base_sha256: "00".into(),
            base_name: "base".into(),
        },
        input: TensorSpec {
            name: "input".into(),
            datatype: "FP32".into(),
            shape: vec![1, 2, 2],
        },
        output: TensorSpec {
            name: "logits".into(),
            datatype: "FP32".into(),
            shape: vec![2],
        },
        classes: vec!["a".into(), "b".into()],
        weights: card::WeightsRef {
            uri: "model.safetensors".into(),
            sha256: "00".into(),
            parameters: 1,
        },
        training: None,
    };
    let path = dir.path().join("card.json");
    std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
    let worker = common::start(common::options(), common::Linear::default()).await;
    let attempt = |k: usize, encoder: EncoderKind, decoder: Decoder, code: Option<String>| {
        let mut o = FrontendOptions::new(
            std::slice::from_ref(&worker.url),
            std::slice::from_ref(&worker.url),
        );
        o.http.port = 0;
        o.model_name = Some("linear".into());
        (o.k, o.encoder, o.decoder, o.code_card) = (k, encoder, decoder, code);
        async move { coded_sidecar::frontend::bind(&o).await.map(|_| ()) }
    };
    let card = Some(path.display().to_string());
    let err = attempt(3, EncoderKind::Mlp, Decoder::Mlp, card.clone())
        .await
        .expect_err("k = 2 code for k = 3")
        .to_string();
    assert!(
        err.contains(
            "learned code learned-k2 is k = 2, r = 1, encoder mlp, decoder mlp, but the flags ask for k = 3, r = 1, encoder mlp, decoder mlp"
        ),
        "{err}"
    );
    let err = attempt(2, EncoderKind::Conv, Decoder::Mlp, card.clone())
        .await
        .expect_err("mlp code for conv")
        .to_string();
    assert!(
        err.contains("encoder mlp") && err.contains("encoder conv"),
        "{err}"
    );
    let err = attempt(2, EncoderKind::Sum, Decoder::Subtract, card)
        .await
        .expect_err("a code with hand-written flags")
        .to_string();
    assert!(err.contains("decoder subtract"), "{err}");
    let err = attempt(2, EncoderKind::Mlp, Decoder::Mlp, None)
        .await
        .expect_err("learned flags without a code")
        .to_string();
    assert!(err.contains("give --code-card"), "{err}");
}
