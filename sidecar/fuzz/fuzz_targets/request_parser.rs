//! Fuzzes the v2 body parsers (JSON and Triton's binary extension) and the
//! model checks behind them: whatever the bytes, they must return an error
//! or a request, never panic, and a request they accept must fit the model.
//!
//! Input layout: byte 0 picks how the header length is given (none, a
//! number taken from bytes 1..3, or the raw header text up to the first
//! newline); the rest is the body.

#![no_main]

use libfuzzer_sys::fuzz_target;

// The protocol sources themselves, without the rest of coded-sidecar (so
// candle is not rebuilt with sanitizers). They refer to each other through
// `super::`, which is this crate's root here.
#[allow(dead_code, unused_imports)]
#[path = "../../src/protocol/binary.rs"]
mod binary;
#[allow(dead_code, unused_imports)]
#[path = "../../src/protocol/error.rs"]
mod error;
#[allow(dead_code, unused_imports)]
#[path = "../../src/protocol/model.rs"]
mod model;
#[allow(dead_code, unused_imports)]
#[path = "../../src/protocol/tensor.rs"]
mod tensor;
#[allow(dead_code, unused_imports)]
#[path = "../../src/protocol/v2.rs"]
mod v2;

use binary::{InferResponse, NamedTensor};
use binary::{decode_request, decode_response, encode_response, parse_header_length};
use model::{ModelInfo, TensorSpec};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (header, body) = match mode % 3 {
        0 => (Ok(None), rest),
        1 if rest.len() >= 2 => {
            let n = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            (Ok(Some(n)), &rest[2..])
        }
        _ => match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (parse_header_length(Some(&rest[..i])), &rest[i + 1..]),
            None => (Ok(None), rest),
        },
    };
    let Ok(header) = header else { return };

    let _ = decode_response(body, header);
    let Ok(mut request) = decode_request(body, header) else {
        return;
    };
    for input in &request.inputs {
        assert_eq!(input.data.len(), input.shape.iter().product::<usize>());
    }

    let model = ModelInfo {
        name: "m".into(),
        versions: vec!["1".into()],
        platform: "fuzz".into(),
        input: TensorSpec::fp32("input", vec![4]),
        output: TensorSpec::fp32("logits", vec![3]),
    };
    let Ok(input) = model.take_input(&mut request) else {
        return;
    };
    assert_eq!(input.data.len(), input.rows * 4);
    let response = InferResponse {
        model_name: "m".into(),
        model_version: Some("1".into()),
        id: request.id.clone(),
        parameters: Default::default(),
        outputs: vec![NamedTensor {
            name: "logits".into(),
            shape: model.output_shape(input.rows, input.batched),
            data: vec![0.5; input.rows * 3],
        }],
    };
    // What we send back must parse with our own client decoder.
    let encoded = encode_response(&response, &request.outputs);
    let back = decode_response(&encoded.body, encoded.header_length).expect("own response parses");
    assert_eq!(back.outputs, response.outputs);
});
