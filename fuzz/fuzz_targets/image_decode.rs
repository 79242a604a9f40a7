//! Image decode and preprocessing with the demo model's image spec: any bytes must give a
//! prepared image or an error, never a panic, a hang or an allocation past the limits.

#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use kensa::model::manifest::{ImageSpec, Manifest};
use kensa::preprocess::image::{ImageLimits, prepare_image};

static SPEC: LazyLock<ImageSpec> = LazyLock::new(|| {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/demo");
    Manifest::load(&demo).expect("the demo manifest").image
});

const LIMITS: ImageLimits = ImageLimits {
    max_bytes: 4 << 20,
    max_pixels: 4_000_000,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = prepare_image(data, &SPEC, &LIMITS);
});
