//! Synthetic SPHEREx sources with a known spectrum, observed through boxcar filters at the
//! SPHEREx resolving powers.
//!
//! Two generator families:
//! - `kind = "default"`: the fixed source the DIP defaults were first tuned on — a power-law
//!   continuum with three emission lines, a 3.3 µm PAH feature and ice absorptions (H2O 3.05,
//!   CO2 4.27, CO 4.67 µm), per-band constant noise, bad-flag rows and isolated glitches; drawn
//!   from the ChaCha8 stream of `--seed`.
//! - `kind = "qso" | "ice" | "star"`: a random source of that kind (quasar power law with broad
//!   and narrow lines at a random redshift; a reddened young-stellar-object continuum with ice
//!   absorptions of random depth and width and PAH emission; one or two blackbodies), drawn from a
//!   separate generator family (xoshiro256++ on a mixed seed), with heteroscedastic errors
//!   σ = U(f₀, f₁)·|flux| + a per-band floor and flagged rows with corrupted fluxes. The DIP's
//!   defaults are judged on these, never tuned on them.

use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::grid::{BAND_R, BAND_RANGES, band_of, resolution_width};
use super::{NoiseModel, Sampling, SimulateConfig, SourceKind};

/// Emission lines of the default source: (centre µm, Gaussian σ µm, peak relative to the
/// continuum at the centre).
pub const LINES: [(f64, f64, f64); 3] = [
    (1.282, 0.004, 2.0),
    (1.875, 0.006, 3.0),
    (4.052, 0.008, 2.5),
];
/// PAH emission of the default source: (centre, σ, peak relative to the continuum).
pub const PAH: (f64, f64, f64) = (3.29, 0.017, 0.6);
/// Ice absorptions of the default source: (centre, σ, peak optical depth).
pub const ICES: [(f64, f64, f64); 3] = [(3.05, 0.12, 0.6), (4.27, 0.012, 1.0), (4.67, 0.012, 0.6)];

/// hc/k in µm·K.
const HC_K: f64 = 14387.77;
/// Speed of light in km/s.
const C_KMS: f64 = 299_792.458;

fn gauss(l: f64, c: f64, s: f64) -> f64 {
    (-0.5 * ((l - c) / s).powi(2)).exp()
}

/// Continuum of a source (µJy).
#[derive(Clone, Debug, PartialEq)]
pub enum Continuum {
    /// `amp · (λ / 2 µm)^alpha`.
    PowerLaw { amp: f64, alpha: f64 },
    /// Σ amp_k · B_ν(λ, T_k) / B_ν(2 µm, T_k), (amp µJy, T K).
    Blackbodies(Vec<(f64, f64)>),
}

impl Continuum {
    pub fn at(&self, l: f64) -> f64 {
        match self {
            Continuum::PowerLaw { amp, alpha } => amp * (l / 2.0).powf(*alpha),
            Continuum::Blackbodies(bbs) => bbs
                .iter()
                .map(|&(a, t)| {
                    let b = |l: f64| l.powi(-3) / (HC_K / (l * t)).exp_m1();
                    a * b(l) / b(2.0)
                })
                .sum(),
        }
    }
}

/// Whether a spectral feature adds flux or absorbs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureKind {
    Emission,
    Absorption,
}

/// A Gaussian feature of a simulated source (listed in `truth.csv` for scoring).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Feature {
    pub kind: FeatureKind,
    /// Centre and Gaussian σ, µm.
    pub centre: f64,
    pub sigma: f64,
    /// Emission: peak relative to the continuum at the centre; absorption: peak optical depth.
    pub strength: f64,
}

/// A source with a known spectrum: `(continuum + PAH-like emission)·exp(−τ) + lines`.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub kind: SourceKind,
    pub continuum: Continuum,
    /// Emission lines (added after extinction).
    pub lines: Vec<Feature>,
    /// Emission features behind the absorbers (PAH).
    pub bands: Vec<Feature>,
    pub absorptions: Vec<Feature>,
}

impl Source {
    /// The default source described by `cfg` (its `continuum_ujy`, `alpha` and feature scales).
    pub fn default_from(cfg: &SimulateConfig) -> Self {
        let f = |kind, (c, s, a): (f64, f64, f64), scale: f64| Feature {
            kind,
            centre: c,
            sigma: s,
            strength: scale * a,
        };
        Source {
            kind: SourceKind::Default,
            continuum: Continuum::PowerLaw {
                amp: cfg.continuum_ujy,
                alpha: cfg.alpha,
            },
            lines: LINES
                .iter()
                .map(|&l| f(FeatureKind::Emission, l, cfg.line_scale))
                .collect(),
            bands: vec![f(FeatureKind::Emission, PAH, cfg.pah_scale)],
            absorptions: ICES
                .iter()
                .map(|&l| f(FeatureKind::Absorption, l, cfg.ice_scale))
                .collect(),
        }
    }

