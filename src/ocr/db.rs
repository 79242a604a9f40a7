//! DB (differentiable binarization) post-processing: from the detector's text-probability map
//! to text boxes in frame pixels, as PP-OCR's `DBPostProcess` does it (threshold, 2x2
//! dilation, connected regions, minimum-area box, mean probability inside it, unclip).

use super::geometry::{Point, Rect, area_and_perimeter, in_quad, min_area_rect, order_corners};

/// The knobs of DB post-processing (PP-OCR's defaults in [`DbParams::default`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DbParams {
    /// A pixel is text above this probability.
    pub threshold: f32,
    /// A region is kept when the mean probability inside its box reaches this.
    pub box_threshold: f32,
    /// How far a box grows: its area times this over its perimeter.
    pub unclip_ratio: f32,
    /// At most this many regions are looked at.
    pub max_candidates: usize,
}

impl Default for DbParams {
    fn default() -> Self {
        DbParams {
            threshold: 0.3,
            box_threshold: 0.5,
            unclip_ratio: 1.6,
            max_candidates: 1000,
        }
    }
}

/// PP-OCR's `min_size`: regions thinner than this are noise.
const MIN_SIZE: f64 = 3.0;

/// The detector's probability map (`width x height`, row-major) as boxes in a frame of
/// `frame_width x frame_height`: integer corners, top-left first, clockwise.
pub fn boxes_from_map(
    probability: &[f32],
    (width, height): (usize, usize),
    (frame_width, frame_height): (usize, usize),
    params: &DbParams,
) -> Vec<[Point; 4]> {
    let mask = dilate(probability, width, height, params.threshold);
    let mut boxes = Vec::new();
    for region in regions(&mask, width, height)
        .into_iter()
        .take(params.max_candidates)
    {
        let rect = min_area_rect(&region);
        if rect.short_side() < MIN_SIZE {
            continue;
        }
        let corners = mini_box(&rect);
        if box_score(probability, width, height, &corners) < f64::from(params.box_threshold) {
            continue;
        }
        let grown = unclip(&corners, f64::from(params.unclip_ratio));
        if grown.short_side() < MIN_SIZE + 2.0 {
            continue;
        }
        let scale = |value: f64, from: usize, to: usize| {
            (value / from as f64 * to as f64)
                .round_ties_even()
                .clamp(0.0, to as f64)
        };
        boxes.push(
            mini_box(&grown)
                .map(|[x, y]| [scale(x, width, frame_width), scale(y, height, frame_height)]),
        );
    }
    boxes
}

/// The thresholded map dilated by a 2x2 square anchored at its lower-right cell (OpenCV's
/// default anchor): a pixel is set when it or its left, upper or upper-left neighbour is text.
fn dilate(probability: &[f32], width: usize, height: usize, threshold: f32) -> Vec<bool> {
    let text = |x: usize, y: usize| probability[y * width + x] > threshold;
    let mut mask = vec![false; width * height];
    for y in 0..height {
        for x in 0..width {
            mask[y * width + x] = text(x, y)
                || (x > 0 && text(x - 1, y))
                || (y > 0 && text(x, y - 1))
                || (x > 0 && y > 0 && text(x - 1, y - 1));
        }
    }
    mask
}

/// Each 8-connected region of `mask`, as the leftmost and rightmost pixel of each of its rows
/// (the region's convex hull is theirs).
fn regions(mask: &[bool], width: usize, height: usize) -> Vec<Vec<Point>> {
    let mut label = vec![usize::MAX; mask.len()];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || label[start] != usize::MAX {
            continue;
        }
        let id = out.len();
        let mut rows: std::collections::BTreeMap<usize, (usize, usize)> = Default::default();
        label[start] = id;
        stack.push(start);
        while let Some(index) = stack.pop() {
            let (x, y) = (index % width, index / width);
            let extent = rows.entry(y).or_insert((x, x));
            extent.0 = extent.0.min(x);
            extent.1 = extent.1.max(x);
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let next = ny * width + nx;
                    if mask[next] && label[next] == usize::MAX {
                        label[next] = id;
                        stack.push(next);
                    }
                }
            }
        }
        let points = rows
            .iter()
            .flat_map(|(&y, &(x0, x1))| [[x0 as f64, y as f64], [x1 as f64, y as f64]])
            .collect();
        out.push(points);
    }
    out
}

