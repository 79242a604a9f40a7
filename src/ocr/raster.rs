//! The pixel operations the reader shares with the Python reference, done as OpenCV does them
//! (the reference runs on OpenCV), so both read the same text from the same frame: the frame
//! in BGR order, bilinear resize in OpenCV's fixed point, perspective crop with bicubic
//! sampling on OpenCV's 1/32-pixel grid and replicated borders, and a quarter turn.

use ::image::DynamicImage;

/// An 8-bit, three-channel image in BGR order (what PP-OCR's graphs were trained on), rows
/// top to bottom, interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bgr {
    /// Columns.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// `height * width * 3` bytes.
    pub data: Vec<u8>,
}

impl Bgr {
    /// The frame as the reader needs it: gray replicated, alpha dropped, 16 bits cut to 8.
    pub fn from_image(image: &DynamicImage) -> Bgr {
        let rgb = image.to_rgb8();
        let (width, height) = (rgb.width() as usize, rgb.height() as usize);
        let mut data = rgb.into_raw();
        for pixel in data.chunks_exact_mut(3) {
            pixel.swap(0, 2);
        }
        Bgr {
            width,
            height,
            data,
        }
    }

    /// The part of the image inside `[x, x + width) x [y, y + height)`, cut to the image.
    pub fn crop(&self, x: usize, y: usize, width: usize, height: usize) -> Bgr {
        let x0 = x.min(self.width);
        let y0 = y.min(self.height);
        let x1 = x.saturating_add(width).min(self.width);
        let y1 = y.saturating_add(height).min(self.height);
        let mut data = Vec::with_capacity((x1 - x0) * (y1 - y0) * 3);
        for row in y0..y1 {
            let start = (row * self.width + x0) * 3;
            data.extend_from_slice(&self.data[start..start + (x1 - x0) * 3]);
        }
        Bgr {
            width: x1 - x0,
            height: y1 - y0,
            data,
        }
    }

    fn at(&self, x: usize, y: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * 3 + c]
    }

    /// Turned a quarter counter-clockwise, as `numpy.rot90` turns a tall text crop.
    pub fn rotate_ccw(&self) -> Bgr {
        let (w, h) = (self.height, self.width);
        let mut data = Vec::with_capacity(self.data.len());
        for row in 0..h {
            for col in 0..w {
                let (sx, sy) = (self.width - 1 - row, col);
                for c in 0..3 {
                    data.push(self.at(sx, sy, c));
                }
            }
        }
        Bgr {
            width: w,
            height: h,
            data,
        }
    }

    /// Resized to `width x height` with OpenCV's `INTER_LINEAR` (half-pixel centres, no
    /// antialiasing, 11-bit fixed-point weights).
    pub fn resize_linear(&self, width: usize, height: usize) -> Bgr {
        if width == self.width && height == self.height {
            return self.clone();
        }
        let xs = linear_taps(self.width, width);
        let ys = linear_taps(self.height, height);
        let mut data = vec![0u8; width * height * 3];
        // The two source rows last resized horizontally (row index, values): consecutive
        // output rows mostly share them, so each source row is resized about once.
        let mut upper = (usize::MAX, vec![0i64; width * 3]);
        let mut lower = (usize::MAX, vec![0i64; width * 3]);
        for (dy, &(sy, b0)) in ys.iter().enumerate() {
            let sy1 = (sy + 1).min(self.height - 1);
            if upper.0 != sy {
                if lower.0 == sy {
                    std::mem::swap(&mut upper, &mut lower);
                } else {
                    horizontal(self, sy, &xs, &mut upper.1);
                    upper.0 = sy;
                }
            }
            if lower.0 != sy1 {
                horizontal(self, sy1, &xs, &mut lower.1);
                lower.0 = sy1;
            }
            let b1 = COEF_SCALE - b0;
            let out = &mut data[dy * width * 3..(dy + 1) * width * 3];
            for (i, value) in out.iter_mut().enumerate() {
                let sum = b0 * upper.1[i] + b1 * lower.1[i] + (1 << (2 * COEF_BITS - 1));
                *value = (sum >> (2 * COEF_BITS)).clamp(0, 255) as u8;
            }
        }
        Bgr {
            width,
            height,
            data,
        }
    }

    /// The quadrilateral `corners` (top-left, top-right, bottom-right, bottom-left) of this
    /// image, mapped onto a `width x height` rectangle as OpenCV's `warpPerspective` with
    /// `INTER_CUBIC` and `BORDER_REPLICATE` does.
    pub fn warp_quad(&self, corners: &[[f32; 2]; 4], width: usize, height: usize) -> Bgr {
        let target = [
            [0.0, 0.0],
            [width as f64, 0.0],
            [width as f64, height as f64],
            [0.0, height as f64],
        ];
        let source = corners.map(|[x, y]| [f64::from(x), f64::from(y)]);
        let mut data = vec![0u8; width * height * 3];
        let Some(m) = homography(&target, &source) else {
            return Bgr {
                width,
                height,
                data,
            };
        };
        let table = TAB_SIZE as f64;
        for dy in 0..height {
            for dx in 0..width {
                let (x, y) = (dx as f64, dy as f64);
                let w = m[6] * x + m[7] * y + m[8];
                let w = if w != 0.0 { table / w } else { 0.0 };
                let sx = ((m[0] * x + m[1] * y + m[2]) * w).round_ties_even() as i64;
                let sy = ((m[3] * x + m[4] * y + m[5]) * w).round_ties_even() as i64;
                let (ix, fx) = (sx >> TAB_BITS, (sx & (TAB_SIZE - 1)) as f64 / table);
                let (iy, fy) = (sy >> TAB_BITS, (sy & (TAB_SIZE - 1)) as f64 / table);
                let (cx, cy) = (cubic_weights(fx), cubic_weights(fy));
                for c in 0..3 {
                    let mut sum = 0.0;
                    for (j, wy) in cy.iter().enumerate() {
                        let row = clamp(iy - 1 + j as i64, self.height);
                        for (i, wx) in cx.iter().enumerate() {
                            let col = clamp(ix - 1 + i as i64, self.width);
                            sum += wy * wx * f64::from(self.at(col, row, c));
                        }
                    }
                    data[(dy * width + dx) * 3 + c] = sum.round_ties_even().clamp(0.0, 255.0) as u8;
                }
            }
        }
        Bgr {
            width,
            height,
            data,
        }
    }
}

