//! ePIE baseline (Maiden & Rodenburg 2009; pty-chi `EPIEReconstructor`): per position,
//! `ψ = P·O_i`, Fourier-modulus projection `Ψ' = Ψ/(|Ψ|+1e-7)·√I`, then
//! `O_i += α·P*/max|P|²·(ψ'−ψ)` and optionally `P += β·O_i*/max|O_i|²·(ψ'−ψ)`.
//!
//! Positions are rounded to whole pixels (sub-pixel shifts are not modelled).

use indicatif::ProgressBar;
use ndarray::{Array2, ArrayView3};
use num_complex::{Complex32, Complex64};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::fft::Fft2;
use crate::error::SpxError;

/// Largest object (pixels) ePIE reconstructs: 4096², 256 MiB as complex128. Bigger is not a
/// scan spx simulates or a real one fits in; it is a corrupt coordinate.
pub const MAX_OBJECT_PIXELS: usize = 1 << 24;

/// The `[ptycho.epie]` settings of `spx ptycho epie`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EpieConfig {
    pub iterations: usize,
    pub alpha: f64,
    /// Probe step; 0 keeps the probe fixed.
    pub beta: f64,
}

pub struct EpieResult {
    pub object: Array2<Complex32>,
    pub probe: Array2<Complex32>,
    /// Normalised Fourier-amplitude error Σ(|Ψ|−√I)² / Σ I per iteration.
    pub errors: Vec<f64>,
}

/// Reconstruct an `(h, w)` object from amplitudes `diffraction` (n, N, N) in the reference
/// normalisation `sqrt(fftshift(|FFT2 ψ|²)/N²)` at positions (x = column, y = row).
#[allow(clippy::too_many_arguments)]
pub fn epie(
    diffraction: ArrayView3<f32>,
    x: &[f64],
    y: &[f64],
    probe: &Array2<Complex32>,
    shape: (usize, usize),
    cfg: &EpieConfig,
    seed: u64,
    pb: &ProgressBar,
) -> Result<EpieResult, SpxError> {
    let (np, n, n2) = diffraction.dim();
    if n != n2 || probe.dim() != (n, n) || x.len() != np || y.len() != np {
        return Err(SpxError::Config(format!(
            "epie: {np} patterns of {n}×{n2}, probe {:?}, {} x / {} y positions",
            probe.dim(),
            x.len(),
            y.len()
        )));
    }
    if !(cfg.alpha.is_finite() && cfg.alpha > 0.0 && cfg.alpha <= 2.0) {
        return Err(SpxError::Config(format!(
            "epie: --alpha {} must be a finite step in (0, 2]",
            cfg.alpha
        )));
    }
    if !(cfg.beta.is_finite() && (0.0..=2.0).contains(&cfg.beta)) {
        return Err(SpxError::Config(format!(
            "epie: --beta {} must be a finite step in [0, 2]",
            cfg.beta
        )));
    }
    if let Some(v) = x.iter().chain(y).find(|v| !v.is_finite()) {
        return Err(SpxError::Config(format!(
            "epie: scan position {v} is not finite"
        )));
    }
    let (h, w) = shape;
    if h < n || w < n {
        return Err(SpxError::Config(format!(
            "epie: object {h}×{w} is smaller than the {n}×{n} probe (objectGuess too small for the scan)"
        )));
    }
    if h.saturating_mul(w) > MAX_OBJECT_PIXELS {
        return Err(SpxError::Config(format!(
            "epie: object {h}×{w} exceeds {MAX_OBJECT_PIXELS} pixels (scan positions out of range?)"
        )));
    }
    // top-left corner of each patch, clamped into the object
    let corners: Vec<(usize, usize)> = x
        .iter()
        .zip(y)
        .map(|(&xi, &yi)| {
            let r = (yi.round() as i64 - (n / 2) as i64).clamp(0, h as i64 - n as i64) as usize;
            let c = (xi.round() as i64 - (n / 2) as i64).clamp(0, w as i64 - n as i64) as usize;
            (r, c)
        })
        .collect();
    let plan = Fft2::new(n);
    let mut obj = Array2::from_elem((h, w), Complex64::new(1.0, 0.0));
    let mut p: Array2<Complex64> = probe.mapv(|z| Complex64::new(z.re as f64, z.im as f64));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..np).collect();
    let mut errors = Vec::with_capacity(cfg.iterations);
    let mut buf = vec![Complex64::new(0.0, 0.0); n * n];
    let mut tmp = buf.clone();
    let half = n / 2;
    let nn = (n * n) as f64;
    let total_i: f64 = diffraction.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() * nn;
    pb.set_length(cfg.iterations as u64);
    for _ in 0..cfg.iterations {
        order.shuffle(&mut rng);
        let mut err = 0.0;
        for &k in &order {
            let (r0, c0) = corners[k];
            let mut psi = vec![Complex64::new(0.0, 0.0); n * n];
            for r in 0..n {
                for c in 0..n {
                    psi[r * n + c] = p[[r, c]] * obj[[r0 + r, c0 + c]];
                }
            }
            buf.copy_from_slice(&psi);
            plan.forward(&mut buf, &mut tmp);
            for r in 0..n {
                for c in 0..n {
                    // unshifted index (r, c) ↔ stored pattern index shifted by N/2
                    let meas = diffraction[[k, (r + half) % n, (c + half) % n]] as f64 * n as f64;
                    let z = buf[r * n + c];
                    let a = z.norm();
                    err += (a - meas).powi(2);
                    buf[r * n + c] = z / (a + 1e-7) * meas;
                }
            }
            // inverse FFT: conj(FFT(conj(z)))/N²
            for z in buf.iter_mut() {
                *z = z.conj();
            }
            plan.forward(&mut buf, &mut tmp);
            let pmax = p
                .iter()
                .map(|z| z.norm_sqr())
                .fold(0.0, f64::max)
                .max(1e-30);
            let omax = if cfg.beta != 0.0 {
                (0..n * n)
                    .map(|i| obj[[r0 + i / n, c0 + i % n]].norm_sqr())
                    .fold(0.0, f64::max)
                    .max(1e-30)
            } else {
                1.0
            };
            for r in 0..n {
                for c in 0..n {
                    let i = r * n + c;
                    let d = buf[i].conj() / nn - psi[i];
                    let o = obj[[r0 + r, c0 + c]];
                    obj[[r0 + r, c0 + c]] += p[[r, c]].conj() * d * (cfg.alpha / pmax);
                    if cfg.beta != 0.0 {
                        p[[r, c]] += o.conj() * d * (cfg.beta / omax);
                    }
                }
            }
        }
        errors.push(err / total_i.max(1e-300));
        pb.inc(1);
    }
    Ok(EpieResult {
        object: obj.mapv(|z| Complex32::new(z.re as f32, z.im as f32)),
        probe: p.mapv(|z| Complex32::new(z.re as f32, z.im as f32)),
        errors,
    })
}
