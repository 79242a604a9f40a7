//! The native request parsers: a JSON body and a multipart form (with a fixed boundary, so the
//! fuzzer can find it) must give an inspection request or a 4xx error, never a panic.

#![no_main]

use bytes::Bytes;
use kensa::api::inspections::{from_json, from_multipart};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = from_json(data);
    let form = from_multipart(
        "multipart/form-data; boundary=kensa",
        Bytes::copy_from_slice(data),
    );
    let _ = futures::executor::block_on(form);
});