/// OpenCV's `INTER_RESIZE_COEF_BITS`.
const COEF_BITS: u32 = 11;
const COEF_SCALE: i64 = 1 << COEF_BITS;
/// OpenCV's `INTER_BITS`: remap coordinates on a 1/32-pixel grid.
const TAB_BITS: u32 = 5;
const TAB_SIZE: i64 = 1 << TAB_BITS;

/// Per destination index: the first source index and its weight (the second gets the rest).
fn linear_taps(source: usize, destination: usize) -> Vec<(usize, i64)> {
    let scale = source as f64 / destination as f64;
    (0..destination)
        .map(|d| {
            let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            f -= s as f32;
            if s < 0 {
                f = 0.0;
                s = 0;
            }
            if s >= source as i64 - 1 {
                f = 0.0;
                s = source as i64 - 1;
            }
            let weight = ((1.0 - f) * COEF_SCALE as f32).round_ties_even() as i64;
            (s as usize, weight)
        })
        .collect()
}

fn horizontal(image: &Bgr, row: usize, taps: &[(usize, i64)], out: &mut [i64]) {
    let line = &image.data[row * image.width * 3..(row + 1) * image.width * 3];
    for (dx, &(sx, a0)) in taps.iter().enumerate() {
        let sx1 = (sx + 1).min(image.width - 1);
        for c in 0..3 {
            out[dx * 3 + c] =
                i64::from(line[sx * 3 + c]) * a0 + i64::from(line[sx1 * 3 + c]) * (COEF_SCALE - a0);
        }
    }
}

fn clamp(index: i64, size: usize) -> usize {
    index.clamp(0, size as i64 - 1) as usize
}

/// OpenCV's bicubic weights (A = -0.75) at fraction `x`.
fn cubic_weights(x: f64) -> [f64; 4] {
    const A: f64 = -0.75;
    let c0 = ((A * (x + 1.0) - 5.0 * A) * (x + 1.0) + 8.0 * A) * (x + 1.0) - 4.0 * A;
    let c1 = ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let c2 = ((A + 2.0) * (1.0 - x) - (A + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0;
    [c0, c1, c2, 1.0 - c0 - c1 - c2]
}

/// The 3x3 homography (row-major, last entry 1) taking each `from` corner to its `to` corner;
/// `None` when the corners are degenerate.
fn homography(from: &[[f64; 2]; 4], to: &[[f64; 2]; 4]) -> Option<[f64; 9]> {
    let mut a = [[0.0f64; 9]; 8];
    for i in 0..4 {
        let ([x, y], [u, v]) = (from[i], to[i]);
        a[i] = [x, y, 1.0, 0.0, 0.0, 0.0, -x * u, -y * u, u];
        a[i + 4] = [0.0, 0.0, 0.0, x, y, 1.0, -x * v, -y * v, v];
    }
    for col in 0..8 {
        let pivot = (col..8).max_by(|&p, &q| a[p][col].abs().total_cmp(&a[q][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        let pivot_row = a[col];
        for (row, line) in a.iter_mut().enumerate() {
            if row != col {
                let factor = line[col] / pivot_row[col];
                for (entry, pivot_entry) in line.iter_mut().zip(&pivot_row).skip(col) {
                    *entry -= factor * pivot_entry;
                }
            }
        }
    }
    let mut m = [1.0; 9];
    for (i, entry) in m.iter_mut().take(8).enumerate() {
        *entry = a[i][8] / a[i][i];
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(width: usize, height: usize) -> Bgr {
        let data = (0..width * height * 3)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        Bgr {
            width,
            height,
            data,
        }
    }

    #[test]
    fn an_axis_aligned_crop_copies_pixels() {
        let image = ramp(20, 10);
        let crop = image.warp_quad(&[[3.0, 2.0], [9.0, 2.0], [9.0, 7.0], [3.0, 7.0]], 6, 5);
        assert_eq!(crop, image.crop(3, 2, 6, 5));
    }

    #[test]
    fn resizing_to_the_same_size_and_back_from_double_keeps_pixels() {
        let image = ramp(8, 6);
        assert_eq!(image.resize_linear(8, 6), image);
        let doubled = image.resize_linear(16, 12);
        // OpenCV's half-pixel grid: destination 2k+1 lies a quarter pixel right of source k.
        assert_eq!(doubled.at(0, 0, 0), image.at(0, 0, 0));
        assert_eq!(doubled.at(15, 11, 2), image.at(7, 5, 2));
    }

    #[test]
    fn a_quarter_turn_moves_the_top_right_corner_to_the_top_left() {
        let image = ramp(4, 3);
        let turned = image.rotate_ccw();
        assert_eq!((turned.width, turned.height), (3, 4));
        assert_eq!(turned.at(0, 0, 1), image.at(3, 0, 1));
        assert_eq!(turned.at(2, 3, 1), image.at(0, 2, 1));
    }
}
