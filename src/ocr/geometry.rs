//! Plane geometry of text boxes: convex hull, minimum-area rectangle and corner order, as
//! OpenCV's `convexHull`, `minAreaRect` + `boxPoints` and PP-OCR's corner sorting give them.

/// A point in pixel coordinates.
pub type Point = [f64; 2];

/// The convex hull of `points`, counter-clockwise, without repeated points (monotone chain).
pub fn convex_hull(points: &[Point]) -> Vec<Point> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    sorted.dedup();
    if sorted.len() < 3 {
        return sorted;
    }
    let cross = |o: Point, a: Point, b: Point| {
        (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
    };
    let mut hull: Vec<Point> = Vec::with_capacity(sorted.len() * 2);
    for pass in [false, true] {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &Point>> = if pass {
            Box::new(sorted.iter().rev())
        } else {
            Box::new(sorted.iter())
        };
        for &p in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// A rectangle of any orientation: its four corners and its two side lengths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rect {
    /// Corners in order around the rectangle.
    pub corners: [Point; 4],
    /// Length of the first side.
    pub width: f64,
    /// Length of the second side.
    pub height: f64,
}

impl Rect {
    /// The shorter side.
    pub fn short_side(&self) -> f64 {
        self.width.min(self.height)
    }

    /// The same rectangle grown by `distance` on every side.
    pub fn grown(&self, distance: f64) -> Rect {
        let [a, b, _, d] = self.corners;
        let unit = |from: Point, to: Point, length: f64| {
            if length > 0.0 {
                [(to[0] - from[0]) / length, (to[1] - from[1]) / length]
            } else {
                [0.0, 0.0]
            }
        };
        let mut u = unit(a, b, self.width);
        let mut v = unit(a, d, self.height);
        if self.width == 0.0 {
            u = [v[1], -v[0]];
        }
        if self.height == 0.0 {
            v = [-u[1], u[0]];
        }
        if u == [0.0, 0.0] && v == [0.0, 0.0] {
            (u, v) = ([1.0, 0.0], [0.0, 1.0]);
        }
        let (w, h) = (self.width + 2.0 * distance, self.height + 2.0 * distance);
        let origin = [
            a[0] - distance * (u[0] + v[0]),
            a[1] - distance * (u[1] + v[1]),
        ];
        let at = |s: f64, t: f64| {
            [
                origin[0] + s * u[0] + t * v[0],
                origin[1] + s * u[1] + t * v[1],
            ]
        };
        Rect {
            corners: [at(0.0, 0.0), at(w, 0.0), at(w, h), at(0.0, h)],
            width: w,
            height: h,
        }
    }
}

/// The smallest-area rectangle around `points` (rotating calipers over the convex hull).
pub fn min_area_rect(points: &[Point]) -> Rect {
    let hull = convex_hull(points);
    match hull.len() {
        0 => {
            return Rect {
                corners: [[0.0; 2]; 4],
                width: 0.0,
                height: 0.0,
            };
        }
        1 => {
            return Rect {
                corners: [hull[0]; 4],
                width: 0.0,
                height: 0.0,
            };
        }
        _ => {}
    }
    let mut best: Option<(f64, Rect)> = None;
    for i in 0..hull.len() {
        let (p, q) = (hull[i], hull[(i + 1) % hull.len()]);
        let length = ((q[0] - p[0]).powi(2) + (q[1] - p[1]).powi(2)).sqrt();
        if length == 0.0 {
            continue;
        }
        let u = [(q[0] - p[0]) / length, (q[1] - p[1]) / length];
        let v = [-u[1], u[0]];
        let (mut u0, mut u1, mut v0, mut v1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for h in &hull {
            let s = h[0] * u[0] + h[1] * u[1];
            let t = h[0] * v[0] + h[1] * v[1];
            (u0, u1, v0, v1) = (u0.min(s), u1.max(s), v0.min(t), v1.max(t));
        }
        let area = (u1 - u0) * (v1 - v0);
        if best.as_ref().is_some_and(|(a, _)| *a <= area + 1e-9) {
            continue;
        }
        let at = |s: f64, t: f64| [s * u[0] + t * v[0], s * u[1] + t * v[1]];
        let rect = Rect {
            corners: [at(u0, v0), at(u1, v0), at(u1, v1), at(u0, v1)],
            width: u1 - u0,
            height: v1 - v0,
        };
        best = Some((area, rect));
    }
    best.map(|(_, rect)| rect).unwrap_or(Rect {
        corners: [hull[0]; 4],
        width: 0.0,
        height: 0.0,
    })
}

/// Corners ordered top-left, top-right, bottom-right, bottom-left: the two with the smallest
/// x are the left side, each side's upper corner first (PP-OCR's `order_points_clockwise`).
pub fn order_corners(corners: &[Point; 4]) -> [Point; 4] {
    let mut by_x = *corners;
    by_x.sort_by(|a, b| a[0].total_cmp(&b[0]));
    let (mut left, mut right) = ([by_x[0], by_x[1]], [by_x[2], by_x[3]]);
    left.sort_by(|a, b| a[1].total_cmp(&b[1]));
    right.sort_by(|a, b| a[1].total_cmp(&b[1]));
    [left[0], right[0], right[1], left[1]]
}

/// Distance between two points.
pub fn distance(a: Point, b: Point) -> f64 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// Whether `p` lies inside or on the convex quadrilateral `quad` (corners in order).
pub fn in_quad(quad: &[Point; 4], p: Point) -> bool {
    let mut sign = 0.0f64;
    for i in 0..4 {
        let (a, b) = (quad[i], quad[(i + 1) % 4]);
        let cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0]);
        if cross.abs() < 1e-9 {
            continue;
        }
        if sign == 0.0 {
            sign = cross.signum();
        } else if cross.signum() != sign {
            return false;
        }
    }
    true
}

