//! Ptychography simulator: lines object, disk probe, random scan, bilinear sub-pixel patches,
//! far-field diffraction scaled to a mean photon count per pattern, seeded Poisson noise
//! (PtychoPINN `diffsim.illuminate_and_diffract`, `nongrid_simulation`), with no global state.
//!
//! Stored amplitudes follow the reference: `diff3d = sqrt(counts) / photon_scale`, a
//! dose-independent scale (only the noise differs between doses); `photon_scale` is written
//! alongside so counts = (diff3d · photon_scale)².

use std::path::Path;

use indicatif::ProgressBar;
use ndarray::{Array1, Array2, Array3, Axis};
use num_complex::{Complex32, Complex64};
use rand::seq::SliceRandom;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Poisson};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::data::RawData;
use super::fft::{Fft2, far_field_intensity};
use super::object::lines_object;
use super::probe::default_probe;
use crate::error::SpxError;
use crate::io::npz::NpzArray;
use crate::io::plot;

/// Detector noise model.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Noise {
    Poisson,
    None,
}

/// Scan pattern of the simulator.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scan {
    /// Uniformly random positions (PtychoPINN `nongrid_simulation`).
    #[default]
    Random,
    /// PtychoPINN's grid mode (the paper's dose study): groups of `grid_size`² positions on a
    /// square of side `(grid_size − 1)·grid_step`, group centres on a lattice of pitch
    /// `grid_pitch`; stored group after group (members row-major), groups in seeded random
    /// order, so any leading range of whole groups is a random subset of the lattice.
    Grid,
}

/// `[ptycho.simulate]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub n: usize,
    pub object_size: usize,
    pub nlines: usize,
    pub object_phase: f64,
    pub probe_scale: f64,
    pub n_positions: usize,
    pub buffer: f64,
    #[serde(default)]
    pub scan: Scan,
    /// Grid scan: members per group side (PtychoPINN gridsize).
    #[serde(default = "default_grid_size")]
    pub grid_size: usize,
    /// Grid scan: spacing of a group's members in pixels; 0 = N/16 (reference `offset` 4 at N 64).
    #[serde(default)]
    pub grid_step: f64,
    /// Grid scan: lattice pitch of the group centres in pixels; 0 = N/8 (reference
    /// `outer_offset_train` 8 at N 64).
    #[serde(default)]
    pub grid_pitch: f64,
    /// Grid scan: shift of the lattice along x and y in pixels (the dose study's held-out scan
    /// is the training lattice shifted by half a pitch).
    #[serde(default)]
    pub grid_phase: f64,
    pub nphotons: f64,
    pub noise: Noise,
    pub save_patches: bool,
    pub plot: bool,
}

fn default_grid_size() -> usize {
    2
}

impl SimConfig {
    /// (member spacing, lattice pitch) of a grid scan in pixels, defaults resolved.
    pub fn grid_geometry(&self) -> (f64, f64) {
        let or = |v: f64, d: f64| if v > 0.0 { v } else { d };
        let n = self.n as f64;
        (or(self.grid_step, n / 16.0), or(self.grid_pitch, n / 8.0))
    }

    fn validate(&self) -> Result<(), SpxError> {
        let bad = |k: &str, m: &str| Err(SpxError::Config(format!("ptycho.simulate.{k} {m}")));
        if self.n < 2 {
            return bad("n", "must be >= 2");
        }
        if self.object_size < 4 {
            return bad("object_size", "must be >= 4");
        }
        if self.n_positions == 0 {
            return bad("n_positions", "must be >= 1");
        }
        if !(self.nphotons.is_finite() && self.nphotons > 0.0) {
            return bad("nphotons", "must be finite and > 0");
        }
        if !(self.probe_scale.is_finite() && self.probe_scale > 0.0) {
            return bad("probe_scale", "must be finite and > 0");
        }
        if !(self.buffer.is_finite() && self.buffer >= 0.0) {
            return bad("buffer", "must be finite and >= 0");
        }
        if !self.object_phase.is_finite() {
            return bad("object_phase", "must be finite");
        }
        if self.scan == Scan::Grid {
            let (step, pitch) = self.grid_geometry();
            if self.grid_size == 0 {
                return bad("grid_size", "must be >= 1");
            }
            if !(step.is_finite() && pitch.is_finite() && step >= 0.0 && pitch > 0.0) {
                return bad("grid_pitch", "and grid_step must be finite, pitch > 0");
            }
            if !(self.grid_phase.is_finite() && self.grid_phase >= 0.0) {
                return bad("grid_phase", "must be finite and >= 0");
            }
            if self.n_positions < self.grid_size * self.grid_size {
                return bad(
                    "n_positions",
                    "must hold at least one grid group (grid_size² positions)",
                );
            }
        }
        Ok(())
    }
}

