//! A picture of where the model looked, so operators can judge a verdict at a glance.
//!
//! The model-input image (de-normalised, shown in gray) is overlaid with the attention map,
//! bilinearly upsampled from the patch grid, scaled so its peak is the hottest colour, and
//! coloured with an inferno-like perceptual map (dark purple = ignored, pale yellow = peak).
//! Small model inputs are enlarged by a whole factor, see [`output_size`].

use ::image::codecs::png::PngEncoder;
use ::image::{ExtendedColorType, ImageEncoder};

use crate::error::Error;
use crate::model::manifest::{ColorMode, Grid, ImageSpec};

/// Inputs whose shorter side is below this are enlarged, because a 224-pixel picture is too
/// small to inspect on an operator's screen.
pub const MIN_SHORT_SIDE: u32 = 256;

/// Enlargement stops here, so tiny inputs do not produce needlessly large PNGs.
pub const MAX_SCALE: u32 = 4;

/// Weight of the colour map over the gray image: enough to read the map, while the part
/// underneath stays visible everywhere.
const OVERLAY_ALPHA: f32 = 0.5;

/// Inferno-like control points from cold to hot, evenly spaced; dark-to-light in
/// lightness so the map reads correctly even in gray and for colour-blind operators.
const COLORMAP: [[f32; 3]; 9] = [
    [0.0, 0.0, 4.0],
    [31.0, 12.0, 72.0],
    [85.0, 15.0, 109.0],
    [136.0, 34.0, 106.0],
    [186.0, 54.0, 85.0],
    [227.0, 89.0, 51.0],
    [249.0, 140.0, 10.0],
    [249.0, 201.0, 50.0],
    [252.0, 255.0, 164.0],
];

/// Luma weights, the same as preprocessing uses for gray models.
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Size of the rendered PNG for a model input: `spec.width x spec.height` times the smallest
/// whole factor that brings the shorter side to [`MIN_SHORT_SIDE`], at most [`MAX_SCALE`].
/// The image is enlarged with nearest neighbour so operators see the pixels the model saw.
pub fn output_size(spec: &ImageSpec) -> (u32, u32) {
    let scale = scale(spec);
    (
        spec.width.saturating_mul(scale),
        spec.height.saturating_mul(scale),
    )
}

/// The whole enlargement factor behind [`output_size`].
fn scale(spec: &ImageSpec) -> u32 {
    let short = spec.width.min(spec.height).max(1);
    MIN_SHORT_SIDE.div_ceil(short).clamp(1, MAX_SCALE)
}

/// Renders one image's attention overlay as a PNG of [`output_size`].
///
/// `pixels` is the normalised C*H*W model input, `attention` the head's `grid` map for the same
/// image (row-major). Negative or non-finite attention counts as none; an all-zero map shows
/// the coldest colour everywhere.
pub fn render_png(
    pixels: &[f32],
    spec: &ImageSpec,
    attention: &[f32],
    grid: Grid,
) -> Result<Vec<u8>, Error> {
    let gray = model_input_gray(pixels, spec)?;
    let heat = normalised_attention(attention, grid)?;
    let scale = scale(spec) as usize;
    let (in_w, in_h) = (spec.width as usize, spec.height as usize);
    let (out_w, out_h) = (in_w * scale, in_h * scale);
    let palette = palette();
    let columns = interpolation_taps(grid.width, out_w);
    let rows = interpolation_taps(grid.height, out_h);

    let mut rgb = Vec::with_capacity(out_w * out_h * 3);
    for (y, row) in rows.iter().enumerate() {
        let gray_row = &gray[(y / scale) * in_w..(y / scale + 1) * in_w];
        let top = &heat[row.first * grid.width..(row.first + 1) * grid.width];
        let bottom = &heat[row.second * grid.width..(row.second + 1) * grid.width];
        for (x, column) in columns.iter().enumerate() {
            let value = column.blend(top) * (1.0 - row.weight) + column.blend(bottom) * row.weight;
            let colour = palette[(value * 255.0).round().clamp(0.0, 255.0) as usize];
            let base = gray_row[x / scale] * 255.0;
            rgb.extend(colour.iter().map(|&c| {
                (base + (c - base) * OVERLAY_ALPHA)
                    .round()
                    .clamp(0.0, 255.0) as u8
            }));
        }
    }

    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(&rgb, out_w as u32, out_h as u32, ExtendedColorType::Rgb8)
        .map_err(|e| Error::Internal(format!("heatmap PNG encoding failed: {e}")))?;
    Ok(png)
}

