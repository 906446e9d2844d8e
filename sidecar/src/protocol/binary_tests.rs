//! Tests of `binary.rs`: request and response bodies, JSON and binary.
use super::*;
use serde_json::json;

/// A request body laid out the way tritonclient.http lays it out: the
/// JSON (with binary_data_size per input and binary outputs requested)
/// followed by the raw little-endian bytes.
fn tritonclient_body(shape: &[usize], data: &[f32], outputs: Value) -> (Vec<u8>, usize) {
    let size = data.len() * 4;
    let mut header = json!({
        "inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                    "parameters": {"binary_data_size": size}}],
    });
    match outputs {
        Value::Null => {
            header["parameters"] = json!({"binary_data_output": true});
        }
        o => header["outputs"] = o,
    }
    let mut body = serde_json::to_vec(&header).unwrap();
    let len = body.len();
    for x in data {
        body.extend_from_slice(&x.to_le_bytes());
    }
    (body, len)
}

#[test]
fn decodes_tritonclient_binary_request_with_default_outputs() {
    let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
    let (body, len) = tritonclient_body(&[2, 3], &data, Value::Null);
    let req = decode_request(&body, Some(len)).unwrap();
    assert_eq!(req.inputs.len(), 1);
    assert_eq!(req.inputs[0].shape, vec![2, 3]);
    assert_eq!(req.inputs[0].data, data);
    assert_eq!(req.outputs.lookup("anything"), Some(true));
}

#[test]
fn decodes_requested_outputs_binary_or_json() {
    let (body, len) = tritonclient_body(
        &[1],
        &[1.0],
        json!([{"name": "a", "parameters": {"binary_data": true}}, {"name": "b"}]),
    );
    let req = decode_request(&body, Some(len)).unwrap();
    assert_eq!(req.outputs.lookup("a"), Some(true));
    assert_eq!(req.outputs.lookup("b"), Some(false));
    assert_eq!(req.outputs.lookup("c"), None);
}

