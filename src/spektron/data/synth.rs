//! Synthetic spectra so pre-training and tests run without downloads: per modality, a native
//! x grid of the modality's usual range, a sum of Lorentzian (Raman), pseudo-Voigt (IR/FTIR)
//! or broad Gaussian (NIR) bands, a smooth quadratic baseline and Gaussian noise. Spectrum i of
//! a run depends only on (seed, i), so any slice can be regenerated.

use std::path::Path;

use indicatif::ProgressBar;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use super::corpus::{CorpusConfig, CorpusReport, CorpusWriter};
use super::{Modality, Spectrum};
use crate::error::SpxError;
use crate::io::hdf5::write_h5;

/// `[spektron.synth]`: size and shape of the synthetic corpus.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SynthConfig {
    pub n: usize,
    pub bands_min: usize,
    pub bands_max: usize,
    pub noise: f64,
    pub baseline: f64,
}

/// (x_min, x_max, unit, band width range) per modality.
fn modality_axis(m: Modality) -> (f64, f64, &'static str, (f64, f64)) {
    match m {
        Modality::Raman => (100.0, 3500.0, "1/CM (Raman shift)", (3.0, 25.0)),
        Modality::Nir => (1100.0, 2500.0, "NANOMETERS", (20.0, 120.0)),
        Modality::Ftir => (600.0, 4000.0, "1/CM", (5.0, 40.0)),
        Modality::Ir | Modality::Unknown => (400.0, 4000.0, "1/CM", (5.0, 40.0)),
    }
}

/// Band profile with unit height at its centre.
fn band(m: Modality, x: f64, c: f64, w: f64, eta: f64) -> f64 {
    let d = (x - c) / w;
    let lor = 1.0 / (1.0 + d * d);
    let gau = (-0.5 * d * d * std::f64::consts::LN_2 * 2.0).exp();
    match m {
        Modality::Raman => lor,
        Modality::Nir => gau,
        _ => eta * lor + (1.0 - eta) * gau,
    }
}

/// Spectrum `index` of the synthetic corpus with `seed`; modalities cycle IR, RAMAN, NIR, FTIR.
pub fn synth_spectrum(seed: u64, index: u64, cfg: &SynthConfig) -> Spectrum {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let m = [Modality::Ir, Modality::Raman, Modality::Nir, Modality::Ftir][(index % 4) as usize];
    let (lo, hi, unit, (wmin, wmax)) = modality_axis(m);
    let n = rng.random_range(800..3000usize);
    let x: Vec<f64> = (0..n)
        .map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64)
        .collect();
    let nb = rng.random_range(cfg.bands_min.max(1)..=cfg.bands_max.max(cfg.bands_min.max(1)));
    let bands: Vec<(f64, f64, f64, f64)> = (0..nb)
        .map(|_| {
            (
                rng.random_range(lo..hi),
                rng.random_range(wmin..wmax),
                rng.random_range(0.1..1.0),
                rng.random_range(0.0..1.0),
            )
        })
        .collect();
    let (b0, b1, b2) = (
        rng.random_range(-1.0..1.0),
        rng.random_range(-1.0..1.0),
        rng.random_range(-1.0..1.0),
    );
    let noise = Normal::new(0.0, 1.0).expect("unit normal");
    let mut y: Vec<f64> = x
        .iter()
        .map(|&xi| {
            bands
                .iter()
                .map(|&(c, w, a, eta)| a * band(m, xi, c, w, eta))
                .sum::<f64>()
        })
        .collect();
    let peak = y.iter().copied().fold(0.0, f64::max).max(1e-12);
    for (yi, &xi) in y.iter_mut().zip(&x) {
        let t = (xi - lo) / (hi - lo) * 2.0 - 1.0;
        *yi += cfg.baseline * peak * (b0 + b1 * t + b2 * t * t)
            + cfg.noise * peak * noise.sample(&mut rng);
    }
    Spectrum {
        x,
        y,
        modality: m,
        name: format!("synthetic-{index}"),
        x_units: unit.into(),
        y_units: "ARBITRARY UNITS".into(),
    }
}

/// Write `cfg.n` synthetic spectra as a corpus (source "synthetic").
pub fn write_synth_corpus(
    out: &Path,
    seed: u64,
    cfg: &SynthConfig,
    corpus: &CorpusConfig,
    pb: &ProgressBar,
) -> Result<CorpusReport, SpxError> {
    pb.set_length(cfg.n as u64);
    write_h5(out, |w| {
        let mut cw = CorpusWriter::new(w, corpus)?;
        for i in 0..cfg.n {
            cw.push(&synth_spectrum(seed, i as u64, cfg), 0, -1)?;
            pb.inc(1);
        }
        cw.finish(w, &[format!("synthetic (seed {seed})")], &[])
    })
}

/// A two-instrument toy calibration set (for the demo and tests): `n` samples of `p` channels
/// (NIR-like, 3 analytes with known concentrations), the slave spectra shifted by `shift`
/// channels, scaled by `gain` and offset by `offset` plus noise. Returns (master, slave, y)
/// where y is the first analyte's concentration.
pub fn two_instrument(
    seed: u64,
    n: usize,
    p: usize,
    shift: f64,
    gain: f64,
    offset: f64,
    noise: f64,
) -> (
    ndarray::Array2<f64>,
    ndarray::Array2<f64>,
    ndarray::Array1<f64>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let nz = Normal::new(0.0, 1.0).expect("unit normal");
    let centres = [0.25, 0.5, 0.72];
    let widths = [0.06, 0.09, 0.05];
    let pure = |k: usize, pos: f64| {
        let d = (pos / p as f64 - centres[k]) / widths[k];
        (-0.5 * d * d).exp()
    };
    let conc: Vec<[f64; 3]> = (0..n)
        .map(|_| {
            [
                rng.random_range(0.0..1.0),
                rng.random_range(0.0..1.0),
                rng.random_range(0.0..1.0),
            ]
        })
        .collect();
    let master = ndarray::Array2::from_shape_fn((n, p), |(i, j)| {
        (0..3).map(|k| conc[i][k] * pure(k, j as f64)).sum::<f64>() + 0.1
    });
    let mut slave = ndarray::Array2::from_shape_fn((n, p), |(i, j)| {
        gain * ((0..3)
            .map(|k| conc[i][k] * pure(k, j as f64 + shift))
            .sum::<f64>()
            + 0.1)
            + offset
    });
    slave.mapv_inplace(|v| v + noise * nz.sample(&mut rng));
    let y = conc.iter().map(|c| c[0]).collect();
    (master, slave, y)
}
