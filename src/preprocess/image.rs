//! Decoding a station's image and turning it into the vision graph's input.
//!
//! The steps mirror the training pipeline's preprocessing exactly (scale to [0, 1], colour
//! conversion, Pillow-style antialiased bilinear resize on float32, per-channel
//! normalisation), because a model only recognises defects in images prepared the way it was
//! trained on.

use std::cell::RefCell;
use std::io::Cursor;
use std::time::{Duration, Instant};

use ::image::{DynamicImage, ImageError, ImageFormat, ImageReader, Limits};
use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::F32;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};

use super::jpeg;
use crate::error::Error;
use crate::model::manifest::{ColorMode, ImageSpec, ResizeMode};

/// Bytes per pixel of the widest layout a decoder can produce (RGBA, 16 bits per sample).
const MAX_DECODED_BYTES_PER_PIXEL: u64 = 8;

/// Fixed allowance for codec tables and row buffers, on top of the per-pixel budget.
const DECODER_HEADROOM_BYTES: u64 = 16 << 20;

/// Luma weights (ITU-R BT.601), as the training pipeline applies them to float32 samples.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

thread_local! {
    /// fast_image_resize keeps its scratch buffers in the resizer; keeping one per blocking
    /// thread saves reallocating them for every request.
    static RESIZER: RefCell<Resizer> = RefCell::new(Resizer::new());
}

/// Bounds on what a client may send, so one request cannot exhaust the service's memory.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    /// Largest accepted encoded image, in bytes.
    pub max_bytes: usize,
    /// Largest accepted width times height, checked from the header before decoding.
    pub max_pixels: u64,
}

/// One image ready for the vision graph, plus the size it arrived in for the response.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    /// Normalised samples, channels-first (C*H*W), the layout of one row of `pixel_values`.
    pub pixels: Vec<f32>,
    /// Width of the image as decoded (a JPEG at reduced scale), before resizing.
    pub source_width: u32,
    /// Height of the image as decoded, before resizing.
    pub source_height: u32,
    /// Time spent decoding.
    pub decode_time: Duration,
    /// Time spent converting, resizing and normalising.
    pub resize_time: Duration,
}

/// Decodes an encoded image and prepares it as training did, refusing oversized input early.
///
/// Accepts PNG, JPEG, BMP and TIFF with 8- or 16-bit gray, gray+alpha, RGB or RGBA samples
/// (palettes are expanded to RGB, alpha is dropped). Float samples are refused: the training
/// pipeline does not define them.
pub fn prepare_image(
    bytes: &[u8],
    spec: &ImageSpec,
    limits: &ImageLimits,
) -> Result<PreparedImage, Error> {
    let started = Instant::now();
    let decoded = decode(bytes, limits, (spec.width, spec.height))?;
    let decoded_at = Instant::now();
    let pixels = to_model_input(&decoded, spec)?;
    Ok(PreparedImage {
        pixels,
        source_width: decoded.width(),
        source_height: decoded.height(),
        decode_time: decoded_at - started,
        resize_time: decoded_at.elapsed(),
    })
}

/// [`prepare_image`], and the frame at full resolution for reading the text printed on it
/// (OCR): the one decode serves both unless the model's decode was a JPEG at reduced scale.
pub fn prepare_image_and_frame(
    bytes: &[u8],
    spec: &ImageSpec,
    limits: &ImageLimits,
) -> Result<(PreparedImage, DynamicImage), Error> {
    let started = Instant::now();
    let decoded = decode(bytes, limits, (spec.width, spec.height))?;
    let decoded_at = Instant::now();
    let pixels = to_model_input(&decoded, spec)?;
    let prepared = PreparedImage {
        pixels,
        source_width: decoded.width(),
        source_height: decoded.height(),
        decode_time: decoded_at - started,
        resize_time: decoded_at.elapsed(),
    };
    let reduced = match accepted_format(bytes)? {
        ImageFormat::Jpeg => {
            let header = jpeg::read_header(bytes)?;
            (header.width, header.height) != (decoded.width(), decoded.height())
        }
        _ => false,
    };
    let frame = if reduced {
        decode(bytes, limits, (u32::MAX, u32::MAX))?
    } else {
        decoded
    };
    Ok((prepared, frame))
}

