//! PtychoPINN's default probe (`probe.get_default_probe`, `fourier.lowpass_g`): a soft-edged disk.

use ndarray::Array2;
use num_complex::Complex32;

use super::object::gaussian_filter;

/// `scipy.signal.windows.gaussian(n, std, sym=True)`, peak 1 at the centre.
pub fn gaussian_window(n: usize, std: f64) -> Vec<f64> {
    let c = (n as f64 - 1.0) / 2.0;
    (0..n)
        .map(|i| (-0.5 * ((i as f64 - c) / std).powi(2)).exp())
        .collect()
}

/// The binary disk `outer(L, L) > 0.5` with `L` a Gaussian window of std `n / (scale·π²)`.
pub fn probe_disk(n: usize, scale: f64) -> Array2<f64> {
    let l = gaussian_window(n, n as f64 / (scale * std::f64::consts::PI.powi(2)));
    let max = l.iter().cloned().fold(0.0, f64::max);
    Array2::from_shape_fn((n, n), |(r, c)| {
        if l[r] / max * l[c] / max > 0.5 {
            1.0
        } else {
            0.0
        }
    })
}

/// Real disk probe blurred with σ = 1 px, plus 1e-9 (so it is nowhere exactly zero).
pub fn default_probe(n: usize, scale: f64) -> Array2<Complex32> {
    gaussian_filter(&probe_disk(n, scale), 1.0).mapv(|v| Complex32::new((v + 1e-9) as f32, 0.0))
}