    /// Flux density (µJy) at `l` (µm).
    pub fn flux(&self, l: f64) -> f64 {
        let cont = |l: f64| self.continuum.at(l);
        let tau: f64 = self
            .absorptions
            .iter()
            .map(|a| a.strength * gauss(l, a.centre, a.sigma))
            .sum();
        let bands: f64 = self
            .bands
            .iter()
            .map(|b| b.strength * cont(b.centre) * gauss(l, b.centre, b.sigma))
            .sum();
        let lines: f64 = self
            .lines
            .iter()
            .map(|b| b.strength * cont(b.centre) * gauss(l, b.centre, b.sigma))
            .sum();
        (cont(l) + bands) * (-tau).exp() + lines
    }

    /// Every feature inside `[lo, hi]` µm (lines, PAH, absorptions), sorted by wavelength.
    pub fn features(&self, lo: f64, hi: f64) -> Vec<Feature> {
        let mut v: Vec<Feature> = self
            .lines
            .iter()
            .chain(&self.bands)
            .chain(&self.absorptions)
            .filter(|f| f.centre >= lo && f.centre <= hi)
            .copied()
            .collect();
        v.sort_by(|a, b| a.centre.total_cmp(&b.centre));
        v
    }
}

/// The true flux density (µJy) at wavelength `l` (µm) of the default source.
pub fn truth_flux(l: f64, cfg: &SimulateConfig) -> f64 {
    Source::default_from(cfg).flux(l)
}

/// Integrated flux (µJy·µm) of emission line `i` of [`LINES`] (default source).
pub fn line_integral(i: usize, cfg: &SimulateConfig) -> f64 {
    let (c, s, a) = LINES[i];
    cfg.line_scale
        * a
        * cfg.continuum_ujy
        * (c / 2.0).powf(cfg.alpha)
        * s
        * (2.0 * std::f64::consts::PI).sqrt()
}

/// The generator of the `qso`/`ice`/`star` kinds: xoshiro256++ seeded from a SplitMix-style
/// mix of `seed`, a different family and stream from the ChaCha8 of the default kind.
pub fn kind_rng(seed: u64) -> SmallRng {
    let mut z = seed ^ 0x5350_5845_5249_4e44; // "SPXERIND"
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    SmallRng::seed_from_u64(z ^ (z >> 31))
}

fn log_uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    (rng.random_range(lo.ln()..hi.ln())).exp()
}