/// The model input back in [0, 1], one gray value per pixel.
fn model_input_gray(pixels: &[f32], spec: &ImageSpec) -> Result<Vec<f32>, Error> {
    let channels = match spec.color {
        ColorMode::Gray => 1,
        ColorMode::Rgb => 3,
    };
    let area = spec.width as usize * spec.height as usize;
    if pixels.len() != channels * area {
        return Err(Error::Internal(format!(
            "heatmap got {} pixel values for a {channels}x{}x{} input",
            pixels.len(),
            spec.height,
            spec.width
        )));
    }
    if spec.mean.len() < channels || spec.std.len() < channels {
        return Err(Error::Internal(
            "image spec lacks a mean or std per channel".into(),
        ));
    }
    let plane = |c: usize| {
        let (mean, std) = (spec.mean[c], spec.std[c]);
        pixels[c * area..(c + 1) * area]
            .iter()
            .map(move |&v| (v * std + mean).clamp(0.0, 1.0))
    };
    Ok(if channels == 1 {
        plane(0).collect()
    } else {
        plane(0)
            .zip(plane(1))
            .zip(plane(2))
            .map(|((r, g), b)| LUMA[0] * r + LUMA[1] * g + LUMA[2] * b)
            .collect()
    })
}

/// The attention grid scaled to [0, 1] by its peak.
fn normalised_attention(attention: &[f32], grid: Grid) -> Result<Vec<f32>, Error> {
    if grid.width == 0 || grid.height == 0 || attention.len() != grid.width * grid.height {
        return Err(Error::Internal(format!(
            "heatmap got {} attention values for a {}x{} grid",
            attention.len(),
            grid.height,
            grid.width
        )));
    }
    let clean = |v: f32| if v.is_finite() { v.max(0.0) } else { 0.0 };
    let peak = attention.iter().map(|&v| clean(v)).fold(0.0f32, f32::max);
    let inverse = if peak > 0.0 { 1.0 / peak } else { 0.0 };
    Ok(attention.iter().map(|&v| clean(v) * inverse).collect())
}

/// The colour map expanded to 256 entries, so each pixel is one lookup.
fn palette() -> Vec<[f32; 3]> {
    let segments = (COLORMAP.len() - 1) as f32;
    (0..256)
        .map(|i| {
            let position = i as f32 / 255.0 * segments;
            let low = (position.floor() as usize).min(COLORMAP.len() - 2);
            let t = position - low as f32;
            let (a, b) = (COLORMAP[low], COLORMAP[low + 1]);
            [0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * t)
        })
        .collect()
}

/// Two neighbouring grid cells and the weight of the second, for one output row or column.
#[derive(Debug, Clone, Copy)]
struct Taps {
    first: usize,
    second: usize,
    weight: f32,
}

impl Taps {
    fn blend(&self, cells: &[f32]) -> f32 {
        cells[self.first] * (1.0 - self.weight) + cells[self.second] * self.weight
    }
}