/// A rectangle's corners in PP-OCR's `get_mini_boxes` order (top-left, top-right,
/// bottom-right, bottom-left).
fn mini_box(rect: &Rect) -> [Point; 4] {
    order_corners(&rect.corners)
}

/// Mean probability over the pixels inside `corners` (PP-OCR's `box_score_fast`: corners cut
/// to whole pixels, edges included).
fn box_score(probability: &[f32], width: usize, height: usize, corners: &[Point; 4]) -> f64 {
    let clip = |v: f64, size: usize| (v as i64).clamp(0, size as i64 - 1) as usize;
    let xs = corners.map(|p| p[0]);
    let ys = corners.map(|p| p[1]);
    let x0 = clip(xs.iter().copied().fold(f64::MAX, f64::min).floor(), width);
    let x1 = clip(xs.iter().copied().fold(f64::MIN, f64::max).ceil(), width);
    let y0 = clip(ys.iter().copied().fold(f64::MAX, f64::min).floor(), height);
    let y1 = clip(ys.iter().copied().fold(f64::MIN, f64::max).ceil(), height);
    let quad = corners.map(|[x, y]| [(x - x0 as f64).trunc(), (y - y0 as f64).trunc()]);
    let (mut sum, mut count) = (0.0f64, 0usize);
    for y in y0..=y1 {
        for x in x0..=x1 {
            if in_quad(&quad, [(x - x0) as f64, (y - y0) as f64]) {
                sum += f64::from(probability[y * width + x]);
                count += 1;
            }
        }
    }
    if count == 0 { 0.0 } else { sum / count as f64 }
}

/// The box grown by its area times `ratio` over its perimeter on every side (PP-OCR's
/// `unclip`, which offsets the whole-pixel polygon with Clipper and rounds to whole pixels).
fn unclip(corners: &[Point; 4], ratio: f64) -> Rect {
    let (area, perimeter) = area_and_perimeter(corners);
    let distance = if perimeter > 0.0 {
        area * ratio / perimeter
    } else {
        0.0
    };
    let whole = corners.map(|[x, y]| [x.trunc(), y.trunc()]);
    let grown = min_area_rect(&whole).grown(distance);
    let rounded = grown.corners.map(|[x, y]| [x.round(), y.round()]);
    min_area_rect(&rounded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bright_block_becomes_one_grown_box() {
        let (w, h) = (64, 32);
        let mut map = vec![0.0f32; w * h];
        for y in 10..16 {
            for x in 8..40 {
                map[y * w + x] = 0.9;
            }
        }
        let boxes = boxes_from_map(&map, (w, h), (w, h), &DbParams::default());
        assert_eq!(boxes.len(), 1);
        let [tl, tr, br, bl] = boxes[0];
        // 32 x 6 after dilation, grown by 32 * 6 * 1.6 / 76 = 4.04 on every side.
        assert_eq!(tl, [4.0, 6.0]);
        assert_eq!(tr, [44.0, 6.0]);
        assert_eq!(br, [44.0, 20.0]);
        assert_eq!(bl, [4.0, 20.0]);
    }

    #[test]
    fn faint_or_thin_regions_are_dropped() {
        let (w, h) = (32, 32);
        let mut map = vec![0.0f32; w * h];
        for x in 2..30 {
            map[3 * w + x] = 0.9; // one row: thinner than the minimum size
        }
        for y in 10..20 {
            for x in 5..25 {
                map[y * w + x] = 0.35; // text by the threshold, but a weak box
            }
        }
        assert!(boxes_from_map(&map, (w, h), (w, h), &DbParams::default()).is_empty());
    }
}
