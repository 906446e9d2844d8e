//! Tensor data in a v2 body: JSON values or binary bytes (Triton's
//! extension), checked against the tensor's shape and datatype and
//! converted to `f32`.

use serde_json::Value;

use super::binary::NamedTensor;
use super::error::ProtocolError;
use super::v2::{self, BINARY_DATA_SIZE, Datatype, Parameters};

/// The binary bytes after the JSON, handed out tensor by tensor in order.
pub struct BinaryTail<'a> {
    rest: &'a [u8],
    has_header: bool,
}

impl<'a> BinaryTail<'a> {
    pub fn new(rest: &'a [u8], has_header: bool) -> Self {
        BinaryTail { rest, has_header }
    }

    fn take(&mut self, tensor: &str, size: usize) -> Result<&'a [u8], ProtocolError> {
        if size > self.rest.len() {
            let hint = if self.has_header {
                ""
            } else {
                " (is the Inference-Header-Content-Length header missing?)"
            };
            return Err(ProtocolError::BinaryMismatch(format!(
                "tensor '{tensor}' has binary_data_size {size} but only {} bytes of binary data remain{hint}",
                self.rest.len()
            )));
        }
        let (chunk, rest) = self.rest.split_at(size);
        self.rest = rest;
        Ok(chunk)
    }

    pub fn finish(self) -> Result<(), ProtocolError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::BinaryMismatch(format!(
                "{} bytes of binary data after the JSON header belong to no tensor (binary_data_size too small or missing?)",
                self.rest.len()
            )))
        }
    }
}

/// Decodes one tensor from its JSON description and, if binary, its bytes.
pub fn decode_tensor(
    name: &str,
    shape: &[i64],
    datatype: &str,
    parameters: &Parameters,
    data: Option<&Value>,
    binary: &mut BinaryTail<'_>,
) -> Result<NamedTensor, ProtocolError> {
    let described = Described::check(name, shape, datatype)?;
    let binary_size = v2::size_parameter(parameters, BINARY_DATA_SIZE)?;
    match (binary_size, data) {
        (Some(_), Some(_)) => Err(ProtocolError::BadData {
            name: name.to_owned(),
            reason: "has both JSON data and binary_data_size; send one".to_owned(),
        }),
        (None, None) => Err(ProtocolError::BadData {
            name: name.to_owned(),
            reason: "has no data: give 'data' or parameters.binary_data_size".to_owned(),
        }),
        (None, Some(json)) => described.with_values(v2::flatten_json_data(name, json)?),
        (Some(size), None) => described.with_bytes(binary.take(name, size)?),
    }
}

/// Decodes one tensor whose elements are `bytes`: little-endian, row-major,
/// no padding (the binary extension's layout, and gRPC's raw contents).
pub fn decode_raw(
    name: &str,
    shape: &[i64],
    datatype: &str,
    bytes: &[u8],
) -> Result<NamedTensor, ProtocolError> {
    Described::check(name, shape, datatype)?.with_bytes(bytes)
}

/// Decodes one tensor whose elements were already read as numbers (gRPC's
/// typed contents); checks the shape, the datatype and the count.
pub fn decode_values(
    name: &str,
    shape: &[i64],
    datatype: &str,
    values: Vec<f32>,
) -> Result<NamedTensor, ProtocolError> {
    Described::check(name, shape, datatype)?.with_values(values)
}

/// A tensor's name, shape and datatype, checked, before its data.
struct Described<'a> {
    name: &'a str,
    dims: Vec<usize>,
    count: usize,
    datatype: Datatype,
}

impl<'a> Described<'a> {
    fn check(name: &'a str, shape: &[i64], datatype: &str) -> Result<Self, ProtocolError> {
        let dims = checked_shape(name, shape)?;
        let count = element_count(name, shape, &dims)?;
        let datatype = v2::numeric_datatype(name, datatype)?;
        Ok(Described {
            name,
            dims,
            count,
            datatype,
        })
    }

    fn with_bytes(self, bytes: &[u8]) -> Result<NamedTensor, ProtocolError> {
        // element_size is Some for every numeric type.
        let width = self.datatype.element_size().unwrap_or(4);
        let size = bytes.len();
        if self.count.checked_mul(width) != Some(size) {
            return Err(ProtocolError::BinaryMismatch(format!(
                "tensor '{}' has {size} bytes of data (binary_data_size or raw contents) but shape {:?} of {} takes {} bytes",
                self.name,
                self.dims,
                self.datatype,
                self.count.saturating_mul(width)
            )));
        }
        let values = bytes_to_f32(self.datatype, bytes);
        self.with_values(values)
    }

    fn with_values(self, values: Vec<f32>) -> Result<NamedTensor, ProtocolError> {
        if values.len() != self.count {
            return Err(ProtocolError::ElementCount {
                name: self.name.to_owned(),
                shape: self.dims,
                expected: self.count,
                got: values.len(),
            });
        }
        Ok(NamedTensor {
            name: self.name.to_owned(),
            shape: self.dims,
            data: values,
        })
    }
}

fn checked_shape(name: &str, shape: &[i64]) -> Result<Vec<usize>, ProtocolError> {
    shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ProtocolError::InvalidShape {
            name: name.to_owned(),
            shape: shape.to_vec(),
            reason: "dimensions must be non-negative".to_owned(),
        })
}

fn element_count(name: &str, shape: &[i64], dims: &[usize]) -> Result<usize, ProtocolError> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| ProtocolError::InvalidShape {
            name: name.to_owned(),
            shape: shape.to_vec(),
            reason: "too many elements".to_owned(),
        })
}

/// Converts little-endian tensor bytes to `f32`. `bytes.len()` is a multiple
/// of the element size (checked by the caller); a ragged end is ignored.
fn bytes_to_f32(dt: Datatype, bytes: &[u8]) -> Vec<f32> {
    fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32) -> Vec<f32> {
        bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            })
            .collect()
    }
    match dt {
        Datatype::Fp32 => each(bytes, f32::from_le_bytes),
        Datatype::Fp64 => each(bytes, |b| f64::from_le_bytes(b) as f32),
        Datatype::Fp16 => each(bytes, |b| f16_to_f32(u16::from_le_bytes(b))),
        Datatype::Bf16 => each(bytes, |b| {
            f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)
        }),
        Datatype::Int8 => each(bytes, |b: [u8; 1]| f32::from(b[0] as i8)),
        Datatype::Uint8 | Datatype::Bool => each(bytes, |b: [u8; 1]| f32::from(b[0])),
        Datatype::Int16 => each(bytes, |b| f32::from(i16::from_le_bytes(b))),
        Datatype::Uint16 => each(bytes, |b| f32::from(u16::from_le_bytes(b))),
        Datatype::Int32 => each(bytes, |b| i32::from_le_bytes(b) as f32),
        Datatype::Uint32 => each(bytes, |b| u32::from_le_bytes(b) as f32),
        Datatype::Int64 => each(bytes, |b| i64::from_le_bytes(b) as f32),
        Datatype::Uint64 => each(bytes, |b| u64::from_le_bytes(b) as f32),
        // Rejected before we get here (not numeric).
        Datatype::Bytes => Vec::new(),
    }
}

/// IEEE 754 half to single precision (exact: every half is a float).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    match exp {
        0 => {
            // Zero or subnormal: mant × 2^-24.
            let magnitude = mant as f32 * f32::from_bits(0x3380_0000);
            if sign != 0 { -magnitude } else { magnitude }
        }
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mant << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_precision_special_values() {
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
    }
}
