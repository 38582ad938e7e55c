//! Square 2-D FFTs on the host (rustfft, any size) and the far-field intensity of an exit wave.

use std::sync::Arc;

use ndarray::Array2;
use num_complex::Complex64;
use rustfft::{Fft, FftPlanner};

/// A planned forward 2-D FFT of N×N row-major arrays (unnormalised, numpy's `fft2`).
#[derive(Clone)]
pub struct Fft2 {
    n: usize,
    fft: Arc<dyn Fft<f64>>,
}

impl Fft2 {
    pub fn new(n: usize) -> Self {
        let fft = FftPlanner::new().plan_fft_forward(n);
        Fft2 { n, fft }
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// In place on `a` (N×N, row-major); `tmp` is an N×N work buffer.
    pub fn forward(&self, a: &mut [Complex64], tmp: &mut [Complex64]) {
        let n = self.n;
        assert_eq!(a.len(), n * n, "Fft2: buffer is not N×N");
        assert_eq!(tmp.len(), n * n, "Fft2: work buffer is not N×N");
        self.fft.process(a); // rows
        transpose(a, tmp, n);
        self.fft.process(tmp); // columns (as rows of the transpose)
        transpose(tmp, a, n);
    }
}

fn transpose(src: &[Complex64], dst: &mut [Complex64], n: usize) {
    for r in 0..n {
        for c in 0..n {
            dst[c * n + r] = src[r * n + c];
        }
    }
}

/// `fftshift(|FFT2(ψ)|²) / N²`: the expected far-field intensity with the zero frequency at
/// (N/2, N/2). With this normalisation Σ intensity = Σ |ψ|² (Parseval), so photon scaling can be
/// done in real space.
pub fn far_field_intensity(plan: &Fft2, psi: &Array2<Complex64>) -> Array2<f64> {
    let n = plan.n();
    assert_eq!(psi.dim(), (n, n), "far_field_intensity: ψ is not N×N");
    let mut buf: Vec<Complex64> = psi.iter().copied().collect();
    let mut tmp = vec![Complex64::new(0.0, 0.0); n * n];
    plan.forward(&mut buf, &mut tmp);
    let norm = 1.0 / (n * n) as f64;
    let h = n / 2;
    Array2::from_shape_fn((n, n), |(r, c)| {
        buf[((r + n - h) % n) * n + (c + n - h) % n].norm_sqr() * norm
    })
}