/// A simulated scan with its ground truth.
#[derive(Clone, Debug)]
pub struct Simulated {
    /// Positions, amplitudes `diff3d`, probe and `objectGuess` (the true object).
    pub raw: RawData,
    pub nphotons: f64,
    /// s with counts = (diff3d · s)²; s² · mean_i Σ|P·O_i|² = nphotons.
    pub photon_scale: f64,
    /// Mean over patterns of the total count (expected: nphotons).
    pub mean_counts: f64,
    /// True object patches O_i (no probe), (n, N, N), when requested.
    pub patches: Option<Array3<Complex32>>,
}

/// PtychoPINN's random scan: x ~ U(b, W−b) for all positions, then y ~ U(b, H−b), with the
/// buffer b capped at min(H, W)/2 − 1.
pub fn scan_positions(
    h: usize,
    w: usize,
    n: usize,
    buffer: f64,
    rng: &mut impl Rng,
) -> (Vec<f64>, Vec<f64>) {
    let b = buffer.min(h.min(w) as f64 / 2.0 - 1.0).max(0.0);
    let mut draw = |len: usize| -> Vec<f64> {
        (0..n)
            .map(|_| b + rng.random::<f64>() * (len as f64 - 2.0 * b))
            .collect()
    };
    let x = draw(w);
    let y = draw(h);
    (x, y)
}

/// PtychoPINN's grid scan on an h×w object: group centres on a lattice of pitch `pitch`
/// covering [b + r, len − b − r] (b = buffer capped at min(h, w)/2 − 1, r = half the group's
/// side), each group `g`² members at centre + (j − (g−1)/2, i − (g−1)/2)·`step`, row-major.
/// The lattice is centred in that range, then shifted by `phase` (points past the range are
/// dropped). Groups are shuffled with `rng` and stored one after the other; at most
/// `max_positions` positions (whole groups) are kept. Errors when there is room for no group.
pub fn grid_positions(
    h: usize,
    w: usize,
    (g, step, pitch, phase): (usize, f64, f64, f64),
    buffer: f64,
    max_positions: usize,
    rng: &mut impl Rng,
) -> Result<(Vec<f64>, Vec<f64>), SpxError> {
    let b = buffer.min(h.min(w) as f64 / 2.0 - 1.0).max(0.0);
    let r = (g as f64 - 1.0) * step / 2.0;
    let axis = |len: usize| -> Vec<f64> {
        let (lo, hi) = (b + r, len as f64 - b - r);
        let count = if hi >= lo {
            ((hi - lo) / pitch).floor() as usize + 1
        } else {
            0
        };
        // centre the lattice in the allowed range
        let start = lo + (hi - lo - (count.max(1) - 1) as f64 * pitch) / 2.0 + phase;
        (0..count)
            .map(|k| start + k as f64 * pitch)
            .filter(|&v| v <= hi + 1e-9)
            .collect()
    };
    let (cy, cx) = (axis(h), axis(w));
    let mut centres: Vec<(f64, f64)> = cy
        .iter()
        .flat_map(|&y| cx.iter().map(move |&x| (x, y)))
        .collect();
    if centres.is_empty() {
        return Err(SpxError::Config(format!(
            "ptycho.simulate.object_size {h}×{w} has no room for a grid group \
             (buffer {buffer}, grid_step {step})"
        )));
    }
    centres.shuffle(rng);
    let keep = (max_positions / (g * g)).min(centres.len());
    let (mut x, mut y) = (vec![], vec![]);
    for &(ox, oy) in &centres[..keep] {
        for i in 0..g {
            for j in 0..g {
                x.push(ox + (j as f64 - (g as f64 - 1.0) / 2.0) * step);
                y.push(oy + (i as f64 - (g as f64 - 1.0) / 2.0) * step);
            }
        }
    }
    Ok((x, y))
}

