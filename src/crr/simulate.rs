//! A synthetic LOGRSS file with a known sky: hexagonal bundle (2.5″ pitch, 2″ cores), 3-point
//! dithers, per-wavelength positions with differential atmospheric refraction, a point source
//! and/or a Gaussian blob and/or flat sky seen through the fiber ⊗ double-Gaussian kernel,
//! optional noise and masks.

use ndarray::Array2;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use super::kernel::{KernelModel, disk_gaussian, seeing_at};
use super::rss::Rss;
use super::{CrrConfig, rssbits};
use crate::error::SpxError;
use crate::io::fits::{Card, Column};

pub const FIBER_PITCH: f64 = 2.5;
/// Dither vertices lie 2.5/√3/2·… = 0.833″ from the centre (triangle side 1.44″).
pub const DITHER_RADIUS: f64 = 0.833;

/// Fiber centres (arcsec) of a hexagonal bundle with 1 + 3n(n+1) fibers.
pub fn hex_bundle(nfiber: usize) -> Result<Vec<(f64, f64)>, String> {
    let n = (0..10)
        .find(|&n| 1 + 3 * n * (n + 1) == nfiber)
        .ok_or_else(|| format!("{nfiber} is not a hexagonal number (7, 19, 37, 61, 91, 127)"))?
        as i64;
    let mut out = Vec::new();
    for r in -n..=n {
        for q in -n..=n {
            if (q + r).abs() <= n {
                let x = FIBER_PITCH * (q as f64 + 0.5 * r as f64);
                let y = FIBER_PITCH * (r as f64 * 3f64.sqrt() / 2.0);
                out.push((x, y));
            }
        }
    }
    Ok(out)
}

/// Refractive index of air minus one (Filippenko 1982), λ in Å, P and f in mm Hg, T in °C.
pub fn air_index_minus_one(wave: f64, p: f64, t: f64, f: f64) -> f64 {
    let s2 = (1e4 / wave).powi(2);
    let n0 = (64.328 + 29498.1 / (146.0 - s2) + 255.4 / (41.0 - s2)) * 1e-6;
    let n_pt = n0 * p * (1.0 + (1.049 - 0.0157 * t) * 1e-6 * p) / (720.883 * (1.0 + 0.003661 * t));
    n_pt - (0.0624 - 0.000680 * s2) / (1.0 + 0.003661 * t) * f * 1e-6
}

/// Differential refraction (arcsec) at `wave` relative to 5400 Å (Apache Point conditions).
pub fn dar(wave: f64, airmass: f64) -> f64 {
    if airmass <= 1.0 {
        return 0.0;
    }
    let tanz = (1.0 / airmass).acos().tan();
    let (p, t, f) = (550.0, 5.0, 5.0);
    206265.0 * (air_index_minus_one(wave, p, t, f) - air_index_minus_one(5400.0, p, t, f)) * tanz
}