/// Bilinear taps with cell centres at half-pixel positions (`align_corners=False`), clamped
/// at the borders so the edge cells extend to the image edges.
fn interpolation_taps(cells: usize, out: usize) -> Vec<Taps> {
    let ratio = cells as f32 / out as f32;
    let last = cells.saturating_sub(1);
    (0..out)
        .map(|i| {
            let position = ((i as f32 + 0.5) * ratio - 0.5).clamp(0.0, last as f32);
            let first = (position.floor() as usize).min(last);
            Taps {
                first,
                second: (first + 1).min(last),
                weight: position - first as f32,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ::image::{GenericImageView, ImageFormat};

    use super::*;
    use crate::model::manifest::ResizeMode;

    fn spec(color: ColorMode, width: u32, height: u32) -> ImageSpec {
        let channels = if color == ColorMode::Gray { 1 } else { 3 };
        ImageSpec {
            height,
            width,
            channels,
            color,
            resize: ResizeMode::Bilinear,
            mean: vec![0.5; channels],
            std: vec![0.25; channels],
        }
    }

    /// Normalised model input of a uniform mid-gray image (0.5 maps to 0).
    fn mid_gray(spec: &ImageSpec) -> Vec<f32> {
        vec![0.0; spec.channels * (spec.width * spec.height) as usize]
    }

    /// What a palette colour looks like blended over mid-gray.
    fn over_mid_gray(colour: [f32; 3]) -> [u8; 3] {
        colour.map(|c| (127.5 + (c - 127.5) * OVERLAY_ALPHA).round() as u8)
    }

    fn close(a: [u8; 3], b: [u8; 3], tolerance: u8) -> bool {
        a.iter().zip(&b).all(|(x, y)| x.abs_diff(*y) <= tolerance)
    }

    #[test]
    fn small_inputs_are_enlarged_by_a_whole_factor() {
        assert_eq!(output_size(&spec(ColorMode::Gray, 112, 112)), (336, 336));
        assert_eq!(output_size(&spec(ColorMode::Gray, 224, 224)), (448, 448));
        assert_eq!(output_size(&spec(ColorMode::Gray, 384, 256)), (384, 256));
        assert_eq!(output_size(&spec(ColorMode::Gray, 32, 40)), (128, 160));
    }

    #[test]
    fn renders_a_png_of_the_documented_size() {
        for spec in [
            spec(ColorMode::Gray, 112, 112),
            spec(ColorMode::Rgb, 40, 30),
        ] {
            let grid = Grid {
                height: 7,
                width: 7,
            };
            let attention: Vec<f32> = (0..49).map(|i| i as f32 / 49.0).collect();
            let png = render_png(&mid_gray(&spec), &spec, &attention, grid).unwrap();
            assert_eq!(::image::guess_format(&png).unwrap(), ImageFormat::Png);
            let decoded = ::image::load_from_memory(&png).unwrap();
            assert_eq!(decoded.dimensions(), output_size(&spec));
        }
    }

    #[test]
    fn one_hot_attention_is_hottest_in_its_cell() {
        let spec = spec(ColorMode::Gray, 64, 48);
        let grid = Grid {
            height: 3,
            width: 4,
        };
        let mut attention = vec![0.0; 12];
        attention[2 * 4 + 1] = 0.3;
        let png = render_png(&mid_gray(&spec), &spec, &attention, grid).unwrap();
        let image = ::image::load_from_memory(&png).unwrap().to_rgb8();
        let (w, h) = image.dimensions();
        assert_eq!((w, h), (256, 192));

        let hottest = over_mid_gray(COLORMAP[COLORMAP.len() - 1]);
        let coldest = over_mid_gray(COLORMAP[0]);
        let distance = |p: [u8; 3]| {
            p.iter()
                .zip(&hottest)
                .map(|(a, b)| a.abs_diff(*b) as u32)
                .sum::<u32>()
        };
        let (x, y, _) = image
            .enumerate_pixels()
            .min_by_key(|(_, _, p)| distance(p.0))
            .unwrap();
        assert!(
            (w / 4..w / 2).contains(&x) && (2 * h / 3..h).contains(&y),
            "hottest at {x},{y}"
        );
        // The cell centre sits half a pixel off the grid point, hence a little below the peak.
        assert!(close(image.get_pixel(w * 3 / 8, h * 5 / 6).0, hottest, 6));
        assert!(close(image.get_pixel(0, 0).0, coldest, 1));
        assert!(close(image.get_pixel(w - 1, 0).0, coldest, 1));
    }

    #[test]
    fn flat_or_broken_attention_still_renders() {
        let spec = spec(ColorMode::Gray, 16, 16);
        let grid = Grid {
            height: 2,
            width: 2,
        };
        let coldest = over_mid_gray(COLORMAP[0]);
        for attention in [[0.0; 4], [f32::NAN, -1.0, f32::INFINITY, 0.0]] {
            let png = render_png(&mid_gray(&spec), &spec, &attention, grid).unwrap();
            let image = ::image::load_from_memory(&png).unwrap().to_rgb8();
            assert!(image.pixels().all(|p| close(p.0, coldest, 1)));
        }
    }

    #[test]
    fn mismatched_inputs_are_internal_errors() {
        let spec = spec(ColorMode::Rgb, 8, 8);
        let grid = Grid {
            height: 2,
            width: 2,
        };
        let short = vec![0.0; 8 * 8];
        let result = render_png(&short, &spec, &[0.0; 4], grid);
        assert!(matches!(result, Err(Error::Internal(_))), "{result:?}");
        let result = render_png(&mid_gray(&spec), &spec, &[0.0; 3], grid);
        assert!(matches!(result, Err(Error::Internal(_))), "{result:?}");
    }
}
