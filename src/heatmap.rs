//! A picture of where the model looked, so an operator can judge a verdict at a glance.
//!
//! The attention map is drawn over the image **as the station sent it**, at its own
//! resolution (within [`MAX_SIDE`]; small images are enlarged by a whole factor), since the
//! model stretches the whole frame to its input and the grid covers the whole frame. One fixed
//! colour scale serves every verdict, so a diffuse map looks cool and a focused one hot: each
//! cell's weight is compared with an even spread (1 / cells), on a log scale from 1× (no colour)
//! to [`SCALE_MAX`]× (the hottest colour, fully drawn). A band on top says the disposition, the
//! label and the confidence in words as well as colour; a legend at the bottom shows the scale.

use ::image::codecs::png::PngEncoder;
use ::image::imageops::FilterType;
use ::image::{ExtendedColorType, ImageEncoder, RgbImage};
use font8x8::UnicodeFonts as _;

use crate::decision::Disposition;
use crate::error::Error;
use crate::model::manifest::Grid;
use crate::preprocess::image::{ImageLimits, decode};

/// Images whose shorter side is below this are enlarged, so the map is readable on a screen.
pub const MIN_SHORT_SIDE: u32 = 384;
/// Enlargement stops here, so tiny inputs do not produce needlessly large PNGs.
pub const MAX_SCALE: u32 = 4;
/// Larger images are drawn shrunk to this longest side (a 12-megapixel frame would make a
/// PNG that no review screen needs and that takes a second to encode).
pub const MAX_SIDE: u32 = 1600;
/// A cell holding this many times its even share of attention gets the hottest colour.
pub const SCALE_MAX: f32 = 8.0;
/// Opacity of the hottest colour; cooler colours are drawn more transparently, so the part
/// stays visible wherever the model did not look.
const MAX_ALPHA: f32 = 0.7;

/// Inferno-like control points from cold to hot, evenly spaced; dark-to-light in lightness so
/// the map reads correctly in gray and for colour-blind operators.
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

/// Ticks of the legend, in multiples of the even share.
const LEGEND_TICKS: [f32; 4] = [1.0, 2.0, 4.0, 8.0];

/// What the picture says in words.
#[derive(Debug, Clone)]
pub struct Caption {
    /// The predicted label as operators know it.
    pub label: String,
    /// Its probability.
    pub confidence: f32,
    /// Pass, fail or review, when the model has a decision rule.
    pub disposition: Option<Disposition>,
}

/// Renders the heat map PNG of one verdict over its encoded `image`.
///
/// `attention` is the head's `grid` map (row-major); negative or non-finite weights count as
/// none. Blocking: decodes the image and encodes a PNG.
pub fn render_png(
    image: &[u8],
    limits: &ImageLimits,
    attention: &[f32],
    grid: Grid,
    caption: &Caption,
) -> Result<Vec<u8>, Error> {
    let heat = heat_levels(attention, grid)?;
    let base = display_image(image, limits)?;
    let (width, height) = base.dimensions();
    let scale = text_scale(width);
    let (top, bottom) = (caption_height(scale), legend_height(scale));
    let mut canvas = RgbImage::new(width, top + height + bottom);
    ::image::imageops::replace(&mut canvas, &base, 0, i64::from(top));
    overlay(&mut canvas, top, height, &heat, grid);
    draw_caption(&mut canvas, top, scale, caption);
    draw_legend(&mut canvas, top + height, bottom, scale);

    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(
            canvas.as_raw(),
            canvas.width(),
            canvas.height(),
            ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::Internal(format!("heat map PNG encoding failed: {e}")))?;
    Ok(png)
}

/// The size the image is drawn at: its own, shrunk to [`MAX_SIDE`] or enlarged by a whole
/// factor (at most [`MAX_SCALE`]) to reach [`MIN_SHORT_SIDE`].
pub fn display_size(width: u32, height: u32) -> (u32, u32) {
    let (long, short) = (width.max(height).max(1), width.min(height).max(1));
    if long > MAX_SIDE {
        let shrink = f64::from(MAX_SIDE) / f64::from(long);
        let side = |v: u32| ((f64::from(v) * shrink).round() as u32).max(1);
        return (side(width), side(height));
    }
    let factor = MIN_SHORT_SIDE
        .div_ceil(short)
        .clamp(1, MAX_SCALE)
        .min((MAX_SIDE / long).max(1));
    (width * factor, height * factor)
}

/// The station's image in RGB at [`display_size`].
fn display_image(image: &[u8], limits: &ImageLimits) -> Result<RgbImage, Error> {
    let decoded = decode(image, limits, (MAX_SIDE, MAX_SIDE))?;
    let (width, height) = display_size(decoded.width(), decoded.height());
    let rgb = decoded.to_rgb8();
    if (width, height) == rgb.dimensions() {
        return Ok(rgb);
    }
    let filter = if width > rgb.width() {
        FilterType::Nearest
    } else {
        FilterType::Triangle
    };
    Ok(::image::imageops::resize(&rgb, width, height, filter))
}

