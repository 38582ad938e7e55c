//! The "lines" test object of PtychoPINN (`diffsim.mk_lines_img` and the dose study's
//! `generate_ground_truth`): random line segments blurred at three scales.

use ndarray::Array2;
use num_complex::Complex32;
use rand::Rng;

/// Pixels of the segment (r0, c0)–(r1, c1), both ends included (Bresenham, all octants).
pub fn line_pixels(r0: i64, c0: i64, r1: i64, c1: i64) -> Vec<(i64, i64)> {
    let (dr, dc) = ((r1 - r0).abs(), (c1 - c0).abs());
    let (sr, sc) = (if r1 >= r0 { 1 } else { -1 }, if c1 >= c0 { 1 } else { -1 });
    let mut out = Vec::with_capacity((dr.max(dc) + 1) as usize);
    let (mut r, mut c) = (r0, c0);
    let mut err = dc - dr;
    loop {
        out.push((r, c));
        if r == r1 && c == c1 {
            return out;
        }
        let e2 = 2 * err;
        if e2 > -dr {
            err -= dr;
            c += sc;
        }
        if e2 < dc {
            err += dc;
            r += sr;
        }
    }
}

/// scipy's `gaussian_filter1d` kernel: radius `int(truncate·σ + 0.5)`, truncate = 4, sum 1.
pub fn gaussian_kernel(sigma: f64) -> Vec<f64> {
    let radius = (4.0 * sigma + 0.5) as i64;
    let mut k: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 * (x as f64 / sigma).powi(2)).exp())
        .collect();
    let s: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    k
}

/// scipy's `mode='reflect'` index (d c b a | a b c d | d c b a), for any offset.
fn reflect(i: i64, n: i64) -> usize {
    let p = i.rem_euclid(2 * n);
    (if p < n { p } else { 2 * n - 1 - p }) as usize
}

/// `scipy.ndimage.gaussian_filter(img, sigma)` (reflect boundary, truncate 4), separably.
pub fn gaussian_filter(img: &Array2<f64>, sigma: f64) -> Array2<f64> {
    let k = gaussian_kernel(sigma);
    let r = (k.len() / 2) as i64;
    let (h, w) = img.dim();
    let rows = Array2::from_shape_fn((h, w), |(y, x)| {
        k.iter()
            .enumerate()
            .map(|(j, kv)| kv * img[[y, reflect(x as i64 + j as i64 - r, w as i64)]])
            .sum::<f64>()
    });
    Array2::from_shape_fn((h, w), |(y, x)| {
        k.iter()
            .enumerate()
            .map(|(j, kv)| kv * rows[[reflect(y as i64 + j as i64 - r, h as i64), x]])
            .sum::<f64>()
    })
}

/// `mk_lines_img(size, nlines)`: `nlines` unit-valued segments with end points
/// `int(size·U[0,1))` (drawn r0, c0, r1, c1), then `gf(·,1) + 2·gf(·,5) + 5·gf(·,10)`.
pub fn lines_image(size: usize, nlines: usize, rng: &mut impl Rng) -> Array2<f64> {
    let mut img = Array2::<f64>::zeros((size, size));
    for _ in 0..nlines {
        let mut draw = || (size as f64 * rng.random::<f64>()) as i64;
        let (r0, c0, r1, c1) = (draw(), draw(), draw(), draw());
        for (r, c) in line_pixels(r0, c0, r1, c1) {
            img[[r as usize, c as usize]] = 1.0;
        }
    }
    let (g1, g5, g10) = (
        gaussian_filter(&img, 1.0),
        gaussian_filter(&img, 5.0),
        gaussian_filter(&img, 10.0),
    );
    g1 + g5 * 2.0 + g10 * 5.0
}

/// Centre crop of a lines image drawn on a 2·`size` canvas, scaled to [0, 1] by its maximum.
fn cropped_unit_lines(size: usize, nlines: usize, rng: &mut impl Rng) -> Array2<f64> {
    let full = lines_image(2 * size, nlines, rng);
    let o = size / 2;
    let crop = full.slice(ndarray::s![o..o + size, o..o + size]).to_owned();
    let max = crop.fold(0.0f64, |m, &v| m.max(v));
    if max > 0.0 { crop / max } else { crop }
}

/// The dose study's ground truth: amplitude `0.5 + lines/max` in [0.5, 1.5]; phase
/// `phase·(2·lines'/max − 1)` from an independent lines image when `phase ≠ 0`, else 0.
pub fn lines_object(
    size: usize,
    nlines: usize,
    phase: f64,
    rng: &mut impl Rng,
) -> Array2<Complex32> {
    let amp = cropped_unit_lines(size, nlines, rng).mapv(|a| a + 0.5);
    if phase == 0.0 {
        return amp.mapv(|a| Complex32::new(a as f32, 0.0));
    }
    let ph = cropped_unit_lines(size, nlines, rng).mapv(|b| phase * (2.0 * b - 1.0));
    ndarray::Zip::from(&amp)
        .and(&ph)
        .map_collect(|&a, &p| Complex32::from_polar(a as f32, p as f32))
}