#[test]
fn decodes_json_flat_and_nested() {
    let flat =
        br#"{"id":"q1","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4]}]}"#;
    let nested =
        br#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]}"#;
    let a = decode_request(flat, None).unwrap();
    let b = decode_request(nested, None).unwrap();
    assert_eq!(a.id.as_deref(), Some("q1"));
    assert_eq!(a.inputs, b.inputs);
    assert_eq!(a.inputs[0].data, vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(a.outputs.lookup("y"), Some(false));
}

#[test]
fn converts_other_numeric_datatypes() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "FP64",
            [1.5f64, -2.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        (
            "INT64",
            [3i64, -4].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        ("INT8", vec![3u8, (-4i8) as u8]),
        (
            "UINT16",
            [3u16, 4].iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
        // 1.5 and -2.0 in half precision.
        (
            "FP16",
            [0x3e00u16, 0xc000]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        // 1.5 and -2.0 in bfloat16.
        (
            "BF16",
            [0x3fc0u16, 0xc000]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
    ];
    for (dt, bytes) in cases {
        let header = json!({"inputs": [{"name": "x", "shape": [2], "datatype": dt,
            "parameters": {"binary_data_size": bytes.len()}}]});
        let mut body = serde_json::to_vec(&header).unwrap();
        let len = body.len();
        body.extend_from_slice(&bytes);
        let req = decode_request(&body, Some(len)).unwrap();
        let d = &req.inputs[0].data;
        assert!(d[0] == 1.5 || d[0] == 3.0, "{dt}: {d:?}");
        assert!(d[1] == -2.0 || d[1] == -4.0 || d[1] == 4.0, "{dt}: {d:?}");
    }
}

#[test]
fn binary_response_round_trips_through_the_client_decoder() {
    let response = InferResponse {
        model_name: "m".into(),
        model_version: Some("1".into()),
        id: Some("x".into()),
        parameters: Parameters::new(),
        outputs: vec![
            NamedTensor {
                name: "a".into(),
                shape: vec![2, 2],
                data: vec![0.1, -0.2, 3.0, f32::MAX],
            },
            NamedTensor {
                name: "b".into(),
                shape: vec![1],
                data: vec![7.0],
            },
        ],
    };
    for selection in [OutputSelection::all(true), OutputSelection::all(false)] {
        let enc = encode_response(&response, &selection);
        assert_eq!(enc.header_length.is_some(), selection.binary_by_default);
        let back = decode_response(&enc.body, enc.header_length).unwrap();
        assert_eq!(back, response);
    }
    // Only the requested output, JSON: short f32 printing, no binary tail.
    let only_b = OutputSelection {
        requested: vec![RequestedOutput {
            name: "a".into(),
            binary: false,
        }],
        binary_by_default: false,
    };
    let enc = encode_response(&response, &only_b);
    let text = String::from_utf8(enc.body).unwrap();
    assert!(text.contains("[0.1,-0.2,3.0,"), "{text}");
    assert!(!text.contains("\"b\""), "{text}");
}

#[test]
fn binary_request_round_trips_through_the_server_decoder() {
    let request = InferRequest {
        id: Some("r".into()),
        parameters: Parameters::new(),
        inputs: vec![NamedTensor {
            name: "input".into(),
            shape: vec![3, 2],
            data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5],
        }],
        outputs: OutputSelection::all(true),
    };
    for binary in [true, false] {
        let enc = encode_request(&request, binary);
        assert_eq!(enc.header_length.is_some(), binary);
        let back = decode_request(&enc.body, enc.header_length).unwrap();
        assert_eq!(back, request);
    }
}

fn err(body: &[u8], header: Option<usize>) -> ProtocolError {
    match decode_request(body, header) {
        Ok(r) => panic!("expected an error, got {r:?}"),
        Err(e) => e,
    }
}

#[test]
fn bad_requests_say_what_is_wrong() {
    let cases: Vec<(&[u8], Option<usize>, &str)> = vec![
        (b"{", None, "malformed JSON"),
        (b"[1,2]", None, "malformed JSON"),
        (b"{\"inputs\": 3}", None, "malformed JSON"),
        (br#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","data":[1]}]}"#, None, "2 elements) but 1"),
        (br#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[1]}]}"#, None, "non-negative"),
        (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP33","data":[1]}]}"#, None, "unknown datatype 'FP33'"),
        (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"BYTES","data":["a"]}]}"#, None, "BYTES is not supported"),
        (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":["a"]}]}"#, None, "not a number"),
        (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#, None, "has no data"),
        (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}"#, None, "header missing"),
        (br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":"4"}}]}"#, None, "binary_data_size"),
        (br#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","data":[]}]}"#, None, "too many elements"),
        (br#"{"inputs":[],"parameters":{"binary_data_output":1}}"#, None, "binary_data_output"),
        (br#"{"inputs":[],"outputs":[{"name":"y","parameters":{"binary_data":"yes"}}]}"#, None, "binary_data"),
    ];
    for (body, header, needle) in cases {
        let e = err(body, header);
        assert!(e.to_string().contains(needle), "{needle:?} not in {e}");
        assert!(e.status().is_client_error());
    }
}

#[test]
fn binary_header_mismatches_are_caught() {
    let (body, len) = tritonclient_body(&[2], &[1.0, 2.0], Value::Null);
    // Header longer than the body.
    assert!(
        err(&body, Some(body.len() + 1))
            .to_string()
            .contains("has only")
    );
    // Header too short: the JSON is cut.
    assert!(matches!(
        err(&body, Some(len - 1)),
        ProtocolError::MalformedJson(_)
    ));
    // Header too long: JSON followed by a byte of binary data.
    assert!(matches!(
        err(&body, Some(len + 1)),
        ProtocolError::MalformedJson(_)
    ));
    // Missing bytes.
    let e = err(&body[..body.len() - 1], Some(len));
    assert!(e.to_string().contains("only 7 bytes"), "{e}");
    // Extra bytes.
    let mut long = body.clone();
    long.push(0);
    assert!(
        err(&long, Some(len))
            .to_string()
            .contains("belong to no tensor")
    );
    // Size that does not fit the shape.
    let header = json!({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32",
        "parameters": {"binary_data_size": 4}}]});
    let mut b = serde_json::to_vec(&header).unwrap();
    let l = b.len();
    b.extend_from_slice(&[0; 4]);
    assert!(err(&b, Some(l)).to_string().contains("takes 8 bytes"));
    // Both data and binary.
    let header = json!({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
        "data": [1], "parameters": {"binary_data_size": 4}}]});
    let mut b = serde_json::to_vec(&header).unwrap();
    let l = b.len();
    b.extend_from_slice(&[0; 4]);
    assert!(err(&b, Some(l)).to_string().contains("both"));
}

#[test]
fn header_length_values() {
    assert_eq!(parse_header_length(None).unwrap(), None);
    assert_eq!(parse_header_length(Some(b"123")).unwrap(), Some(123));
    for bad in [&b"-1"[..], b"abc", b"", b"\xff", b"99999999999999999999999"] {
        assert!(matches!(
            parse_header_length(Some(bad)),
            Err(ProtocolError::BadHeaderLength { .. })
        ));
    }
}

mod prop {
    use super::super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|x| json!(x)),
            "[a-z]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map("(name|shape|datatype|data|parameters|binary_data_size|inputs|outputs|id|[a-z]{1,3})", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Arbitrary bytes with an arbitrary header length never panic.
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..600), header in prop::option::of(0usize..700)) {
            let _ = decode_request(&body, header);
            let _ = decode_response(&body, header);
        }

        /// Request-shaped JSON with arbitrary values, plus arbitrary
        /// binary bytes, is accepted only when consistent.
        #[test]
        fn arbitrary_request_json_never_panics(
            inputs in prop::collection::vec(any_json(), 0..3),
            shapes in prop::collection::vec(prop::collection::vec(-2i64..6, 0..4), 3),
            sizes in prop::collection::vec(prop::option::of(0usize..64), 3),
            datatypes in prop::collection::vec(prop_oneof![Just("FP32"), Just("FP16"), Just("INT8"), Just("BYTES"), Just("BOOL"), Just("X")], 3),
            tail in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let inputs: Vec<Value> = inputs.into_iter().enumerate().map(|(i, data)| {
                let mut t = json!({"name": format!("t{i}"), "shape": shapes[i], "datatype": datatypes[i], "data": data});
                if let Some(n) = sizes[i] {
                    t["parameters"] = json!({"binary_data_size": n});
                    if i % 2 == 0 { t.as_object_mut().unwrap().remove("data"); }
                }
                t
            }).collect();
            let mut body = serde_json::to_vec(&json!({"inputs": inputs})).unwrap();
            let len = body.len();
            body.extend_from_slice(&tail);
            if let Ok(req) = decode_request(&body, Some(len)) {
                for t in &req.inputs {
                    prop_assert_eq!(t.data.len(), t.shape.iter().product::<usize>());
                }
            }
        }

        /// Whatever f32 tensors we send, binary or JSON, the server
        /// decoder gets them back: bit for bit in binary, to f32 precision in
        /// JSON (which has no NaN or infinity).
        #[test]
        fn requests_round_trip(
            rows in 0usize..5,
            cols in 1usize..5,
            seed in prop::collection::vec(any::<f32>(), 25),
            binary in any::<bool>(),
        ) {
            let data: Vec<f32> = seed.iter().take(rows * cols).map(|x| if binary || x.is_finite() { *x } else { 0.0 }).collect();
            let request = InferRequest {
                inputs: vec![NamedTensor { name: "x".into(), shape: vec![rows, cols], data }],
                ..Default::default()
            };
            let enc = encode_request(&request, binary);
            let back = decode_request(&enc.body, enc.header_length).unwrap();
            let (got, sent) = (&back.inputs[0].data, &request.inputs[0].data);
            prop_assert_eq!(got.len(), sent.len());
            for (g, s) in got.iter().zip(sent) {
                if binary {
                    prop_assert_eq!(g.to_bits(), s.to_bits());
                } else {
                    // JSON text goes through f64 on the way back in.
                    prop_assert!(g == s || (g - s).abs() <= s.abs() * 1e-6, "{} != {}", g, s);
                }
            }
        }
    }
}