/// Each cell's heat in [0, 1]: its weight over the even share, on a log scale from 1× (0) to
/// [`SCALE_MAX`]× (1). The weights are renormalised first, so any positive scale works.
fn heat_levels(attention: &[f32], grid: Grid) -> Result<Vec<f32>, Error> {
    let cells = grid.width * grid.height;
    if cells == 0 || attention.len() != cells {
        return Err(Error::Internal(format!(
            "heat map got {} attention values for a {}x{} grid",
            attention.len(),
            grid.height,
            grid.width
        )));
    }
    let clean = |v: f32| if v.is_finite() { v.max(0.0) } else { 0.0 };
    let total: f32 = attention.iter().map(|&v| clean(v)).sum();
    if total <= 0.0 {
        return Ok(vec![0.0; cells]);
    }
    let even = total / cells as f32;
    Ok(attention.iter().map(|&v| level(clean(v) / even)).collect())
}

/// A multiple of the even share on the colour scale.
fn level(ratio: f32) -> f32 {
    if ratio <= 1.0 {
        0.0
    } else {
        (ratio.ln() / SCALE_MAX.ln()).min(1.0)
    }
}

/// Blends the bilinearly upsampled heat over the image rows `top..top + height`.
fn overlay(canvas: &mut RgbImage, top: u32, height: u32, heat: &[f32], grid: Grid) {
    let width = canvas.width();
    let columns = interpolation_taps(grid.width, width as usize);
    let rows = interpolation_taps(grid.height, height as usize);
    for (y, row) in rows.iter().enumerate() {
        let upper = &heat[row.first * grid.width..(row.first + 1) * grid.width];
        let lower = &heat[row.second * grid.width..(row.second + 1) * grid.width];
        for (x, column) in columns.iter().enumerate() {
            let t = column.blend(upper) * (1.0 - row.weight) + column.blend(lower) * row.weight;
            if t <= 0.0 {
                continue;
            }
            let colour = colour_at(t);
            let alpha = MAX_ALPHA * t;
            let pixel = canvas.get_pixel_mut(x as u32, top + y as u32);
            for (channel, c) in pixel.0.iter_mut().zip(colour) {
                *channel = (f32::from(*channel) * (1.0 - alpha) + c * alpha)
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// The colour map at `t` in [0, 1].
fn colour_at(t: f32) -> [f32; 3] {
    let segments = (COLORMAP.len() - 1) as f32;
    let position = t.clamp(0.0, 1.0) * segments;
    let low = (position.floor() as usize).min(COLORMAP.len() - 2);
    let f = position - low as f32;
    let (a, b) = (COLORMAP[low], COLORMAP[low + 1]);
    [0, 1, 2].map(|c| a[c] + (b[c] - a[c]) * f)
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

/// Pixels per font pixel: the 8-pixel font grows with the picture, so text stays readable.
fn text_scale(width: u32) -> u32 {
    (width / 192).clamp(1, 4)
}

/// The caption band: one line of text with a margin above and below.
fn caption_height(scale: u32) -> u32 {
    12 * scale
}

/// The legend band: the colour bar, its tick labels and a line saying what they measure.
fn legend_height(scale: u32) -> u32 {
    24 * scale
}

/// Band colour and word of a disposition (words too: colour alone fails colour-blind
/// operators and gray printouts).
fn status(disposition: Option<Disposition>) -> ([u8; 3], &'static str) {
    match disposition {
        Some(Disposition::Pass) => ([27, 94, 32], "PASS"),
        Some(Disposition::Fail) => ([183, 28, 28], "FAIL"),
        Some(Disposition::Review) => ([230, 140, 0], "REVIEW"),
        None => ([48, 48, 48], ""),
    }
}

fn draw_caption(canvas: &mut RgbImage, band: u32, scale: u32, caption: &Caption) {
    let (background, word) = status(caption.disposition);
    fill(canvas, 0, 0, canvas.width(), band, background);
    let mut text = String::new();
    if !word.is_empty() {
        text.push_str(word);
        text.push(' ');
    }
    text.push_str(&format!(
        "{} {:.1}%",
        caption.label,
        caption.confidence * 100.0
    ));
    let fitted = fitting_scale(canvas.width(), scale, &text);
    let top = band.saturating_sub(8 * fitted) / 2;
    draw_text(canvas, 4 * scale, top, fitted, &text, [255, 255, 255]);
}

/// The text scale at which `text` fits across `width` between margins of `4 * scale`: a long
/// label on a narrow image is drawn smaller rather than cut off (at least scale 1).
fn fitting_scale(width: u32, scale: u32, text: &str) -> u32 {
    let room = width.saturating_sub(8 * scale);
    let chars = u32::try_from(text.chars().count())
        .unwrap_or(u32::MAX)
        .max(1);
    scale.min(room / (8 * chars)).max(1)
}

/// The colour bar with its ticks (1x 2x 4x 8x+) and what they measure.
fn draw_legend(canvas: &mut RgbImage, top: u32, height: u32, scale: u32) {
    let width = canvas.width();
    fill(canvas, 0, top, width, height, [24, 24, 24]);
    let margin = 4 * scale;
    let bar_width = width.saturating_sub(2 * margin).max(1);
    let bar_top = top + 2 * scale;
    let bar_height = 4 * scale;
    for x in 0..bar_width {
        let ratio = SCALE_MAX.powf(x as f32 / bar_width as f32);
        let colour = colour_at(level(ratio)).map(|c| c.round() as u8);
        fill(canvas, margin + x, bar_top, 1, bar_height, colour);
    }
    let tick_top = bar_top + bar_height + scale;
    for tick in LEGEND_TICKS {
        let x = margin + (level(tick) * (bar_width - 1) as f32) as u32;
        let text = if tick >= SCALE_MAX {
            format!("{tick}x+")
        } else {
            format!("{tick}x")
        };
        let text_width = 8 * scale * text.chars().count() as u32;
        let left = x
            .saturating_sub(text_width / 2)
            .min(width.saturating_sub(text_width));
        draw_text(canvas, left, tick_top, scale, &text, [230, 230, 230]);
    }
    draw_text(
        canvas,
        margin,
        tick_top + 9 * scale,
        scale,
        "attention: x even share",
        [170, 170, 170],
    );
}

fn fill(canvas: &mut RgbImage, left: u32, top: u32, width: u32, height: u32, colour: [u8; 3]) {
    let right = (left + width).min(canvas.width());
    let bottom = (top + height).min(canvas.height());
    for y in top..bottom {
        for x in left..right {
            canvas.put_pixel(x, y, ::image::Rgb(colour));
        }
    }
}

/// Draws `text` in the 8x8 bitmap font at `scale`; characters the font lacks show as `?`,
/// and text that would run off the picture is cut.
fn draw_text(canvas: &mut RgbImage, left: u32, top: u32, scale: u32, text: &str, colour: [u8; 3]) {
    let advance = 8 * scale;
    for (i, character) in text.chars().enumerate() {
        let x0 = left + i as u32 * advance;
        if x0 + advance > canvas.width() {
            return;
        }
        let glyph = glyph(character);
        for (row, bits) in glyph.iter().enumerate() {
            for column in 0..8 {
                if bits & (1 << column) != 0 {
                    let x = x0 + column * scale;
                    let y = top + row as u32 * scale;
                    fill(canvas, x, y, scale, scale, colour);
                }
            }
        }
    }
}

fn glyph(character: char) -> [u8; 8] {
    font8x8::BASIC_FONTS
        .get(character)
        .or_else(|| font8x8::LATIN_FONTS.get(character))
        .or_else(|| font8x8::GREEK_FONTS.get(character))
        .or_else(|| font8x8::HIRAGANA_FONTS.get(character))
        .or_else(|| font8x8::BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

#[cfg(test)]
mod tests {
    use ::image::codecs::png::PngEncoder;
    use ::image::{GrayImage, ImageFormat};

    use super::*;

    const LIMITS: ImageLimits = ImageLimits {
        max_bytes: 1 << 24,
        max_pixels: 1 << 26,
    };

    fn gray_png(width: u32, height: u32, value: u8) -> Vec<u8> {
        let image = GrayImage::from_pixel(width, height, ::image::Luma([value]));
        let mut png = Vec::new();
        PngEncoder::new(&mut png)
            .write_image(image.as_raw(), width, height, ExtendedColorType::L8)
            .unwrap();
        png
    }

    fn caption(disposition: Option<Disposition>) -> Caption {
        Caption {
            label: "Void in via".into(),
            confidence: 0.93,
            disposition,
        }
    }

    fn render(image: &[u8], attention: &[f32], grid: Grid) -> RgbImage {
        let png = render_png(image, &LIMITS, attention, grid, &caption(None)).unwrap();
        assert_eq!(::image::guess_format(&png).unwrap(), ImageFormat::Png);
        ::image::load_from_memory(&png).unwrap().to_rgb8()
    }

    #[test]
    fn the_image_keeps_its_own_resolution_within_bounds() {
        assert_eq!(display_size(640, 480), (640, 480));
        assert_eq!(display_size(112, 112), (448, 448));
        assert_eq!(display_size(128, 128), (384, 384));
        assert_eq!(display_size(32, 40), (128, 160));
        assert_eq!(display_size(4096, 3072), (1600, 1200));
        assert_eq!(
            display_size(100, 1500),
            (100, 1500),
            "no enlargement past MAX_SIDE"
        );
    }

    #[test]
    fn the_picture_is_the_image_between_a_caption_and_a_legend() {
        let grid = Grid {
            height: 7,
            width: 7,
        };
        let picture = render(&gray_png(640, 480, 128), &[1.0 / 49.0; 49], grid);
        let scale = text_scale(640);
        let band = caption_height(scale);
        assert_eq!(
            picture.dimensions(),
            (640, band + 480 + legend_height(scale))
        );
        let middle = picture.get_pixel(320, band + 240).0;
        assert_eq!(middle, [128, 128, 128], "an even spread draws no colour");
    }

    #[test]
    fn one_fixed_scale_makes_a_focused_map_hot_and_a_diffuse_one_cool() {
        let grid = Grid {
            height: 4,
            width: 4,
        };
        let image = gray_png(400, 400, 128);
        let band = caption_height(text_scale(400));
        let mut focused = vec![0.0; 16];
        focused[4 + 2] = 1.0;
        let hot = render(&image, &focused, grid);
        let centre = |x: u32, y: u32| hot.get_pixel(x * 100 + 50, band + y * 100 + 50).0;
        let hottest = colour_at(1.0).map(|c| (128.0 * (1.0 - MAX_ALPHA) + c * MAX_ALPHA).round());
        let hot_centre = centre(2, 1).map(f32::from);
        assert!(
            hot_centre
                .iter()
                .zip(hottest)
                .all(|(a, b)| (a - b).abs() <= 8.0),
            "{hot_centre:?} vs {hottest:?}"
        );
        assert_eq!(centre(0, 3), [128, 128, 128], "no weight, no colour");

        let mut diffuse = vec![1.0; 16];
        diffuse[4 + 2] = 1.5;
        let cool = render(&image, &diffuse, grid);
        let cool_centre = cool.get_pixel(250, band + 150).0;
        let distance = |p: [u8; 3]| p.iter().map(|&c| u32::from(c.abs_diff(128))).sum::<u32>();
        assert!(
            distance(cool_centre) * 4 < distance(centre(2, 1)),
            "1.4x the even share is far cooler than 16x: {cool_centre:?}"
        );
    }

    #[test]
    fn the_caption_band_shows_the_disposition_colour() {
        let grid = Grid {
            height: 1,
            width: 1,
        };
        let image = gray_png(300, 300, 90);
        for (disposition, colour) in [
            (Some(Disposition::Fail), [183, 28, 28]),
            (Some(Disposition::Pass), [27, 94, 32]),
            (Some(Disposition::Review), [230, 140, 0]),
        ] {
            let png = render_png(&image, &LIMITS, &[1.0], grid, &caption(disposition)).unwrap();
            let picture = ::image::load_from_memory(&png).unwrap().to_rgb8();
            assert_eq!(picture.get_pixel(picture.width() - 1, 0).0, colour);
            let lit = (0..picture.width())
                .flat_map(|x| (0..caption_height(1)).map(move |y| (x, y)))
                .filter(|&(x, y)| picture.get_pixel(x, y).0 == [255, 255, 255])
                .count();
            assert!(
                lit > 50,
                "the caption's words are drawn ({lit} white pixels)"
            );
        }
    }

    #[test]
    fn a_caption_wider_than_the_image_is_drawn_smaller_not_cut() {
        let caption = "REVIEW  Void in via  94.3%";
        assert_eq!(text_scale(384), 2);
        assert_eq!(
            fitting_scale(384, 2, caption),
            1,
            "26 glyphs of 16 px would not fit"
        );
        assert_eq!(fitting_scale(1600, 4, caption), 4);
        assert_eq!(fitting_scale(64, 1, caption), 1, "never below scale 1");
    }

    #[test]
    fn broken_inputs_are_errors_not_panics() {
        let grid = Grid {
            height: 2,
            width: 2,
        };
        let image = gray_png(16, 16, 0);
        let short = render_png(&image, &LIMITS, &[0.0; 3], grid, &caption(None));
        assert!(matches!(short, Err(Error::Internal(_))), "{short:?}");
        let bad = render_png(b"not an image", &LIMITS, &[0.25; 4], grid, &caption(None));
        assert!(matches!(bad, Err(Error::BadImage(_))), "{bad:?}");
        for attention in [[0.0; 4], [f32::NAN, -1.0, f32::INFINITY, 0.0]] {
            assert!(render_png(&image, &LIMITS, &attention, grid, &caption(None)).is_ok());
        }
    }
}
