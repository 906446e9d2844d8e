//! Property tests of the gRPC request conversion over arbitrary input (the
//! cargo-fuzz target in sidecar/fuzz covers the HTTP parsers; the gRPC
//! messages are prost-generated, which that crate does not build): any
//! bytes that prost decodes as a `ModelInferRequest`, and any message
//! built from arbitrary parts, convert to an error or to a request whose
//! tensors hold exactly their shape's elements; never a panic.

use std::collections::HashMap;

use proptest::prelude::*;
use prost::Message;

use super::convert::decode_request;
use super::proto::model_infer_request::InferInputTensor;
use super::proto::{InferTensorContents, ModelInferRequest};

fn check(message: ModelInferRequest) {
    if let Ok(decoded) = decode_request(message) {
        for t in &decoded.request.inputs {
            assert_eq!(t.data.len(), t.shape.iter().product::<usize>(), "{t:?}");
        }
    }
}

const DATATYPES: &[&str] = &[
    "FP32", "FP16", "BF16", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
    "UINT64", "BOOL", "BYTES", "fp32", "",
];

fn tensor() -> impl Strategy<Value = (InferInputTensor, Option<Vec<u8>>)> {
    (
        prop::sample::select(DATATYPES),
        prop::collection::vec(-2i64..6, 0..4),
        prop::collection::vec(any::<f32>(), 0..16),
        prop::collection::vec(any::<i32>(), 0..8),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
    )
        .prop_map(|(datatype, shape, fp32, ints, raw)| {
            let contents = raw.is_none().then(|| InferTensorContents {
                fp32_contents: fp32,
                int_contents: ints,
                ..Default::default()
            });
            let t = InferInputTensor {
                name: "x".into(),
                datatype: datatype.to_owned(),
                shape,
                parameters: HashMap::new(),
                contents,
            };
            (t, raw)
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(message) = ModelInferRequest::decode(&bytes[..]) {
            check(message);
        }
    }

    #[test]
    fn arbitrary_messages_convert_or_are_refused(
        tensors in prop::collection::vec(tensor(), 0..3),
        drop_raw in any::<bool>(),
    ) {
        let raw: Vec<_> = tensors.iter().filter_map(|(_, r)| r.clone()).map(Into::into).collect();
        let message = ModelInferRequest {
            model_name: "m".into(),
            id: "i".into(),
            inputs: tensors.into_iter().map(|(t, _)| t).collect(),
            raw_input_contents: if drop_raw { Vec::new() } else { raw },
            ..Default::default()
        };
        // The message survives its own wire form too.
        let again = ModelInferRequest::decode(message.encode_to_vec().as_slice());
        prop_assert!(again.is_ok());
        check(message);
    }
}