/// Build the synthetic RSS; deterministic for a given `seed`.
pub fn simulate(cfg: &CrrConfig, seed: u64) -> Result<Rss, SpxError> {
    cfg.validate().map_err(SpxError::Config)?;
    let s = &cfg.simulate;
    let bad = |k: &str, m: String| SpxError::Config(format!("crr.simulate.{k}: {m}"));
    let fibers = hex_bundle(s.nfiber).map_err(|m| bad("nfiber", m))?;
    if s.nexp == 0 || s.nwave < 2 {
        return Err(bad("nexp/nwave", "need nexp ≥ 1 and nwave ≥ 2".into()));
    }
    if s.seeing.is_nan() || s.seeing <= 0.0 {
        return Err(bad("seeing", "must be positive".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0, 1.0).expect("unit normal");
    let (nexp, nfib, nwave) = (s.nexp, fibers.len(), s.nwave);
    let (w0, w1) = (3621.596f64, 10353.805f64);
    let wave: Vec<f64> = (0..nwave)
        .map(|k| w0 * (w1 / w0).powf(k as f64 / (nwave - 1) as f64))
        .collect();
    // Per exposure: dither offset, seeing, parallactic angle of the refraction.
    let mut dith = Vec::new();
    let mut seeing = Vec::new();
    let mut angle = Vec::new();
    for e in 0..nexp {
        let a = std::f64::consts::FRAC_PI_2 + 2.0 * std::f64::consts::PI * (e % 3) as f64 / 3.0;
        dith.push((
            DITHER_RADIUS * a.cos() + s.dither_jitter * normal.sample(&mut rng),
            DITHER_RADIUS * a.sin() + s.dither_jitter * normal.sample(&mut rng),
        ));
        seeing.push((s.seeing * (1.0 + s.seeing_jitter * normal.sample(&mut rng))).max(0.3));
        // The hour angle moves between sets of three.
        angle.push(0.6 * (e / 3) as f64 - 0.9);
    }
    let model = KernelModel {
        fiber_radius: 0.5 * cfg.fiber_diameter,
        convention: cfg.kernel_convention,
    };
    let nrow = nexp * nfib;
    let mut xpos = Array2::<f32>::zeros((nrow, nwave));
    let mut ypos = Array2::<f32>::zeros((nrow, nwave));
    let mut truth = Array2::<f64>::zeros((nrow, nwave));
    let area = std::f64::consts::PI * model.fiber_radius.powi(2);
    let columns: Vec<Vec<(f64, f64, f64)>> = wave
        .par_iter()
        .map(|&wl| {
            let mut col = Vec::with_capacity(nrow);
            for e in 0..nexp {
                let d = dar(wl, s.airmass);
                let (ox, oy) = (
                    dith[e].0 + d * angle[e].cos(),
                    dith[e].1 + d * angle[e].sin(),
                );
                let see = seeing_at(seeing[e], wl, cfg.seeing_ref_wave);
                let g = model.gaussians(see);
                for &(fx, fy) in &fibers {
                    let (x, y) = (fx + ox, fy + oy);
                    let mut f = s.sky * area;
                    if s.point_flux != 0.0 {
                        let r = ((x - s.point_x).powi(2) + (y - s.point_y).powi(2)).sqrt();
                        f += s.point_flux * area * model.direct(r, see);
                    }
                    if s.blob_flux != 0.0 {
                        let r = ((x - s.blob_x).powi(2) + (y - s.blob_y).powi(2)).sqrt();
                        let k: f64 = g
                            .iter()
                            .map(|&(w, sg)| {
                                w * disk_gaussian(
                                    r,
                                    (sg * sg + s.blob_sigma.powi(2)).sqrt(),
                                    model.fiber_radius,
                                )
                            })
                            .sum();
                        f += s.blob_flux * area * k;
                    }
                    col.push((x, y, f));
                }
            }
            col
        })
        .collect();
    for (l, col) in columns.iter().enumerate() {
        for (i, &(x, y, f)) in col.iter().enumerate() {
            xpos[(i, l)] = x as f32;
            ypos[(i, l)] = y as f32;
            truth[(i, l)] = f;
        }
    }
    // Poisson-like noise, variance ∝ flux (paper Eq. 28) plus a floor; S/N `snr` at the peak.
    let fmax = truth.iter().fold(0.0f64, |a, &b| a.max(b)).max(1e-30);
    let snr = if s.snr > 0.0 { s.snr } else { 100.0 };
    let scale = fmax / (snr * snr);
    let mut flux = Array2::<f32>::zeros((nrow, nwave));
    let mut ivar = Array2::<f32>::zeros((nrow, nwave));
    let mut mask = Array2::<i32>::zeros((nrow, nwave));
    for ((i, l), &t) in truth.indexed_iter() {
        let var = scale * (t.max(0.0) + 0.01 * fmax);
        let noise = if s.snr > 0.0 {
            var.sqrt() * normal.sample(&mut rng)
        } else {
            0.0
        };
        flux[(i, l)] = (t + noise) as f32;
        ivar[(i, l)] = (1.0 / var) as f32;
    }
    for _ in 0..s.dead_fibers.min(nfib) {
        let k = rng.random_range(0..nfib);
        for e in 0..nexp {
            for l in 0..nwave {
                mask[(e * nfib + k, l)] |= rssbits::DEADFIBER;
                ivar[(e * nfib + k, l)] = 0.0;
            }
        }
    }
    if s.reject_fraction > 0.0 {
        for m in mask.iter_mut() {
            if rng.random::<f64>() < s.reject_fraction {
                *m |= rssbits::REJECT3D;
            }
        }
    }
    let lsfpost = Array2::from_shape_fn((nrow, nwave), |(_, l)| (wave[l] / 4700.0) as f32);
    let lsfpre = lsfpost.mapv(|v| 1.02 * v);
    let specres: Vec<f64> = wave.iter().map(|w| w / (2.355 * w / 4700.0)).collect();
    let scaled = |f: f64| specres.iter().map(|v| f * v).collect::<Vec<f64>>();
    let resolution = vec![
        ("SPECRES".to_string(), specres.clone()),
        ("SPECRESD".to_string(), scaled(0.05)),
        ("PRESPECRES".to_string(), scaled(0.98)),
        ("PRESPECRESD".to_string(), scaled(0.05)),
    ];
    let obsinfo = vec![
        Column::I64(
            "EXPNUM".into(),
            (0..nexp).map(|e| 100_000 + e as i64).collect(),
        ),
        Column::I64("SET".into(), (0..nexp).map(|e| (e / 3) as i64).collect()),
        Column::Str(
            "MGDPOS".into(),
            (0..nexp)
                .map(|e| ["N", "S", "E"][e % 3].to_string())
                .collect(),
        ),
        Column::F64("SEEING".into(), seeing.clone()),
        Column::F64("PSFFAC".into(), vec![1.0; nexp]),
        Column::F64("MGDRA".into(), dith.iter().map(|d| d.0).collect()),
        Column::F64("MGDDEC".into(), dith.iter().map(|d| d.1).collect()),
        Column::F64("AIRMASS".into(), vec![s.airmass; nexp]),
    ];
    let smin = seeing.iter().copied().fold(f64::MAX, f64::min);
    let smax = seeing.iter().copied().fold(0.0, f64::max);
    let mut sorted = seeing.clone();
    sorted.sort_by(f64::total_cmp);
    let cards = vec![
        ("PLATEIFU".to_string(), Card::from("9999-1901")),
        ("IFUDSGN".to_string(), Card::from("1901")),
        ("OBJRA".to_string(), Card::Float(150.0)),
        ("OBJDEC".to_string(), Card::Float(2.2)),
        ("SEEMIN".to_string(), Card::Float(smin)),
        ("SEEMED".to_string(), Card::Float(sorted[nexp / 2])),
        ("SEEMAX".to_string(), Card::Float(smax)),
        ("AIRMSMIN".to_string(), Card::Float(s.airmass)),
        ("AIRMSMED".to_string(), Card::Float(s.airmass)),
        ("AIRMSMAX".to_string(), Card::Float(s.airmass)),
    ];
    Ok(Rss {
        path: Default::default(),
        nexp,
        nfiber: nfib,
        flux,
        ivar,
        mask,
        xpos,
        ypos,
        lsf: Some((lsfpost, lsfpre)),
        wave,
        resolution,
        psffac: vec![1.0; nexp],
        seeing,
        obsinfo,
        ifura: 150.0,
        ifudec: 2.2,
        cards,
    })
}
