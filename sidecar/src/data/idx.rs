//! Reader for the IDX format of (Fashion-)MNIST, gzip'd as Debian ships it.
//!
//! An IDX file is a big-endian header (magic `0x0000TTDD`: type `TT`, `DD`
//! dimensions), the dimension sizes as u32, then the raw data.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use super::DataError;

/// The only element type the datasets use.
const TYPE_U8: u8 = 0x08;

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Reads a gzip'd (`.gz`) or plain IDX file.
pub fn read_idx(path: &Path) -> Result<IdxArray, DataError> {
    let file = std::fs::File::open(path).map_err(|source| DataError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    let gzipped = path.extension().is_some_and(|e| e == "gz");
    let read = if gzipped {
        GzDecoder::new(file).read_to_end(&mut bytes)
    } else {
        std::io::BufReader::new(file).read_to_end(&mut bytes)
    };
    read.map_err(|e| DataError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("cannot decompress: {e}"),
    })?;
    parse_idx(&bytes).map_err(|reason| DataError::Corrupt {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses the bytes of an (uncompressed) IDX file.
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray, String> {
    if bytes.len() < 4 {
        return Err(format!(
            "{} bytes is too short for an IDX header",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err("bad magic number (not an IDX file)".into());
    }
    if bytes[2] != TYPE_U8 {
        return Err(format!(
            "element type 0x{:02x} is not unsigned byte",
            bytes[2]
        ));
    }
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err("zero dimensions".into());
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(format!("truncated header: {ndims} dimensions announced"));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let len = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or("dimensions overflow")?;
    let body = &bytes[header..];
    if body.len() != len {
        return Err(format!(
            "dimensions {dims:?} need {len} bytes of data, found {}",
            body.len()
        ));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Serialises an IDX array of unsigned bytes (used to make fixtures).
pub fn encode_idx(array: &IdxArray) -> Vec<u8> {
    let mut out = vec![0, 0, TYPE_U8, array.dims.len() as u8];
    for &d in &array.dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(&array.data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let a = IdxArray {
            dims: vec![2, 3],
            data: vec![1, 2, 3, 4, 5, 6],
        };
        assert_eq!(parse_idx(&encode_idx(&a)).unwrap(), a);
    }

    #[test]
    fn rejects_bad_files() {
        assert!(parse_idx(&[0, 0]).unwrap_err().contains("too short"));
        assert!(parse_idx(&[1, 2, 8, 1]).unwrap_err().contains("magic"));
        assert!(
            parse_idx(&[0, 0, 0x0d, 1, 0, 0, 0, 1, 0])
                .unwrap_err()
                .contains("type")
        );
        assert!(
            parse_idx(&[0, 0, 8, 2, 0, 0, 0, 1])
                .unwrap_err()
                .contains("truncated")
        );
        let mut bytes = encode_idx(&IdxArray {
            dims: vec![4],
            data: vec![1, 2, 3, 4],
        });
        bytes.pop();
        assert!(parse_idx(&bytes).unwrap_err().contains("need 4 bytes"));
    }
}
