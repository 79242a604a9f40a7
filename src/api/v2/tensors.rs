//! The Open Inference Protocol's tensors as kensa needs them, and their encodings: JSON `data`
//! arrays, raw little-endian buffers (Triton's binary tensor extension over HTTP,
//! `raw_*_contents` over gRPC) in which each BYTES element is prefixed by its length as a 4-byte
//! little-endian integer, and gRPC's typed `bytes_contents`.

use base64::Engine as _;
use bytes::{Buf, Bytes};

use crate::error::Error;

/// Datatype name of variable-length byte strings.
pub const BYTES: &str = "BYTES";
/// Datatype name of 32-bit floats.
pub const FP32: &str = "FP32";

/// An input tensor's elements as the wire format delivered them; decoded only once its name,
/// datatype and shape are known to be right.
#[derive(Debug)]
pub enum TensorData {
    /// One raw buffer (binary extension or `raw_input_contents`).
    Raw(Bytes),
    /// The JSON `data` field, flat or nested.
    Json(serde_json::Value),
    /// gRPC `contents.bytes_contents`.
    Elements(Vec<Bytes>),
    /// No data at all.
    Missing,
}

/// One input tensor of an inference request.
#[derive(Debug)]
pub struct InputTensor {
    /// The tensor's name.
    pub name: String,
    /// The declared datatype (`BYTES`, `FP32`, ...).
    pub datatype: String,
    /// The declared shape.
    pub shape: Vec<i64>,
    /// The elements, still encoded.
    pub data: TensorData,
}

impl InputTensor {
    /// The BYTES elements. JSON strings cannot carry arbitrary bytes, so with `base64_in_json`
    /// JSON elements are base64 text (the image); otherwise their UTF-8 bytes are the element.
    pub fn byte_elements(self, base64_in_json: bool) -> Result<Vec<Bytes>, Error> {
        let name = self.name;
        match self.data {
            TensorData::Raw(raw) => split_length_prefixed(&name, raw),
            TensorData::Elements(elements) => Ok(elements),
            TensorData::Json(value) => {
                let mut strings = Vec::new();
                flatten_strings(&name, value, &mut strings)?;
                strings
                    .into_iter()
                    .map(|s| {
                        if base64_in_json {
                            base64::engine::general_purpose::STANDARD
                                .decode(s.trim())
                                .map(Bytes::from)
                                .map_err(|e| {
                                    Error::BadRequest(format!(
                                        "input {name}: JSON elements must be base64 ({e})"
                                    ))
                                })
                        } else {
                            Ok(Bytes::from(s))
                        }
                    })
                    .collect()
            }
            TensorData::Missing => Err(Error::BadRequest(format!("input {name} has no data"))),
        }
    }
}

fn flatten_strings(
    name: &str,
    value: serde_json::Value,
    out: &mut Vec<String>,
) -> Result<(), Error> {
    match value {
        serde_json::Value::String(s) => {
            out.push(s);
            Ok(())
        }
        serde_json::Value::Array(items) => items
            .into_iter()
            .try_for_each(|item| flatten_strings(name, item, out)),
        other => Err(Error::BadRequest(format!(
            "input {name} is BYTES, so its JSON data must be strings, not {other}"
        ))),
    }
}

/// Splits a raw BYTES buffer into its length-prefixed elements, refusing a prefix that runs
/// past the end of the buffer.
pub fn split_length_prefixed(name: &str, mut raw: Bytes) -> Result<Vec<Bytes>, Error> {
    let mut elements = Vec::new();
    while raw.has_remaining() {
        if raw.remaining() < 4 {
            return Err(Error::BadRequest(format!(
                "input {name}: element {} has a truncated length prefix ({} of 4 bytes)",
                elements.len(),
                raw.remaining()
            )));
        }
        let length = raw.get_u32_le() as usize;
        if length > raw.remaining() {
            return Err(Error::BadRequest(format!(
                "input {name}: element {} declares {length} bytes but only {} remain",
                elements.len(),
                raw.remaining()
            )));
        }
        elements.push(raw.split_to(length));
    }
    Ok(elements)
}