/// N×N patch centred on (x, y) = (column, row): `patch[i, j] = O(y − N/2 + i, x − N/2 + j)`,
/// bilinear between pixels, zero outside the object.
pub fn extract_patch(obj: &Array2<Complex32>, x: f64, y: f64, n: usize) -> Array2<Complex64> {
    let (h, w) = obj.dim();
    let top = y - (n / 2) as f64;
    let left = x - (n / 2) as f64;
    let (r0, c0) = (top.floor(), left.floor());
    let (fr, fc) = (top - r0, left - c0);
    let (r0, c0) = (r0 as i64, c0 as i64);
    let (w00, w01, w10, w11) = (
        (1.0 - fr) * (1.0 - fc),
        (1.0 - fr) * fc,
        fr * (1.0 - fc),
        fr * fc,
    );
    let cv = |v: Complex32| Complex64::new(f64::from(v.re), f64::from(v.im));
    // Fast path: the patch and its +1 neighbours lie inside the object (the usual case).
    if let Some(s) = obj.as_slice()
        && r0 >= 0
        && c0 >= 0
        && (r0 as usize) + n < h
        && (c0 as usize) + n < w
    {
        let (r0, c0) = (r0 as usize, c0 as usize);
        return Array2::from_shape_fn((n, n), |(i, j)| {
            let k = (r0 + i) * w + c0 + j;
            cv(s[k]) * w00 + cv(s[k + 1]) * w01 + cv(s[k + w]) * w10 + cv(s[k + w + 1]) * w11
        });
    }
    let at = |r: i64, c: i64| -> Complex64 {
        if r < 0 || c < 0 || r >= h as i64 || c >= w as i64 {
            Complex64::new(0.0, 0.0)
        } else {
            cv(obj[[r as usize, c as usize]])
        }
    };
    Array2::from_shape_fn((n, n), |(i, j)| {
        let (r, c) = (r0 + i as i64, c0 + j as i64);
        at(r, c) * w00 + at(r, c + 1) * w01 + at(r + 1, c) * w10 + at(r + 1, c + 1) * w11
    })
}

/// Exit wave ψ = P · O_patch.
pub fn exit_wave(probe: &Array2<Complex32>, patch: &Array2<Complex64>) -> Array2<Complex64> {
    ndarray::Zip::from(probe)
        .and(patch)
        .map_collect(|p, o| Complex64::new(f64::from(p.re), f64::from(p.im)) * o)
}

/// The detector: mean expected photons per pattern, noise model and the noise seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detector {
    pub nphotons: f64,
    pub noise: Noise,
    pub seed: u64,
}

/// Diffraction amplitudes for the given object, probe and positions (the physics, without the
/// random object/scan). Returns (diff3d, photon_scale, mean total count per pattern).
pub fn diffract(
    object: &Array2<Complex32>,
    probe: &Array2<Complex32>,
    x: &[f64],
    y: &[f64],
    det: &Detector,
    pb: &ProgressBar,
) -> (Array3<f32>, f64, f64) {
    let Detector {
        nphotons,
        noise,
        seed: noise_seed,
    } = *det;
    let n = probe.nrows();
    let m = x.len();
    let energy: Vec<f64> = (0..m)
        .into_par_iter()
        .map(|i| {
            exit_wave(probe, &extract_patch(object, x[i], y[i], n))
                .iter()
                .map(|v| v.norm_sqr())
                .sum()
        })
        .collect();
    let mean_energy = energy.iter().sum::<f64>() / m as f64;
    let s2 = if mean_energy > 0.0 {
        nphotons / mean_energy
    } else {
        1.0
    };
    let s = s2.sqrt();
    let plan = Fft2::new(n);
    let mut out = Array3::<f32>::zeros((m, n, n));
    let totals: Vec<f64> = out
        .axis_iter_mut(Axis(0))
        .into_par_iter()
        .enumerate()
        .map(|(i, mut dst)| {
            let psi = exit_wave(probe, &extract_patch(object, x[i], y[i], n));
            let intensity = far_field_intensity(&plan, &psi);
            // One independent stream per pattern: the result does not depend on threading.
            let mut rng = ChaCha8Rng::seed_from_u64(noise_seed);
            rng.set_stream(i as u64);
            let mut total = 0.0;
            for (d, &v) in dst.iter_mut().zip(intensity.iter()) {
                let lambda = s2 * v;
                let counts = match noise {
                    Noise::None => lambda,
                    Noise::Poisson if lambda > 0.0 => Poisson::new(lambda)
                        .map(|p| p.sample(&mut rng))
                        .unwrap_or(lambda.round()),
                    Noise::Poisson => 0.0,
                };
                total += counts;
                *d = (counts.sqrt() / s) as f32;
            }
            pb.inc(1);
            total
        })
        .collect();
    let mean_counts = totals.iter().sum::<f64>() / m as f64;
    (out, s, mean_counts)
}

