//! JPEG decoding at reduced scale, with libjpeg-turbo (the decoder Pillow uses in training).
//!
//! An AOI camera's frame has 5–12 megapixels; the model sees a few hundred pixels a side. A
//! JPEG stores 8×8 blocks of frequencies, so libjpeg can produce 1/2, 1/4 or 1/8 of the size
//! directly in the inverse DCT, skipping most of the decode and never holding the full frame.
//! The scale is chosen exactly as Pillow's `Image.draft(mode, (width, height))` chooses it (the
//! largest of 8, 4, 2 that keeps both sides at least the model's), and the training pipeline
//! calls `draft` the same way, so both prepare identical pixels: same library, same integer
//! inverse DCT, same upsampling.
//!
//! A JPEG that does not decode completely (truncated, corrupt data, any libjpeg warning) is a
//! bad image, never a partly grey one.

use std::cell::RefCell;

use ::image::{DynamicImage, GrayImage, RgbImage};
use turbojpeg::{Colorspace, Decompressor, Image, PixelFormat};

use crate::error::Error;

thread_local! {
    /// A TurboJPEG handle per blocking thread, so a request does not pay for its setup.
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// A JPEG's size and colour model, read from its header before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegHeader {
    /// Full width in pixels.
    pub width: u32,
    /// Full height in pixels.
    pub height: u32,
    /// True for a one-channel (gray) JPEG.
    pub gray: bool,
    /// True for CMYK and YCCK files, which libjpeg does not convert to RGB.
    pub cmyk: bool,
}

/// Reads the header.
pub fn read_header(bytes: &[u8]) -> Result<JpegHeader, Error> {
    with_decompressor(|decompressor| {
        let header = decompressor
            .read_header(bytes)
            .map_err(|e| Error::BadImage(format!("JPEG header: {e}")))?;
        Ok(JpegHeader {
            width: u32::try_from(header.width).unwrap_or(u32::MAX),
            height: u32::try_from(header.height).unwrap_or(u32::MAX),
            gray: header.colorspace == Colorspace::Gray,
            cmyk: matches!(header.colorspace, Colorspace::CMYK | Colorspace::YCCK),
        })
    })
}

/// The reduction Pillow's `draft` picks for a `width`×`height` source and a `target` size: the
/// largest of 8, 4, 2 (else 1) not above the smaller of the two whole-number ratios.
pub fn scale_denominator(width: u32, height: u32, (target_w, target_h): (u32, u32)) -> u32 {
    let ratio = (width / target_w.max(1)).min(height / target_h.max(1));
    [8, 4, 2].into_iter().find(|&s| ratio >= s).unwrap_or(1)
}

/// Decodes a gray or YCbCr/RGB JPEG at the scale [`scale_denominator`] picks for `target`.
pub fn decode_scaled(
    bytes: &[u8],
    header: JpegHeader,
    target: (u32, u32),
) -> Result<DynamicImage, Error> {
    let scale = scale_denominator(header.width, header.height, target);
    let width = header.width.div_ceil(scale);
    let height = header.height.div_ceil(scale);
    let (format, channels) = if header.gray {
        (PixelFormat::GRAY, 1)
    } else {
        (PixelFormat::RGB, 3)
    };
    let (w, h) = (width as usize, height as usize);
    let mut pixels = vec![0u8; w * h * channels];
    with_decompressor(|decompressor| {
        let output = Image {
            pixels: pixels.as_mut_slice(),
            width: w,
            pitch: w * channels,
            height: h,
            format,
        };
        decompressor
            .decompress(bytes, output)
            .map_err(|e| Error::BadImage(format!("JPEG does not decode completely: {e}")))
    })?;
    let image = if header.gray {
        GrayImage::from_raw(width, height, pixels).map(DynamicImage::from)
    } else {
        RgbImage::from_raw(width, height, pixels).map(DynamicImage::from)
    };
    image.ok_or_else(|| Error::Internal("JPEG buffer does not match its size".into()))
}

fn with_decompressor<T>(
    job: impl FnOnce(&mut Decompressor) -> Result<T, Error>,
) -> Result<T, Error> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            let decompressor = Decompressor::new()
                .map_err(|e| Error::Internal(format!("cannot start libjpeg-turbo: {e}")))?;
            *slot = Some(decompressor);
        }
        match slot.as_mut() {
            Some(decompressor) => job(decompressor),
            None => Err(Error::Internal("no JPEG decompressor".into())),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_is_pillows_draft_rule() {
        assert_eq!(scale_denominator(640, 640, (112, 112)), 4);
        assert_eq!(scale_denominator(4096, 3072, (112, 112)), 8);
        assert_eq!(scale_denominator(2448, 2048, (224, 224)), 8);
        assert_eq!(scale_denominator(640, 640, (224, 224)), 2);
        assert_eq!(
            scale_denominator(447, 640, (224, 224)),
            1,
            "one side under twice"
        );
        assert_eq!(
            scale_denominator(97, 150, (112, 112)),
            1,
            "smaller than the model"
        );
    }
}