/// Draw a random source of `kind` (not `Default`).
pub fn random_source(kind: SourceKind, rng: &mut SmallRng) -> Source {
    let amp = log_uniform(rng, 300.0, 5000.0);
    match kind {
        SourceKind::Default | SourceKind::Qso => {
            // Rest wavelength µm, rest equivalent width range µm, FWHM range km/s.
            const QSO_LINES: [(f64, f64, f64, f64, f64); 8] = [
                (0.2798, 0.002, 0.005, 2500.0, 5000.0), // Mg II
                (0.4340, 0.001, 0.003, 2000.0, 5000.0), // Hγ
                (0.4861, 0.004, 0.010, 2000.0, 5000.0), // Hβ
                (0.5007, 0.001, 0.003, 400.0, 800.0),   // [O III]
                (0.6563, 0.020, 0.050, 2000.0, 5000.0), // Hα
                (1.0830, 0.002, 0.006, 2000.0, 4000.0), // He I
                (1.2818, 0.002, 0.006, 2000.0, 4000.0), // Paβ
                (1.8751, 0.004, 0.012, 2000.0, 4000.0), // Paα
            ];
            let z = rng.random_range(0.2..3.0);
            let lines = QSO_LINES
                .iter()
                .map(|&(rest, ew0, ew1, v0, v1)| {
                    let obs = rest * (1.0 + z);
                    let ew = rng.random_range(ew0..ew1) * (1.0 + z);
                    let sigma = obs * rng.random_range(v0..v1) / C_KMS / 2.3548;
                    Feature {
                        kind: FeatureKind::Emission,
                        centre: obs,
                        sigma,
                        strength: ew / (sigma * (2.0 * std::f64::consts::PI).sqrt()),
                    }
                })
                .filter(|f| f.centre > 0.76 && f.centre < 4.99)
                .collect();
            Source {
                kind: SourceKind::Qso,
                continuum: Continuum::PowerLaw {
                    amp,
                    alpha: rng.random_range(-0.5..1.5),
                },
                lines,
                bands: Vec::new(),
                absorptions: Vec::new(),
            }
        }
        SourceKind::Ice => {
            let abs = |rng: &mut SmallRng, c: f64, s: (f64, f64), t: (f64, f64)| Feature {
                kind: FeatureKind::Absorption,
                centre: c + rng.random_range(-0.01..0.01),
                sigma: rng.random_range(s.0..s.1),
                strength: rng.random_range(t.0..t.1),
            };
            let absorptions = vec![
                abs(rng, 3.05, (0.08, 0.14), (0.3, 1.5)),   // H2O
                abs(rng, 3.47, (0.03, 0.06), (0.02, 0.15)), // 3.47 µm shoulder
                abs(rng, 4.27, (0.008, 0.015), (0.3, 1.5)), // CO2
                abs(rng, 4.67, (0.010, 0.020), (0.1, 0.8)), // CO
            ];
            let bands = vec![Feature {
                kind: FeatureKind::Emission,
                centre: 3.29,
                sigma: rng.random_range(0.012..0.02),
                strength: rng.random_range(0.1..0.6),
            }];
            Source {
                kind: SourceKind::Ice,
                continuum: Continuum::PowerLaw {
                    amp,
                    alpha: rng.random_range(0.5..2.5),
                },
                lines: Vec::new(),
                bands,
                absorptions,
            }
        }
        SourceKind::Star => {
            let t = log_uniform(rng, 3000.0, 20000.0);
            let mut bbs = vec![(amp, t)];
            if rng.random::<f64>() < 0.5 {
                // A warm dust excess: 10–100 % of the star at 5 µm.
                let td = rng.random_range(500.0..1200.0);
                let star5 = Continuum::Blackbodies(vec![(amp, t)]).at(5.0);
                let unit5 = Continuum::Blackbodies(vec![(1.0, td)]).at(5.0);
                bbs.push((rng.random_range(0.1..1.0) * star5 / unit5, td));
            }
            Source {
                kind: SourceKind::Star,
                continuum: Continuum::Blackbodies(bbs),
                lines: Vec::new(),
                bands: Vec::new(),
                absorptions: Vec::new(),
            }
        }
    }
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

/// Δν-weighted boxcar mean of `f` over `[c − bw/2, c + bw/2]` (512-point midpoint rule,
/// independent of the reconstruction grid).
pub fn boxcar_mean(c: f64, bw: f64, f: impl Fn(f64) -> f64) -> f64 {
    let n = 512;
    let (mut num, mut den) = (0.0, 0.0);
    for i in 0..n {
        let l = c - 0.5 * bw + bw * (i as f64 + 0.5) / n as f64;
        let w = 1.0 / (l * l);
        num += w * f(l);
        den += w;
    }
    num / den
}

/// Filter-averaged flux of the default source.
pub fn observe(c: f64, bw: f64, cfg: &SimulateConfig) -> f64 {
    let s = Source::default_from(cfg);
    boxcar_mean(c, bw, |l| s.flux(l))
}

fn centres(cfg: &SimulateConfig, rng: &mut impl RngCore, b: usize) -> Vec<f64> {
    let (lo, hi) = BAND_RANGES[b];
    match cfg.sampling {
        Sampling::Random => (0..cfg.per_band)
            .map(|_| rng.random_range(lo..hi))
            .collect(),
        Sampling::Channels => (0..17)
            .map(|k| lo * (hi / lo).powf((k as f64 + 0.5) / 17.0))
            .collect(),
    }
}

/// Observe `src`: centres per band (`sampling`), boxcar fluxes, noise per `cfg.noise`, then
/// bad-flag rows (bit 0, flux corrupted) and isolated +8σ glitches. Rows sorted by wavelength.
pub fn observe_source(src: &Source, cfg: &SimulateConfig, rng: &mut impl RngCore) -> Vec<SimRow> {
    let unit = Normal::new(0.0, 1.0).expect("unit normal");
    let mut rows = Vec::new();
    for (b, &r) in BAND_R.iter().enumerate() {
        for c in centres(cfg, rng, b) {
            let bw = c / r;
            let clean = boxcar_mean(c, bw, |l| src.flux(l));
            let sigma = match cfg.noise {
                NoiseModel::Band => cfg.noise_ujy[b],
                NoiseModel::Relative => {
                    let (f0, f1) = (cfg.noise_fraction[0], cfg.noise_fraction[1]);
                    let f = if f1 > f0 {
                        rng.random_range(f0..f1)
                    } else {
                        f0
                    };
                    f * clean.abs() + cfg.noise_floor_ujy[b]
                }
            };
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

/// Draw observations of the default source from `rng` (the `--seed` ChaCha8 stream).
pub fn simulate(cfg: &SimulateConfig, rng: &mut ChaCha8Rng) -> Vec<SimRow> {
    observe_source(&Source::default_from(cfg), cfg, rng)
}

/// The source and rows of `cfg.kind` for `seed`: the default kind from the ChaCha8 stream `rng`,
/// the other kinds from [`kind_rng`]`(seed)`.
pub fn simulate_kind(
    cfg: &SimulateConfig,
    seed: u64,
    rng: &mut ChaCha8Rng,
) -> (Source, Vec<SimRow>) {
    match cfg.kind {
        SourceKind::Default => {
            let s = Source::default_from(cfg);
            let rows = observe_source(&s, cfg, rng);
            (s, rows)
        }
        kind => {
            let mut r = kind_rng(seed);
            let s = random_source(kind, &mut r);
            let rows = observe_source(&s, cfg, &mut r);
            (s, rows)
        }
    }
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

/// Half-width (µm) of the window over which a feature is measured: two resolution elements, or
/// 2.5 σ of the feature when it is wider.
pub fn feature_half_width(centre: f64, sigma: f64) -> f64 {
    (2.0 * resolution_width(centre)).max(2.5 * sigma)
}

/// Integrated feature flux (µJy·µm) near `centre` over ±`half`: ∫ (x − continuum), continuum a
/// straight line fitted to the sidebands `half`..2·`half` away. Negative for absorptions.
pub fn measure_feature(grid: &[f64], x: &[f64], centre: f64, half: f64) -> f64 {
    let dx = grid[1] - grid[0];
    let (slope, icpt) = sideband_line(grid, x, centre, half);
    grid.iter()
        .zip(x)
        .filter(|(l, _)| (**l - centre).abs() < half)
        .map(|(&l, &v)| (v - (icpt + slope * l)) * dx)
        .sum()
}

/// Largest |x − continuum| within one resolution element of `centre` (signed: positive for an
/// emission peak, negative for an absorption trough), continuum as in [`measure_feature`].
pub fn feature_peak(grid: &[f64], x: &[f64], centre: f64, half: f64) -> f64 {
    let (slope, icpt) = sideband_line(grid, x, centre, half);
    let w = resolution_width(centre);
    grid.iter()
        .zip(x)
        .filter(|(l, _)| (**l - centre).abs() <= w)
        .map(|(&l, &v)| v - (icpt + slope * l))
        .fold(0.0, |a: f64, d| if d.abs() > a.abs() { d } else { a })
}

fn sideband_line(grid: &[f64], x: &[f64], centre: f64, half: f64) -> (f64, f64) {
    let (mut sx, mut sy, mut sxx, mut sxy, mut n) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (&l, &v) in grid.iter().zip(x) {
        let d = (l - centre).abs();
        if (half..=2.0 * half).contains(&d) {
            sx += l;
            sy += v;
            sxx += l * l;
            sxy += l * v;
            n += 1.0;
        }
    }
    let det = n * sxx - sx * sx;
    if n < 2.0 || det.abs() < 1e-300 {
        return (0.0, if n > 0.0 { sy / n } else { 0.0 });
    }
    let slope = (n * sxy - sx * sy) / det;
    (slope, (sy - slope * sx) / n)
}

/// Integrated emission-line flux (µJy·µm) near `centre`: ∫ (x − continuum) over ±2 resolution
/// elements, continuum a straight line fitted to the sidebands 2–4 elements away.
pub fn measure_line(grid: &[f64], x: &[f64], centre: f64) -> f64 {
    measure_feature(grid, x, centre, 2.0 * resolution_width(centre))
}

/// Relative RMS error of `x` as given against `truth` smoothed to the instrument resolution
/// (the smoothed truth is the best any reconstruction can do), over pixels inside `[lo, hi]`.
pub fn relative_rms_written(grid: &[f64], x: &[f64], truth: &[f64], lo: f64, hi: f64) -> f64 {
    rms_ratio(grid, x, &smooth_to_resolution(grid, truth), lo, hi)
}

/// Relative RMS error of `x` against `truth`, both smoothed to the instrument resolution, over
/// pixels inside `[lo, hi]` (hides structure finer than λ/R in `x`).
pub fn relative_rms(grid: &[f64], x: &[f64], truth: &[f64], lo: f64, hi: f64) -> f64 {
    let xs = smooth_to_resolution(grid, x);
    rms_ratio(grid, &xs, &smooth_to_resolution(grid, truth), lo, hi)
}

fn rms_ratio(grid: &[f64], x: &[f64], t: &[f64], lo: f64, hi: f64) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for ((&l, a), t) in grid.iter().zip(x).zip(t) {
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