/// Checks sizes, reads the header, and only then decodes under allocation limits; a JPEG at
/// least twice the `target` size is decoded at reduced scale (see [`jpeg`]). Also used for the
/// heat map, which is drawn over the image as the station sent it.
pub fn decode(
    bytes: &[u8],
    limits: &ImageLimits,
    target: (u32, u32),
) -> Result<DynamicImage, Error> {
    if bytes.is_empty() {
        return Err(Error::BadImage("the image is empty (0 bytes)".into()));
    }
    if bytes.len() > limits.max_bytes {
        return Err(Error::PayloadTooLarge {
            what: "image",
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let format = accepted_format(bytes)?;
    check_complete(format, bytes)?;
    let jpeg_header = match format {
        ImageFormat::Jpeg => Some(jpeg::read_header(bytes)?),
        _ => None,
    };
    let (width, height) = match jpeg_header {
        Some(header) => (header.width, header.height),
        None => ImageReader::with_format(Cursor::new(bytes), format)
            .into_dimensions()
            .map_err(|e| decode_error(format, e))?,
    };
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(Error::ImageTooLarge {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(Error::BadImage(format!(
            "{format:?} header says {width}x{height}, which has no pixels"
        )));
    }
    if let Some(header) = jpeg_header.filter(|h| !h.cmyk) {
        return jpeg::decode_scaled(bytes, header, target);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(decoder_limits(width, height, limits.max_pixels));
    reader.decode().map_err(|e| decode_error(format, e))
}

/// Recognises the format from the leading bytes; the file name or content type is not trusted.
fn accepted_format(bytes: &[u8]) -> Result<ImageFormat, Error> {
    match ::image::guess_format(bytes) {
        Ok(
            format @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::Bmp | ImageFormat::Tiff),
        ) => Ok(format),
        Ok(other) => Err(Error::BadImage(format!(
            "{other:?} images are not accepted; send PNG, JPEG, BMP or TIFF"
        ))),
        Err(_) => Err(Error::BadImage(
            "the bytes are not a PNG, JPEG, BMP or TIFF file (unrecognised signature)".into(),
        )),
    }
}

/// Refuses a JPEG that does not end with its end-of-image marker (trailing NUL padding
/// allowed): JPEG decoders fill a truncated scan with grey and call it an image, which the
/// model would then judge. (The other formats' decoders fail on truncated data themselves.)
fn check_complete(format: ImageFormat, bytes: &[u8]) -> Result<(), Error> {
    const END_OF_IMAGE: [u8; 2] = [0xFF, 0xD9];
    if format != ImageFormat::Jpeg {
        return Ok(());
    }
    let end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    if bytes[..end].ends_with(&END_OF_IMAGE) {
        Ok(())
    } else {
        Err(Error::BadImage(
            "Jpeg file is truncated (it does not end with the end-of-image marker)".into(),
        ))
    }
}

/// Limits for the real decode: the header's own size, and memory in proportion to the pixel
/// limit, so a file whose body disagrees with its header cannot allocate without bound.
fn decoder_limits(width: u32, height: u32, max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    // The reader reserves the output, the TIFF decoder counts it again, and a single-strip
    // TIFF needs one full-size intermediate on top.
    let budget = max_pixels
        .saturating_mul(3 * MAX_DECODED_BYTES_PER_PIXEL)
        .saturating_add(DECODER_HEADROOM_BYTES);
    limits.max_alloc = Some(budget);
    limits
}

/// Turns a decoder failure into a message a line engineer can act on.
fn decode_error(format: ImageFormat, error: ImageError) -> Error {
    Error::BadImage(match error {
        ImageError::Limits(_) => {
            format!("{format:?} image needs more memory to decode than its size justifies")
        }
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("{format:?} file is truncated")
        }
        ImageError::Unsupported(e) => format!("unsupported {format:?} variant: {e}"),
        // Decoding and parameter errors already name the format.
        other => other.to_string(),
    })
}

/// Where one plane fed to the resizer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    /// One sample of each pixel.
    Channel(usize),
    /// The luma of the first three samples.
    Luma,
}

/// Scales, converts, resizes and normalises into one C*H*W buffer.
fn to_model_input(decoded: &DynamicImage, spec: &ImageSpec) -> Result<Vec<f32>, Error> {
    let has_color = decoded.color().has_color();
    // Each output channel's source plane; a gray image replicated to RGB is resized once.
    let planes: &[Plane] = match (spec.color, has_color) {
        (ColorMode::Gray, true) => &[Plane::Luma],
        (_, false) => &[Plane::Channel(0)],
        (ColorMode::Rgb, true) => &[Plane::Channel(0), Plane::Channel(1), Plane::Channel(2)],
    };
    let out_channels = match spec.color {
        ColorMode::Gray => 1,
        ColorMode::Rgb => 3,
    };
    if spec.mean.len() < out_channels || spec.std.len() < out_channels {
        return Err(Error::Internal(format!(
            "image spec has {} means and {} stds for {out_channels} channels",
            spec.mean.len(),
            spec.std.len()
        )));
    }
    let options = ResizeOptions::new().resize_alg(match spec.resize {
        ResizeMode::Bilinear => ResizeAlg::Convolution(FilterType::Bilinear),
    });

    let (src_width, src_height) = (decoded.width(), decoded.height());
    let area = spec.width as usize * spec.height as usize;
    let mut out = vec![0.0f32; out_channels * area];
    let mut source = Vec::with_capacity(src_width as usize * src_height as usize);
    let mut resized = TypedImage::<F32>::new(spec.width, spec.height);

    RESIZER.with_borrow_mut(|resizer| {
        for (index, &plane) in planes.iter().enumerate() {
            fill_plane(decoded, plane, &mut source)?;
            let view = TypedImageRef::new(src_width, src_height, &source)
                .map_err(|e| Error::Internal(format!("resize source: {e}")))?;
            resizer
                .resize_typed(&view, &mut resized, &options)
                .map_err(|e| Error::Internal(format!("resize: {e}")))?;
            // Output channels fed by this plane: itself, or all three for gray replicated to RGB.
            let targets = if planes.len() == out_channels {
                index..index + 1
            } else {
                0..out_channels
            };
            for channel in targets {
                let (mean, std) = (spec.mean[channel], spec.std[channel]);
                let dst = &mut out[channel * area..(channel + 1) * area];
                for (d, s) in dst.iter_mut().zip(resized.pixels()) {
                    *d = (s.0 - mean) / std;
                }
            }
        }
        Ok(out)
    })
}

/// Replaces `dst` with one plane of samples scaled to [0, 1] (8-bit / 255, 16-bit / 65535).
fn fill_plane(decoded: &DynamicImage, plane: Plane, dst: &mut Vec<F32>) -> Result<(), Error> {
    let from_u8 = |v: u8| f32::from(v) / 255.0;
    let from_u16 = |v: u16| f32::from(v) / 65535.0;
    match decoded {
        DynamicImage::ImageLuma8(b) => fill(b.as_raw(), 1, plane, dst, from_u8),
        DynamicImage::ImageLumaA8(b) => fill(b.as_raw(), 2, plane, dst, from_u8),
        DynamicImage::ImageRgb8(b) => fill(b.as_raw(), 3, plane, dst, from_u8),
        DynamicImage::ImageRgba8(b) => fill(b.as_raw(), 4, plane, dst, from_u8),
        DynamicImage::ImageLuma16(b) => fill(b.as_raw(), 1, plane, dst, from_u16),
        DynamicImage::ImageLumaA16(b) => fill(b.as_raw(), 2, plane, dst, from_u16),
        DynamicImage::ImageRgb16(b) => fill(b.as_raw(), 3, plane, dst, from_u16),
        DynamicImage::ImageRgba16(b) => fill(b.as_raw(), 4, plane, dst, from_u16),
        other => {
            return Err(Error::BadImage(format!(
                "unsupported pixel layout {:?}",
                other.color()
            )));
        }
    }
    Ok(())
}

/// The per-pixel loop, monomorphised per sample type so it stays tight.
fn fill<T: Copy>(
    samples: &[T],
    stride: usize,
    plane: Plane,
    dst: &mut Vec<F32>,
    scale: impl Fn(T) -> f32,
) {
    dst.clear();
    let pixels = samples.chunks_exact(stride);
    match plane {
        Plane::Channel(c) => dst.extend(pixels.map(|px| F32::new(scale(px[c])))),
        Plane::Luma => dst.extend(pixels.map(|px| {
            F32::new(LUMA[0] * scale(px[0]) + LUMA[1] * scale(px[1]) + LUMA[2] * scale(px[2]))
        })),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use ::image::{GrayAlphaImage, GrayImage, ImageBuffer, Luma, LumaA, Rgb, RgbImage, Rgba};
    use serde::Deserialize;

    use super::*;
    use crate::model::manifest::Manifest;

    const W: u32 = 8;
    const H: u32 = 6;

    fn spec(color: ColorMode, width: u32, height: u32) -> ImageSpec {
        let channels = if color == ColorMode::Gray { 1 } else { 3 };
        ImageSpec {
            height,
            width,
            channels,
            color,
            resize: ResizeMode::Bilinear,
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    fn limits() -> ImageLimits {
        ImageLimits {
            max_bytes: 1 << 20,
            max_pixels: 1 << 20,
        }
    }

    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut bytes = Vec::new();
        if format == ImageFormat::Jpeg {
            let encoder = ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 100);
            image.write_with_encoder(encoder).unwrap();
        } else {
            image
                .write_to(&mut Cursor::new(&mut bytes), format)
                .unwrap();
        }
        bytes
    }

    /// A distinct 8-bit value per pixel and channel.
    fn sample8(x: u32, y: u32, c: u32) -> u8 {
        ((x * 29 + y * 41 + c * 67) % 256) as u8
    }

    /// A distinct 16-bit value per pixel and channel, using the low byte too.
    fn sample16(x: u32, y: u32, c: u32) -> u16 {
        ((x * 7919 + y * 10007 + c * 21011) % 65536) as u16
    }

    fn gray8() -> DynamicImage {
        GrayImage::from_fn(W, H, |x, y| Luma([sample8(x, y, 0)])).into()
    }

    fn rgb8() -> DynamicImage {
        RgbImage::from_fn(W, H, |x, y| Rgb([0, 1, 2].map(|c| sample8(x, y, c)))).into()
    }

    /// All layouts with their samples scaled to [0, 1], pixel-major, alpha left out.
    fn layouts() -> Vec<(&'static str, DynamicImage, Vec<[f32; 3]>, bool)> {
        let s8 = |x, y, c| f32::from(sample8(x, y, c)) / 255.0;
        let s16 = |x, y, c| f32::from(sample16(x, y, c)) / 65535.0;
        let expected = |f: &dyn Fn(u32, u32, u32) -> f32, color: bool| {
            let mut v = Vec::new();
            for y in 0..H {
                for x in 0..W {
                    v.push(if color {
                        [f(x, y, 0), f(x, y, 1), f(x, y, 2)]
                    } else {
                        [f(x, y, 0); 3]
                    });
                }
            }
            v
        };
        vec![
            ("L8", gray8(), expected(&s8, false), false),
            (
                "La8",
                GrayAlphaImage::from_fn(W, H, |x, y| LumaA([sample8(x, y, 0), 77])).into(),
                expected(&s8, false),
                false,
            ),
            ("Rgb8", rgb8(), expected(&s8, true), true),
            (
                "Rgba8",
                ImageBuffer::from_fn(W, H, |x, y| {
                    Rgba([sample8(x, y, 0), sample8(x, y, 1), sample8(x, y, 2), 9])
                })
                .into(),
                expected(&s8, true),
                true,
            ),
            (
                "L16",
                ImageBuffer::from_fn(W, H, |x, y| Luma([sample16(x, y, 0)])).into(),
                expected(&s16, false),
                false,
            ),
            (
                "La16",
                ImageBuffer::from_fn(W, H, |x, y| LumaA([sample16(x, y, 0), 500])).into(),
                expected(&s16, false),
                false,
            ),
            (
                "Rgb16",
                ImageBuffer::from_fn(W, H, |x, y| Rgb([0, 1, 2].map(|c| sample16(x, y, c)))).into(),
                expected(&s16, true),
                true,
            ),
            (
                "Rgba16",
                ImageBuffer::from_fn(W, H, |x, y| {
                    Rgba([sample16(x, y, 0), sample16(x, y, 1), sample16(x, y, 2), 1])
                })
                .into(),
                expected(&s16, true),
                true,
            ),
        ]
    }

    /// Which layouts each format's encoder writes.
    fn encodable(format: ImageFormat, layout: &str) -> bool {
        match format {
            ImageFormat::Png => true,
            ImageFormat::Jpeg => matches!(layout, "L8" | "Rgb8"),
            ImageFormat::Bmp => matches!(layout, "L8" | "La8" | "Rgb8" | "Rgba8"),
            ImageFormat::Tiff => !matches!(layout, "La8" | "La16"),
            _ => false,
        }
    }

    /// At the source size the resize is an identity, so the output is the scaled samples.
    #[test]
    fn every_format_and_bit_depth_decodes_to_scaled_samples() {
        let mut checked = 0;
        for format in [
            ImageFormat::Png,
            ImageFormat::Jpeg,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
        ] {
            for (layout, image, expected, _) in layouts() {
                if !encodable(format, layout) {
                    continue;
                }
                let bytes = encode(&image, format);
                let out = prepare_image(&bytes, &spec(ColorMode::Rgb, W, H), &limits())
                    .unwrap_or_else(|e| panic!("{format:?} {layout}: {e}"));
                assert_eq!((out.source_width, out.source_height), (W, H));
                let area = (W * H) as usize;
                let mut total = 0.0;
                for (i, want) in expected.iter().enumerate() {
                    for (c, want) in want.iter().enumerate() {
                        let got = out.pixels[c * area + i];
                        let diff = (got - want).abs();
                        total += diff;
                        // JPEG is lossy: only its average error is checked below.
                        assert!(
                            format == ImageFormat::Jpeg || diff <= 1e-7,
                            "{format:?} {layout} pixel {i} channel {c}: {got} vs {want}"
                        );
                    }
                }
                let mean = total / (3 * area) as f32;
                assert!(mean <= 0.05, "{format:?} {layout}: mean abs error {mean}");
                checked += 1;
            }
        }
        assert_eq!(checked, 20);
    }

    #[test]
    fn color_images_become_luma_for_gray_models() {
        for (layout, image, expected, color) in layouts() {
            let bytes = encode(&image, ImageFormat::Png);
            let out = prepare_image(&bytes, &spec(ColorMode::Gray, W, H), &limits()).unwrap();
            assert_eq!(out.pixels.len(), (W * H) as usize, "{layout}");
            for (got, [r, g, b]) in out.pixels.iter().zip(&expected) {
                let want = if color {
                    0.299 * r + 0.587 * g + 0.114 * b
                } else {
                    *r
                };
                assert!((got - want).abs() <= 1e-7, "{layout}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn gray_images_are_replicated_for_rgb_models() {
        let bytes = encode(&gray8(), ImageFormat::Png);
        let mut spec = spec(ColorMode::Rgb, 5, 4);
        spec.mean = vec![0.1, 0.2, 0.3];
        spec.std = vec![0.5, 0.25, 2.0];
        let out = prepare_image(&bytes, &spec, &limits()).unwrap();
        let gray = prepare_image(&bytes, &self::spec(ColorMode::Gray, 5, 4), &limits()).unwrap();
        assert_eq!(out.pixels.len(), 3 * 20);
        for c in 0..3 {
            for (got, g) in out.pixels[c * 20..(c + 1) * 20].iter().zip(&gray.pixels) {
                assert_eq!(*got, (g - spec.mean[c]) / spec.std[c]);
            }
        }
    }

    #[test]
    fn output_is_channels_first_at_the_model_size() {
        let bytes = encode(&rgb8(), ImageFormat::Png);
        let out = prepare_image(&bytes, &spec(ColorMode::Rgb, 32, 24), &limits()).unwrap();
        assert_eq!(out.pixels.len(), 3 * 32 * 24);
        assert_eq!((out.source_width, out.source_height), (W, H));
        let out = prepare_image(&bytes, &spec(ColorMode::Gray, 3, 2), &limits()).unwrap();
        assert_eq!(out.pixels.len(), 3 * 2);
    }

    /// Pillow's BILINEAR downscale by 2 has support 2: output 0 is centred on input 1.0 and
    /// weighs inputs 0, 1, 2 by 0.75, 0.75, 0.25 (then divides by their sum).
    #[test]
    fn downscale_uses_pillow_antialiased_weights() {
        let row = GrayImage::from_raw(4, 1, vec![0, 255, 0, 255]).unwrap();
        let bytes = encode(&row.into(), ImageFormat::Png);
        let out = prepare_image(&bytes, &spec(ColorMode::Gray, 2, 1), &limits()).unwrap();
        assert!(
            (out.pixels[0] - 0.75 / 1.75).abs() < 1e-6,
            "{:?}",
            out.pixels
        );
        assert!(
            (out.pixels[1] - 1.0 / 1.75).abs() < 1e-6,
            "{:?}",
            out.pixels
        );
    }

    #[test]
    fn palette_png_is_expanded_to_rgb() {
        let palette = [255, 0, 0, 0, 255, 0, 0, 0, 255];
        let bytes = png(4, 1, 3, &[&palette], &[0, 1, 2, 1]);
        let out = prepare_image(&bytes, &spec(ColorMode::Rgb, 4, 1), &limits()).unwrap();
        assert_eq!(
            out.pixels,
            [
                [1.0, 0.0, 0.0, 0.0],
                [0.0, 1.0, 0.0, 1.0],
                [0.0, 0.0, 1.0, 0.0]
            ]
            .concat()
        );
    }

    #[test]
    fn corrupt_bytes_are_bad_images() {
        let valid = encode(&rgb8(), ImageFormat::Png);
        let truncated = &valid[..valid.len() / 2];
        let mut garbled = valid.clone();
        for b in &mut garbled[40..] {
            *b = b.wrapping_mul(31).wrapping_add(7);
        }
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".as_slice();
        let cases: [(&str, &[u8]); 5] = [
            ("text", b"definitely not an image"),
            ("signature only", b"\x89PNG\r\n\x1a\n"),
            ("truncated", truncated),
            ("garbled", &garbled),
            ("gif", gif),
        ];
        for (name, bytes) in cases {
            match prepare_image(bytes, &spec(ColorMode::Rgb, 4, 4), &limits()) {
                Err(Error::BadImage(message)) => assert!(!message.is_empty(), "{name}"),
                other => panic!("{name}: expected BadImage, got {other:?}"),
            }
        }
    }

    /// A large JPEG is decoded at reduced scale; one that stops early is refused, not decoded
    /// with a grey remainder.
    #[test]
    fn large_jpegs_decode_scaled_and_truncated_ones_are_bad_images() {
        let image: DynamicImage =
            GrayImage::from_fn(640, 480, |x, y| Luma([sample8(x, y, 0)])).into();
        let bytes = encode(&image, ImageFormat::Jpeg);
        let big = ImageLimits {
            max_bytes: 1 << 24,
            max_pixels: 1 << 24,
        };
        let out = prepare_image(&bytes, &spec(ColorMode::Gray, 112, 112), &big).unwrap();
        assert_eq!(
            (out.source_width, out.source_height),
            (160, 120),
            "1/4 scale"
        );
        for cut in [bytes.len() / 2, bytes.len() - 2] {
            let result = prepare_image(&bytes[..cut], &spec(ColorMode::Gray, 112, 112), &big);
            assert!(
                matches!(result, Err(Error::BadImage(_))),
                "cut at {cut}: {result:?}"
            );
        }
    }

    /// The training pipeline has no rule for float samples, so they are refused.
    #[test]
    fn float_samples_are_refused() {
        let image: DynamicImage = ::image::Rgb32FImage::new(4, 4).into();
        let bytes = encode(&image, ImageFormat::Tiff);
        let result = prepare_image(&bytes, &spec(ColorMode::Rgb, 4, 4), &limits());
        assert!(matches!(result, Err(Error::BadImage(_))), "{result:?}");
    }

    #[test]
    fn empty_bytes_are_a_bad_image() {
        let result = prepare_image(&[], &spec(ColorMode::Gray, 4, 4), &limits());
        assert!(matches!(result, Err(Error::BadImage(_))), "{result:?}");
    }

    #[test]
    fn oversized_bytes_are_refused_before_decoding() {
        let bytes = encode(&rgb8(), ImageFormat::Bmp);
        let small = ImageLimits {
            max_bytes: bytes.len() - 1,
            max_pixels: 1 << 20,
        };
        match prepare_image(&bytes, &spec(ColorMode::Rgb, 4, 4), &small) {
            Err(Error::PayloadTooLarge { what, size, limit }) => {
                assert_eq!((what, size, limit), ("image", bytes.len(), bytes.len() - 1));
            }
            other => panic!("expected PayloadTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn pixel_limit_is_inclusive() {
        let bytes = encode(&rgb8(), ImageFormat::Png);
        let exact = ImageLimits {
            max_bytes: 1 << 20,
            max_pixels: u64::from(W * H),
        };
        assert!(prepare_image(&bytes, &spec(ColorMode::Rgb, 4, 4), &exact).is_ok());
        let under = ImageLimits {
            max_pixels: u64::from(W * H) - 1,
            ..exact
        };
        let result = prepare_image(&bytes, &spec(ColorMode::Rgb, 4, 4), &under);
        assert!(
            matches!(result, Err(Error::ImageTooLarge { .. })),
            "{result:?}"
        );
    }

    /// The decode budget must not reject legitimate images at the pixel limit, even in the
    /// widest layout and a single-strip TIFF.
    #[test]
    fn widest_layout_at_the_pixel_limit_decodes() {
        let (w, h) = (300, 200);
        let image: DynamicImage =
            ImageBuffer::from_fn(w, h, |x, y| Rgba([0, 1, 2, 3].map(|c| sample16(x, y, c)))).into();
        let limits = ImageLimits {
            max_bytes: 1 << 24,
            max_pixels: u64::from(w * h),
        };
        for format in [ImageFormat::Png, ImageFormat::Tiff] {
            let bytes = encode(&image, format);
            let out = prepare_image(&bytes, &spec(ColorMode::Rgb, 16, 16), &limits);
            assert!(out.is_ok(), "{format:?}: {out:?}");
        }
    }

    #[test]
    fn decompression_bomb_is_refused_from_the_header() {
        let bytes = png(1, 1, 0, &[], &[0]);
        let bomb = with_png_size(&bytes, 100_000, 100_000);
        let start = Instant::now();
        let result = prepare_image(&bomb, &spec(ColorMode::Gray, 4, 4), &limits());
        assert!(start.elapsed() < Duration::from_secs(1));
        match result {
            Err(Error::ImageTooLarge {
                width,
                height,
                pixels,
                limit,
            }) => {
                assert_eq!((width, height), (100_000, 100_000));
                assert_eq!(pixels, 10_000_000_000);
                assert_eq!(limit, 1 << 20);
            }
            other => panic!("expected ImageTooLarge, got {other:?}"),
        }
    }

    #[test]
    fn bmp_bomb_is_refused_from_the_header() {
        let mut bomb = encode(&rgb8(), ImageFormat::Bmp);
        bomb[18..22].copy_from_slice(&60_000i32.to_le_bytes());
        bomb[22..26].copy_from_slice(&60_000i32.to_le_bytes());
        let result = prepare_image(&bomb, &spec(ColorMode::Gray, 4, 4), &limits());
        assert!(
            matches!(result, Err(Error::ImageTooLarge { width: 60_000, .. })),
            "{result:?}"
        );
    }

    /// A header that claims more pixels than the body holds, but within the limit, is corrupt.
    #[test]
    fn header_larger_than_the_body_is_a_bad_image() {
        let bytes = png(1, 1, 0, &[], &[0]);
        let liar = with_png_size(&bytes, 1000, 1000);
        let result = prepare_image(&liar, &spec(ColorMode::Gray, 4, 4), &limits());
        assert!(matches!(result, Err(Error::BadImage(_))), "{result:?}");
    }

    /// A minimal 8-bit PNG: IHDR, optional PLTE, one stored (uncompressed) IDAT, IEND.
    fn png(width: u32, height: u32, color_type: u8, plte: &[&[u8]], samples: &[u8]) -> Vec<u8> {
        let mut ihdr = Vec::new();
        ihdr.extend(width.to_be_bytes());
        ihdr.extend(height.to_be_bytes());
        ihdr.extend([8, color_type, 0, 0, 0]);
        let row = samples.len() / height as usize;
        let mut raw = Vec::new();
        for line in samples.chunks(row) {
            raw.push(0);
            raw.extend(line);
        }
        let mut zlib = vec![0x78, 0x01, 1];
        zlib.extend((raw.len() as u16).to_le_bytes());
        zlib.extend((!(raw.len() as u16)).to_le_bytes());
        zlib.extend(&raw);
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in &raw {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        zlib.extend(((b << 16) | a).to_be_bytes());

        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        out.extend(chunk(b"IHDR", &ihdr));
        for palette in plte {
            out.extend(chunk(b"PLTE", palette));
        }
        out.extend(chunk(b"IDAT", &zlib));
        out.extend(chunk(b"IEND", &[]));
        out
    }

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend(kind);
        out.extend(data);
        out.extend(crc32(&out[4..]).to_be_bytes());
        out
    }

    /// Rewrites the IHDR size (and its CRC) of a PNG whose first chunk is IHDR.
    fn with_png_size(png: &[u8], width: u32, height: u32) -> Vec<u8> {
        let mut out = png.to_vec();
        out[16..20].copy_from_slice(&width.to_be_bytes());
        out[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&out[12..29]);
        out[29..33].copy_from_slice(&crc.to_be_bytes());
        out
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[derive(Deserialize)]
    struct Fixture {
        file: String,
        shape: Vec<usize>,
        tensor: String,
    }

    /// How one fixture image compares with the Python reference tensor.
    struct Parity {
        file: String,
        jpeg: bool,
        max: f32,
        mean: f32,
    }

    fn parity(dir: &Path, spec: &ImageSpec) -> Vec<Parity> {
        let listing = std::fs::read_to_string(dir.join("expected.json"))
            .unwrap_or_else(|e| panic!("{}/expected.json: {e}", dir.display()));
        let fixtures: Vec<Fixture> = serde_json::from_str(&listing).unwrap();
        let limits = ImageLimits {
            max_bytes: 1 << 26,
            max_pixels: 1 << 26,
        };
        fixtures
            .iter()
            .map(|f| {
                let shape = [1, spec.channels, spec.height as usize, spec.width as usize];
                assert_eq!(f.shape, shape, "{}", f.file);
                let raw = std::fs::read(dir.join(&f.tensor)).unwrap();
                let expected: Vec<f32> = raw
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect();
                let bytes = std::fs::read(dir.join(&f.file)).unwrap();
                let got = prepare_image(&bytes, spec, &limits)
                    .unwrap_or_else(|e| panic!("{}: {e}", f.file));
                assert_eq!(got.pixels.len(), expected.len(), "{}", f.file);
                let diffs: Vec<f32> = got
                    .pixels
                    .iter()
                    .zip(&expected)
                    .map(|(a, b)| (a - b).abs())
                    .collect();
                Parity {
                    file: f.file.clone(),
                    jpeg: ::image::guess_format(&bytes).unwrap() == ImageFormat::Jpeg,
                    max: diffs.iter().copied().fold(0.0, f32::max),
                    mean: diffs.iter().sum::<f32>() / diffs.len() as f32,
                }
            })
            .collect()
    }

    /// Every fixture must match to 1e-3, JPEGs included: they are decoded by libjpeg-turbo,
    /// the library Pillow uses, at the same reduced scale (`Image.draft`), so they match exactly
    /// today. The fixtures cover the station frame sizes (640×640, 2448×2048, 4096×3072), whose
    /// JPEGs are decoded at 1/4 and 1/8.
    #[test]
    fn matches_the_python_pipeline_on_its_fixtures() {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo");
        let manifest = Manifest::load(&model).unwrap();
        let results = parity(&model.join("fixtures/preprocess"), &manifest.image);
        for frame in ["640x640", "2448x2048", "4096x3072"] {
            assert!(
                results.iter().any(|r| r.jpeg && r.file.contains(frame)),
                "no {frame} JPEG fixture"
            );
        }
        for r in &results {
            eprintln!(
                "parity {}: max abs diff {:e}, mean {:e}",
                r.file, r.max, r.mean
            );
            assert!(r.max <= 1e-3, "{}: max abs diff {} > 1e-3", r.file, r.max);
        }
    }
}