/// Simulate a scan from `cfg` and `seed` (same seed → identical output).
pub fn simulate(cfg: &SimConfig, seed: u64, pb: &ProgressBar) -> Result<Simulated, SpxError> {
    cfg.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let object = lines_object(cfg.object_size, cfg.nlines, cfg.object_phase, &mut rng);
    let probe = default_probe(cfg.n, cfg.probe_scale);
    let (x, y) = match cfg.scan {
        Scan::Random => scan_positions(
            cfg.object_size,
            cfg.object_size,
            cfg.n_positions,
            cfg.buffer,
            &mut rng,
        ),
        Scan::Grid => {
            let (step, pitch) = cfg.grid_geometry();
            grid_positions(
                cfg.object_size,
                cfg.object_size,
                (cfg.grid_size, step, pitch, cfg.grid_phase),
                cfg.buffer,
                cfg.n_positions,
                &mut rng,
            )?
        }
    };
    let m = x.len();
    let det = Detector {
        nphotons: cfg.nphotons,
        noise: cfg.noise,
        seed: rng.next_u64(),
    };
    pb.set_length(m as u64);
    let (diffraction, photon_scale, mean_counts) = diffract(&object, &probe, &x, &y, &det, pb);
    let patches = cfg.save_patches.then(|| {
        let n = cfg.n;
        let mut p = Array3::<Complex32>::zeros((x.len(), n, n));
        p.axis_iter_mut(Axis(0))
            .into_par_iter()
            .enumerate()
            .for_each(|(i, mut dst)| {
                let patch = extract_patch(&object, x[i], y[i], n);
                dst.zip_mut_with(&patch, |d, s| *d = Complex32::new(s.re as f32, s.im as f32));
            });
        p
    });
    let (xs, ys) = (Array1::from(x), Array1::from(y));
    Ok(Simulated {
        raw: RawData {
            xcoords_start: xs.clone(),
            ycoords_start: ys.clone(),
            xcoords: xs,
            ycoords: ys,
            scan_index: Array1::zeros(m),
            diffraction,
            probe,
            object: Some(object),
            diffraction_key: "diff3d".into(),
            transposed: false,
            had_metadata: false,
            metadata: None,
        },
        nphotons: cfg.nphotons,
        photon_scale,
        mean_counts,
        patches,
    })
}

/// A grid scan's training and held-out scans (the dose study's split): the training scan is
/// the lattice (at most `n_first` positions, whole groups, a seeded random subset of the
/// lattice's groups), the held-out scan the same lattice shifted by half a pitch along x and y
/// (at most `n_second` positions) — new positions on the same object (same seed, so the same
/// object and probe; checked), covering it as densely as the training scan.
pub fn grid_split(
    cfg: &SimConfig,
    seed: u64,
    (n_first, n_second): (usize, usize),
    pb: &ProgressBar,
) -> Result<(Simulated, Simulated), SpxError> {
    let (_, pitch) = cfg.grid_geometry();
    let mut first = cfg.clone();
    first.n_positions = n_first;
    let mut second = cfg.clone();
    second.n_positions = n_second;
    second.grid_phase += pitch / 2.0;
    let train = simulate(&first, seed, pb)?;
    let test = simulate(&second, seed, pb)?;
    if train.raw.object != test.raw.object {
        return Err(SpxError::Config(
            "grid split: the held-out scan's object differs from the training scan's".into(),
        ));
    }
    Ok((train, test))
}

