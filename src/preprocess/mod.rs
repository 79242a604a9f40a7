//! Turning a station's image and note into model inputs, exactly as training did.

pub mod image;
pub mod jpeg;
pub mod text;
