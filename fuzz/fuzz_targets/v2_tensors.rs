//! The Open Inference Protocol's body decoder (JSON header, `binary_data_size`, the length
//! header) and its tensor encodings (length-prefixed BYTES, JSON data, base64): any bytes must
//! give tensors or a 4xx error, never a panic.

#![no_main]

use bytes::Bytes;
use kensa::api::v2::http::decode_infer;
use kensa::api::v2::tensors::split_length_prefixed;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&[low, high], body)) = data.split_first_chunk::<2>().map(|(h, b)| (h, b)) else {
        return;
    };
    let declared = usize::from(u16::from_le_bytes([low, high]));
    // Odd: no Inference-Header-Content-Length; even: a header of declared / 2 bytes.
    let header_length = (declared % 2 == 0).then_some(declared / 2);
    if let Ok(decoded) = decode_infer(header_length, Bytes::copy_from_slice(body)) {
        for input in decoded.inputs {
            let base64 = input.name == "image";
            let _ = input.byte_elements(base64);
        }
    }
    let _ = split_length_prefixed("raw", Bytes::copy_from_slice(data));
});