impl Simulated {
    /// NPZ in the loader's contract plus `nphotons`, `photon_scale` (0-d float64) and `Y`.
    /// The positions `range` of this scan as a scan of its own (same object, probe and dose):
    /// e.g. training and held-out test positions of one simulation.
    pub fn select(&self, range: std::ops::Range<usize>) -> Simulated {
        use ndarray::{Axis, s};
        let r = &self.raw;
        let raw = RawData {
            xcoords: r.xcoords.slice(s![range.clone()]).to_owned(),
            ycoords: r.ycoords.slice(s![range.clone()]).to_owned(),
            xcoords_start: r.xcoords_start.slice(s![range.clone()]).to_owned(),
            ycoords_start: r.ycoords_start.slice(s![range.clone()]).to_owned(),
            diffraction: r
                .diffraction
                .slice_axis(Axis(0), range.clone().into())
                .to_owned(),
            scan_index: r.scan_index.slice(s![range.clone()]).to_owned(),
            ..r.clone()
        };
        let s2 = self.photon_scale * self.photon_scale;
        let counts: f64 = raw
            .diffraction
            .iter()
            .map(|v| (*v as f64).powi(2) * s2)
            .sum();
        Simulated {
            mean_counts: counts / range.len().max(1) as f64,
            patches: self
                .patches
                .as_ref()
                .map(|p| p.slice_axis(Axis(0), range.clone().into()).to_owned()),
            raw,
            nphotons: self.nphotons,
            photon_scale: self.photon_scale,
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), SpxError> {
        let mut extra = vec![
            (
                "nphotons",
                NpzArray::F64(ndarray::arr0(self.nphotons).into_dyn()),
            ),
            (
                "photon_scale",
                NpzArray::F64(ndarray::arr0(self.photon_scale).into_dyn()),
            ),
        ];
        if let Some(p) = &self.patches {
            extra.push(("Y", NpzArray::C64(p.clone().into_dyn())));
        }
        self.raw.save(path, extra)
    }

    /// Overview PNG: object amplitude and phase, probe amplitude, scan positions and the first two
    /// diffraction patterns as log10(counts + 1).
    pub fn plot(&self, path: &Path) -> Result<(), SpxError> {
        let obj = self
            .raw
            .object
            .as_ref()
            .expect("simulation keeps its object");
        let (h, w) = obj.dim();
        let mut scan = Array2::<f64>::zeros((h, w));
        for (&x, &y) in self.raw.xcoords.iter().zip(&self.raw.ycoords) {
            let (r, c) = (y.round() as i64, x.round() as i64);
            for (dr, dc) in [(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0)] {
                let (rr, cc) = (r + dr, c + dc);
                if rr >= 0 && cc >= 0 && (rr as usize) < h && (cc as usize) < w {
                    scan[[rr as usize, cc as usize]] += 1.0;
                }
            }
        }
        let mut panels = vec![
            plot::Panel::new(
                "object |O|",
                obj.mapv(|c| f64::from(c.norm())),
                plot::ColorMap::Gray,
            ),
            plot::Panel {
                limits: Some((-std::f64::consts::PI, std::f64::consts::PI)),
                ..plot::Panel::new(
                    "object phase [rad]",
                    obj.mapv(|c| f64::from(c.arg())),
                    plot::ColorMap::Phase,
                )
            },
            plot::Panel::new(
                "probe |P|",
                self.raw.probe.mapv(|c| f64::from(c.norm())),
                plot::ColorMap::Viridis,
            ),
            plot::Panel::new(
                format!("scan positions (n = {})", self.raw.xcoords.len()),
                scan.mapv(|v| v.min(3.0)),
                plot::ColorMap::Gray,
            ),
        ];
        for i in 0..self.raw.diffraction.dim().0.min(2) {
            let d = self.raw.diffraction.index_axis(Axis(0), i);
            let s = self.photon_scale;
            panels.push(plot::Panel::new(
                format!("pattern {i}: log10(counts + 1)"),
                d.mapv(|a| (f64::from(a) * s).powi(2).ln_1p() / std::f64::consts::LN_10),
                plot::ColorMap::Viridis,
            ));
        }
        plot::image_grid(
            path,
            &plot::ImageGrid {
                title: format!(
                    "spx ptycho simulate: N = {}, {:.3e} photons/pattern",
                    self.raw.n(),
                    self.nphotons
                ),
                panels,
                ncols: 3,
                cell: (420, 400),
            },
        )
    }
}