/// Area (shoelace) and perimeter of a polygon.
pub fn area_and_perimeter(polygon: &[Point]) -> (f64, f64) {
    let mut area = 0.0;
    let mut perimeter = 0.0;
    for i in 0..polygon.len() {
        let (a, b) = (polygon[i], polygon[(i + 1) % polygon.len()]);
        area += a[0] * b[1] - b[0] * a[1];
        perimeter += distance(a, b);
    }
    (area.abs() / 2.0, perimeter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rectangle_around_an_axis_aligned_block_is_the_block() {
        let points: Vec<Point> = (2..=9)
            .flat_map(|x| (4..=6).map(move |y| [x as f64, y as f64]))
            .collect();
        let rect = min_area_rect(&points);
        let ordered = order_corners(&rect.corners);
        let rounded = ordered.map(|[x, y]| [x.round(), y.round()]);
        assert_eq!(rounded, [[2.0, 4.0], [9.0, 4.0], [9.0, 6.0], [2.0, 6.0]]);
        assert!((rect.short_side() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_rotated_square_is_found_at_its_angle() {
        let points = [[5.0, 0.0], [10.0, 5.0], [5.0, 10.0], [0.0, 5.0], [5.0, 5.0]];
        let rect = min_area_rect(&points);
        assert!((rect.width * rect.height - 50.0).abs() < 1e-6);
    }

    #[test]
    fn growing_moves_every_side_out() {
        let rect = min_area_rect(&[[0.0, 0.0], [10.0, 0.0], [10.0, 4.0], [0.0, 4.0]]);
        let grown = rect.grown(2.0);
        let ordered = order_corners(&grown.corners).map(|[x, y]| [x.round(), y.round()]);
        assert_eq!(
            ordered,
            [[-2.0, -2.0], [12.0, -2.0], [12.0, 6.0], [-2.0, 6.0]]
        );
        assert!(in_quad(&grown.corners, [11.0, 5.0]));
        assert!(!in_quad(&grown.corners, [13.0, 5.0]));
        assert_eq!(area_and_perimeter(&rect.corners), (40.0, 28.0));
    }
}