/// The elements of an output tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    /// BYTES elements.
    Bytes(Vec<Vec<u8>>),
    /// FP32 elements, row-major.
    Fp32(Vec<f32>),
}

/// One output tensor of an inference response.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// The tensor's name.
    pub name: &'static str,
    /// Its shape, batch dimension first.
    pub shape: Vec<i64>,
    /// Its elements.
    pub data: OutputData,
}

impl OutputTensor {
    /// The datatype name.
    pub fn datatype(&self) -> &'static str {
        match self.data {
            OutputData::Bytes(_) => BYTES,
            OutputData::Fp32(_) => FP32,
        }
    }

    /// The raw little-endian encoding (length-prefixed for BYTES).
    pub fn raw(&self) -> Vec<u8> {
        match &self.data {
            OutputData::Bytes(elements) => {
                let mut raw = Vec::with_capacity(elements.iter().map(|e| e.len() + 4).sum());
                for element in elements {
                    let length = u32::try_from(element.len()).unwrap_or(u32::MAX);
                    raw.extend_from_slice(&length.to_le_bytes());
                    raw.extend_from_slice(element);
                }
                raw
            }
            OutputData::Fp32(values) => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The JSON `data` array, flattened; BYTES elements are strings (kensa's outputs are UTF-8).
    pub fn json_data(&self) -> serde_json::Value {
        match &self.data {
            OutputData::Bytes(elements) => elements
                .iter()
                .map(|e| serde_json::Value::String(String::from_utf8_lossy(e).into_owned()))
                .collect(),
            OutputData::Fp32(values) => values.iter().map(|v| serde_json::json!(v)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_prefixed_elements_round_trip() {
        let tensor = OutputTensor {
            name: "label",
            shape: vec![3],
            data: OutputData::Bytes(vec![b"void".to_vec(), Vec::new(), vec![0, 255, 7]]),
        };
        let elements = split_length_prefixed("label", Bytes::from(tensor.raw())).unwrap();
        assert_eq!(elements, vec![&b"void"[..], &b""[..], &[0, 255, 7][..]]);
    }

    #[test]
    fn a_prefix_past_the_end_is_refused() {
        let mut raw = 100u32.to_le_bytes().to_vec();
        raw.extend_from_slice(b"short");
        let error = split_length_prefixed("image", Bytes::from(raw)).unwrap_err();
        assert!(error.to_string().contains("declares 100 bytes"), "{error}");
        let error = split_length_prefixed("image", Bytes::from_static(&[1, 0])).unwrap_err();
        assert!(error.to_string().contains("truncated"), "{error}");
    }

    #[test]
    fn json_bytes_are_text_or_base64() {
        let tensor = |data| InputTensor {
            name: "x".into(),
            datatype: BYTES.into(),
            shape: vec![2],
            data: TensorData::Json(data),
        };
        let text = tensor(serde_json::json!([["a"], ["b"]])).byte_elements(false);
        assert_eq!(text.unwrap(), vec![&b"a"[..], &b"b"[..]]);
        let decoded = tensor(serde_json::json!(["aGk=", "AA=="])).byte_elements(true);
        assert_eq!(decoded.unwrap(), vec![&b"hi"[..], &[0u8][..]]);
        assert!(
            tensor(serde_json::json!([1, 2]))
                .byte_elements(false)
                .is_err()
        );
    }

    #[test]
    fn floats_are_little_endian() {
        let tensor = OutputTensor {
            name: "confidence",
            shape: vec![1],
            data: OutputData::Fp32(vec![1.0]),
        };
        assert_eq!(tensor.raw(), 1.0f32.to_le_bytes().to_vec());
        assert_eq!(tensor.json_data(), serde_json::json!([1.0]));
    }
}
