//! Shepard's method as in the MaNGA DRP (Law et al. 2016; paper Eqs. 1–3): Gaussian weights
//! exp(−r²/2σ²) for r < r_lim over good samples, normalised per pixel.

use faer::Mat;

use super::grid::Grid;

/// Weights (npix_listed × nsample); a row with no good sample within r_lim is all zero.
pub fn shepard_weights(
    grid: &Grid,
    pix: &[usize],
    xs: &[f64],
    ys: &[f64],
    good: &[bool],
    sigma: f64,
    rlim: f64,
) -> Mat<f64> {
    let mut w = Mat::<f64>::zeros(pix.len(), xs.len());
    for (row, &j) in pix.iter().enumerate() {
        let (px, py) = grid.centre(j);
        let mut total = 0.0;
        for i in 0..xs.len() {
            if !good[i] {
                continue;
            }
            let r2 = (xs[i] - px).powi(2) + (ys[i] - py).powi(2);
            if r2 < rlim * rlim {
                let v = (-r2 / (2.0 * sigma * sigma)).exp();
                w[(row, i)] = v;
                total += v;
            }
        }
        if total > 0.0 {
            for i in 0..xs.len() {
                w[(row, i)] /= total;
            }
        }
    }
    w
}
