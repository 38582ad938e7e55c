//! Synthetic SPHEREx sources with a known spectrum: a power-law continuum with emission lines,
//! a 3.3 µm PAH feature and ice absorptions (H2O 3.05, CO2 4.27, CO 4.67 µm), observed through
//! boxcar filters at the SPHEREx resolving powers with Gaussian noise, some bad-flag rows and
//! isolated glitches.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::grid::{BAND_R, BAND_RANGES, band_of, resolution_width};
use super::{Sampling, SimulateConfig};

/// Emission lines: (centre µm, Gaussian σ µm, peak relative to the continuum at the centre).
pub const LINES: [(f64, f64, f64); 3] = [
    (1.282, 0.004, 2.0),
    (1.875, 0.006, 3.0),
    (4.052, 0.008, 2.5),
];
/// PAH emission: (centre, σ, peak relative to the continuum).
pub const PAH: (f64, f64, f64) = (3.29, 0.017, 0.6);
/// Ice absorptions: (centre, σ, peak optical depth).
pub const ICES: [(f64, f64, f64); 3] = [(3.05, 0.12, 0.6), (4.27, 0.012, 1.0), (4.67, 0.012, 0.6)];

fn gauss(l: f64, c: f64, s: f64) -> f64 {
    (-0.5 * ((l - c) / s).powi(2)).exp()
}

/// The true flux density (µJy) at wavelength `l` (µm).
pub fn truth_flux(l: f64, cfg: &SimulateConfig) -> f64 {
    let cont = |l: f64| cfg.continuum_ujy * (l / 2.0).powf(cfg.alpha);
    let tau: f64 = ICES
        .iter()
        .map(|&(c, s, t)| cfg.ice_scale * t * gauss(l, c, s))
        .sum();
    let pah = cfg.pah_scale * PAH.2 * cont(PAH.0) * gauss(l, PAH.0, PAH.1);
    let lines: f64 = LINES
        .iter()
        .map(|&(c, s, a)| cfg.line_scale * a * cont(c) * gauss(l, c, s))
        .sum();
    (cont(l) + pah) * (-tau).exp() + lines
}

/// Integrated flux (µJy·µm) of emission line `i` of [`LINES`].
pub fn line_integral(i: usize, cfg: &SimulateConfig) -> f64 {
    let (c, s, a) = LINES[i];
    cfg.line_scale
        * a
        * cfg.continuum_ujy
        * (c / 2.0).powf(cfg.alpha)
        * s
        * (2.0 * std::f64::consts::PI).sqrt()
}

/// A simulated row of photometry.
#[derive(Clone, Debug)]
pub struct SimRow {
    pub wavelength: f64,
    pub bandwidth: f64,
    pub flux: f64,
    pub flux_error: f64,
    pub band: u8,
    pub flag: u64,
    /// Noise-free filter-averaged flux.
    pub clean: f64,
}

/// Δν-weighted boxcar mean of the truth over `[c − bw/2, c + bw/2]` (256-point midpoint rule,
/// independent of the reconstruction grid).
pub fn observe(c: f64, bw: f64, cfg: &SimulateConfig) -> f64 {
    let n = 256;
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..n {
        let l = c - 0.5 * bw + bw * (i as f64 + 0.5) / n as f64;
        let w = 1.0 / (l * l);
        num += w * truth_flux(l, cfg);
        den += w;
    }
    num / den
}

/// Draw observations: `random` puts `per_band` centres uniformly in each band; `channels`
/// observes 17 geometrically spaced channels per band once each.
pub fn simulate(cfg: &SimulateConfig, rng: &mut ChaCha8Rng) -> Vec<SimRow> {
    let unit = Normal::new(0.0, 1.0).expect("unit normal");
    let mut rows = Vec::new();
    for (b, &(lo, hi)) in BAND_RANGES.iter().enumerate() {
        let centres: Vec<f64> = match cfg.sampling {
            Sampling::Random => (0..cfg.per_band)
                .map(|_| rng.random_range(lo..hi))
                .collect(),
            Sampling::Channels => (0..17)
                .map(|k| lo * (hi / lo).powf((k as f64 + 0.5) / 17.0))
                .collect(),
        };
        for c in centres {
            let bw = c / BAND_R[b];
            let clean = observe(c, bw, cfg);
            let sigma = cfg.noise_ujy[b];
            rows.push(SimRow {
                wavelength: c,
                bandwidth: bw,
                flux: clean + sigma * unit.sample(rng),
                flux_error: sigma,
                band: b as u8 + 1,
                flag: 1 << 21,
                clean,
            });
        }
    }
    rows.sort_by(|a, b| a.wavelength.total_cmp(&b.wavelength));
    for r in rows.iter_mut() {
        let u: f64 = rng.random();
        if u < cfg.bad_flag_fraction {
            // Hot pixel (bit 0) with a corrupted flux: QC must drop it.
            r.flag |= 1;
            r.flux *= 1.0 + 2.0 * rng.random::<f64>();
        } else if u < cfg.bad_flag_fraction + cfg.glitch_fraction {
            r.flux += 8.0 * r.flux_error;
        }
    }
    rows
}

/// Truth smoothed to the instrument: at each grid pixel the Δν-weighted boxcar mean over one
/// resolution element λ/R, i.e. what a filter centred there would measure.
pub fn smooth_to_resolution(grid: &[f64], x: &[f64]) -> Vec<f64> {
    grid.iter()
        .map(|&l| {
            let (s, n) = super::forward::covered(grid, l, resolution_width(l));
            let (mut num, mut den) = (0.0, 0.0);
            for j in s..s + n.max(1) {
                let w = 1.0 / (grid[j] * grid[j]);
                num += w * x[j];
                den += w;
            }
            num / den
        })
        .collect()
}

/// Integrated emission-line flux (µJy·µm) near `centre`: ∫ (x − continuum) over ±2 resolution
/// elements, continuum a straight line fitted to the sidebands 2–4 elements away.
pub fn measure_line(grid: &[f64], x: &[f64], centre: f64) -> f64 {
    let w = resolution_width(centre);
    let dx = grid[1] - grid[0];
    let (mut sx, mut sy, mut sxx, mut sxy, mut n) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (&l, &v) in grid.iter().zip(x) {
        let d = (l - centre).abs();
        if (2.0 * w..=4.0 * w).contains(&d) {
            sx += l;
            sy += v;
            sxx += l * l;
            sxy += l * v;
            n += 1.0;
        }
    }
    let slope = (n * sxy - sx * sy) / (n * sxx - sx * sx);
    let icpt = (sy - slope * sx) / n;
    grid.iter()
        .zip(x)
        .filter(|(l, _)| (**l - centre).abs() < 2.0 * w)
        .map(|(&l, &v)| (v - (icpt + slope * l)) * dx)
        .sum()
}

/// Relative RMS error of `x` against `truth`, both smoothed to the instrument resolution, over
/// pixels inside `[lo, hi]`.
pub fn relative_rms(grid: &[f64], x: &[f64], truth: &[f64], lo: f64, hi: f64) -> f64 {
    let xs = smooth_to_resolution(grid, x);
    let ts = smooth_to_resolution(grid, truth);
    let (mut num, mut den) = (0.0, 0.0);
    for ((&l, a), t) in grid.iter().zip(&xs).zip(&ts) {
        if l >= lo && l <= hi {
            num += (a - t).powi(2);
            den += t * t;
        }
    }
    (num / den).sqrt()
}

/// Band label of a wavelength ("D1".."D6").
pub fn band_label(l: f64) -> &'static str {
    super::input::BAND_NAMES[band_of(l)]
}
