//! Stitching group estimates into one object (PtychoPINN `reassemble_position`): the centre
//! M×M crop of each group's object is translated to its group centroid (relative to the mean
//! centroid) and averaged where crops overlap.

use ndarray::Array2;
use num_complex::Complex32;

use super::physics::shift_matrix;

/// `canvas = Σ T(off)[pad(w·crop)] / (1e-9 + Σ T(off)[pad(w)])` with per-pixel weights `w`
/// (ones in the reference; 0 marks pixels an estimate does not constrain), with `off = offset − mean`,
/// `pad = ceil(max|off|)` (+1 if odd). Returns the canvas and its centre in object pixels
/// (x, y) = the mean centroid.
pub fn stitch(
    objects: &[Array2<Complex32>],
    weights: &[Array2<f32>],
    offsets: &[(f64, f64)],
    m: usize,
) -> (Array2<Complex32>, (f64, f64)) {
    assert_eq!(
        objects.len(),
        offsets.len(),
        "stitch: one offset per object"
    );
    assert_eq!(
        objects.len(),
        weights.len(),
        "stitch: one weight map per object"
    );
    assert!(!objects.is_empty(), "stitch: no objects");
    let n = objects[0].nrows();
    let m = m.min(n);
    let k = objects.len() as f64;
    let mean = (
        offsets.iter().map(|o| o.0).sum::<f64>() / k,
        offsets.iter().map(|o| o.1).sum::<f64>() / k,
    );
    let maxoff = offsets
        .iter()
        .map(|o| (o.0 - mean.0).abs().max((o.1 - mean.1).abs()))
        .fold(0.0, f64::max);
    let mut pad = maxoff.ceil() as usize;
    if pad % 2 == 1 {
        pad += 1;
    }
    let size = m + 2 * pad;
    let lo = (n - m) / 2;
    let mut num = Array2::<Complex32>::zeros((size, size));
    let mut den = Array2::<f64>::zeros((size, size));
    for ((obj, wt), off) in objects.iter().zip(weights).zip(offsets) {
        let ry = shift_matrix(size, m, pad as f64, 0.0, off.1 - mean.1);
        let rx = shift_matrix(size, m, pad as f64, 0.0, off.0 - mean.0);
        for i in 0..size {
            let row = &ry[i * m..(i + 1) * m];
            let sy: f64 = row.iter().map(|v| *v as f64).sum();
            if sy == 0.0 {
                continue;
            }
            for j in 0..size {
                let col = &rx[j * m..(j + 1) * m];
                let sx: f64 = col.iter().map(|v| *v as f64).sum();
                if sx == 0.0 {
                    continue;
                }
                let mut acc = Complex32::new(0.0, 0.0);
                let mut wsum = 0.0f64;
                for (a, wy) in row.iter().enumerate().filter(|(_, w)| **w != 0.0) {
                    for (b, wx) in col.iter().enumerate().filter(|(_, w)| **w != 0.0) {
                        let wv = wy * wx * wt[[lo + a, lo + b]];
                        acc += obj[[lo + a, lo + b]] * wv;
                        wsum += wv as f64;
                    }
                }
                num[[i, j]] += acc;
                den[[i, j]] += wsum;
            }
        }
    }
    let out = Array2::from_shape_fn((size, size), |(i, j)| {
        num[[i, j]] / (1e-9 + den[[i, j]]) as f32
    });
    (out, mean)
}
