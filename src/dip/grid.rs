//! The reconstruction grid and the SPHEREx band layout.

/// Nominal detector ranges in µm (IRSA SPHEREx data products), used to label output pixels and
/// to place simulated observations.
pub const BAND_RANGES: [(f64, f64); 6] = [
    (0.75, 1.10),
    (1.10, 1.63),
    (1.63, 2.42),
    (2.42, 3.83),
    (3.83, 4.42),
    (4.42, 5.00),
];

/// Resolving power λ/Δλ per detector (IRSA).
pub const BAND_R: [f64; 6] = [39.0, 41.0, 41.0, 35.0, 112.0, 128.0];

/// `n` points from `lo` to `hi` inclusive.
pub fn linspace(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![lo];
    }
    let step = (hi - lo) / (n - 1) as f64;
    (0..n).map(|i| lo + step * i as f64).collect()
}

/// Band index 0..6 of a wavelength: the first nominal range whose upper edge lies above it
/// (wavelengths outside 0.75–5.0 µm go to the nearest end band).
pub fn band_of(lambda: f64) -> usize {
    BAND_RANGES
        .iter()
        .position(|&(_, hi)| lambda < hi)
        .unwrap_or(5)
}

/// Instrument resolution element (full width) at `lambda`: λ/R of its band.
pub fn resolution_width(lambda: f64) -> f64 {
    lambda / BAND_R[band_of(lambda)]
}
