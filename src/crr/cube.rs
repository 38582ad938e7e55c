//! Per-slice reconstruction (G = W f, IVAR, masks, LSF, PSF and correlation at g/r/i/z) and
//! the LOGCUBE-layout output.

use std::path::Path;

use faer::Mat;
use indicatif::ProgressBar;
use ndarray::{Array1, Array2, Array3, Axis, s};
use rayon::prelude::*;

use super::grid::Grid;
use super::kernel::{KernelModel, KernelTable, seeing_at};
use super::quality;
use super::rss::Rss;
use super::shepard::shepard_weights;
use super::weights::{crr_weights, design_matrix};
use super::{BANDS, CrrConfig, Method, cubebits, rssbits};
use crate::error::SpxError;
use crate::io::fits::{self, Card, Column};

/// Sparse correlation matrix of one slice: upper triangle (diagonal included) with |ρ| above
/// the threshold; (C1, C2) = (x, y) index of each spaxel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Correl {
    pub i_c1: Vec<i32>,
    pub i_c2: Vec<i32>,
    pub j_c1: Vec<i32>,
    pub j_c2: Vec<i32>,
    pub rho: Vec<f64>,
}

impl Correl {
    /// The MaNGA xCORREL binary-table columns (shared by cubes and shard parts).
    pub fn columns(&self) -> Vec<Column> {
        vec![
            Column::I32("INDXI_C1".into(), self.i_c1.clone()),
            Column::I32("INDXI_C2".into(), self.i_c2.clone()),
            Column::I32("INDXJ_C1".into(), self.j_c1.clone()),
            Column::I32("INDXJ_C2".into(), self.j_c2.clone()),
            Column::F64("RHOIJ".into(), self.rho.clone()),
        ]
    }
}

impl Correl {
    /// ρ between spaxels (x1, y1) and (x2, y2), 0 if not stored.
    pub fn get(&self, a: (i32, i32), b: (i32, i32)) -> f64 {
        for k in 0..self.rho.len() {
            let p = (self.i_c1[k], self.i_c2[k]);
            let q = (self.j_c1[k], self.j_c2[k]);
            if (p == a && q == b) || (p == b && q == a) {
                return self.rho[k];
            }
        }
        0.0
    }
}

/// Products at a band's pivot slice.
#[derive(Clone, Debug, PartialEq)]
pub struct BandSlice {
    pub band: usize,
    pub index: usize,
    /// Noiseless reconstruction of a unit point source at the IFU centre (per spaxel).
    pub psf: Array2<f64>,
    pub correl: Correl,
}

/// A contiguous block of slices [start, start + n): one shard, or the whole cube.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub start: usize,
    pub flux: Array3<f32>,
    pub ivar: Array3<f32>,
    pub mask: Array3<i32>,
    pub lsf: Option<(Array3<f32>, Array3<f32>)>,
    pub bands: Vec<BandSlice>,
    pub failed: Vec<usize>,
}

struct SliceOut {
    flux: Vec<f32>,
    ivar: Vec<f32>,
    mask: Vec<i32>,
    lsf: Option<(Vec<f32>, Vec<f32>)>,
    band: Option<BandSlice>,
    failed: bool,
}

/// Everything shared by all slices of one cube.
pub struct Builder<'a> {
    pub rss: &'a Rss,
    pub cfg: CrrConfig,
    pub table: KernelTable,
    pub grid: Grid,
    /// Slice index of each band's pivot wavelength.
    pub band_index: [usize; 4],
}

/// A positive, finite number (NaN fails).
fn positive(x: f64) -> bool {
    x > 0.0 && x.is_finite()
}

fn check_cfg(c: &CrrConfig) -> Result<(), SpxError> {
    let bad = |k: &str, m: &str| Err(SpxError::Config(format!("crr.{k}: {m}")));
    if !positive(c.pixel_scale) {
        return bad("pixel_scale", "must be positive");
    }
    if c.lambda.is_nan() || c.lambda < 0.0 {
        return bad("lambda", "must be ≥ 0");
    }
    if !(c.kernel_radius > 0.0 && c.kernel_radius <= 10.0) {
        return bad("kernel_radius", "must be in (0, 10] arcsec");
    }
    if !positive(c.fit_radius) || !positive(c.shepard_rlim) || !positive(c.shepard_sigma) {
        return bad("fit_radius/shepard_*", "must be positive");
    }
    if !positive(c.fiber_diameter) {
        return bad("fiber_diameter", "must be positive");
    }
    Ok(())
}

impl<'a> Builder<'a> {
    pub fn new(rss: &'a Rss, cfg: &CrrConfig) -> Result<Self, SpxError> {
        check_cfg(cfg)?;
        let model = KernelModel {
            fiber_radius: 0.5 * cfg.fiber_diameter,
            convention: cfg.kernel_convention,
        };
        // Tabulate only the seeing this cube needs, plus room for the PSF fits (which find a
        // wider effective seeing than the input).
        let (mut smin, mut smax) = (f64::MAX, 0.0f64);
        for (s, p) in rss.seeing.iter().zip(&rss.psffac) {
            for w in [rss.wave[0], rss.wave[rss.nwave() - 1]] {
                let v = seeing_at(s * p, w, cfg.seeing_ref_wave);
                smin = smin.min(v);
                smax = smax.max(v);
            }
        }
        let table = KernelTable::with_range(model, cfg.kernel_radius, smin - 0.05, 1.6 * smax);
        let max_abs = rss
            .xpos
            .iter()
            .chain(rss.ypos.iter())
            .filter(|v| v.is_finite())
            .fold(0.0f64, |a, &b| a.max(b.abs() as f64));
        let grid = Grid::for_bundle(rss.nfiber, cfg.pixel_scale, cfg.grid_size, max_abs);
        let mut band_index = [0; 4];
        for (b, (_, pivot)) in BANDS.iter().enumerate() {
            band_index[b] = nearest(&rss.wave, *pivot);
        }
        Ok(Builder {
            rss,
            cfg: cfg.clone(),
            table,
            grid,
            band_index,
        })
    }

    pub fn nwave(&self) -> usize {
        self.rss.nwave()
    }

    /// Seeing FWHM of every RSS row at slice `l`.
    pub fn seeing_rows(&self, l: usize) -> Vec<f64> {
        let r = self.rss;
        (0..r.nrow())
            .map(|i| {
                let e = i / r.nfiber;
                seeing_at(
                    r.seeing[e] * r.psffac[e],
                    r.wave[l],
                    self.cfg.seeing_ref_wave,
                )
            })
            .collect()
    }

    /// Mean seeing over exposures at slice `l`.
    pub fn mean_seeing(&self, l: usize) -> f64 {
        let s = self.seeing_rows(l);
        s.iter().sum::<f64>() / s.len() as f64
    }

    /// Per-spaxel / per-fiber unit conversion p²/π (fiber area π arcsec² in the DRP).
    pub fn conversion(&self) -> f64 {
        let rf = 0.5 * self.cfg.fiber_diameter;
        self.grid.pixel.powi(2) / (std::f64::consts::PI * rf * rf)
    }

    /// Positions and good-sample flags of slice `l`.
    pub fn samples(&self, l: usize) -> (Vec<f64>, Vec<f64>, Vec<bool>) {
        let r = self.rss;
        let n = r.nrow();
        let xs: Vec<f64> = (0..n).map(|i| r.xpos[(i, l)] as f64).collect();
        let ys: Vec<f64> = (0..n).map(|i| r.ypos[(i, l)] as f64).collect();
        let good = (0..n)
            .map(|i| {
                let m = r.mask[(i, l)];
                r.ivar[(i, l)] > 0.0
                    && r.ivar[(i, l)].is_finite()
                    && r.flux[(i, l)].is_finite()
                    && xs[i].is_finite()
                    && ys[i].is_finite()
                    && !(self.cfg.reject_3d && m & rssbits::REJECT3D != 0)
            })
            .collect();
        (xs, ys, good)
    }

    /// The weights of slice `l`: (listed pixels, W (npix_listed × nsample)); `None` if the SVD
    /// failed.
    pub fn weights(&self, l: usize) -> Option<(Vec<usize>, Mat<f64>)> {
        let (xs, ys, good) = self.samples(l);
        match self.cfg.method {
            Method::Crr => {
                // The authors keep pixels near any fiber-exposure, masked ones included.
                let fit = self.grid.pixels_near(&xs, &ys, self.cfg.fit_radius);
                let seeing = self.seeing_rows(l);
                let na = design_matrix(&self.table, &self.grid, &fit, &xs, &ys, &seeing, &good);
                let w =
                    crr_weights(na.as_ref(), &good, self.cfg.lambda, self.cfg.sv_cutoff).ok()?;
                Some((fit, w))
            }
            Method::Shepard => {
                let gx: Vec<f64> = (0..xs.len()).filter(|&i| good[i]).map(|i| xs[i]).collect();
                let gy: Vec<f64> = (0..ys.len()).filter(|&i| good[i]).map(|i| ys[i]).collect();
                let pix = self.grid.pixels_near(&gx, &gy, self.cfg.shepard_rlim);
                let w = shepard_weights(
                    &self.grid,
                    &pix,
                    &xs,
                    &ys,
                    &good,
                    self.cfg.shepard_sigma,
                    self.cfg.shepard_rlim,
                );
                Some((pix, w))
            }
        }
    }

    /// Slice `l` with the weights `weights` (computed at `l` or at an equivalent anchor slice).
    fn slice(&self, l: usize, weights: Option<&(Vec<usize>, Mat<f64>)>) -> SliceOut {
        let r = self.rss;
        let npix = self.grid.npix();
        let band = self.band_index.iter().position(|&b| b == l);
        let failed_out = || SliceOut {
            flux: vec![0.0; npix],
            ivar: vec![0.0; npix],
            mask: vec![cubebits::NOCOV | cubebits::DONOTUSE; npix],
            lsf: r.lsf.as_ref().map(|_| (vec![0.0; npix], vec![0.0; npix])),
            band: band.map(|b| BandSlice {
                band: b,
                index: l,
                psf: Array2::zeros((self.grid.nside, self.grid.nside)),
                correl: Correl::default(),
            }),
            failed: true,
        };
        let Some((pix, w)) = weights else {
            return failed_out();
        };
        let (xs, ys, good) = self.samples(l);
        let conv = self.conversion();
        let nsample = xs.len();
        let mut flux = vec![0.0f32; npix];
        let mut ivar = vec![0.0f32; npix];
        let mut mask = vec![cubebits::NOCOV; npix];
        let mut lsf = r
            .lsf
            .as_ref()
            .map(|_| (vec![0.0f32; npix], vec![0.0f32; npix]));
        let mut depth = vec![0.0f64; pix.len()];
        for (row, &j) in pix.iter().enumerate() {
            let (mut g, mut var, mut c) = (0.0, 0.0, 0.0);
            let (mut lw, mut l1, mut l2) = (0.0, 0.0, 0.0);
            for i in 0..nsample {
                if !good[i] {
                    continue;
                }
                let wi = w[(row, i)];
                g += wi * r.flux[(i, l)] as f64;
                var += wi * wi / r.ivar[(i, l)] as f64;
                c += wi * wi;
                if let Some((post, pre)) = &r.lsf {
                    lw += wi.abs();
                    l1 += wi.abs() * post[(i, l)] as f64;
                    l2 += wi.abs() * pre[(i, l)] as f64;
                }
            }
            flux[j] = (g * conv) as f32;
            let v = var * conv * conv;
            ivar[j] = if v > 0.0 { (1.0 / v) as f32 } else { 0.0 };
            mask[j] = 0;
            depth[row] = c;
            if let Some((a, b)) = &mut lsf
                && lw > 0.0
            {
                a[j] = (l1 / lw) as f32;
                b[j] = (l2 / lw) as f32;
            }
        }
        // LOWCOV: unit-noise variance above twice the median, or zero (paper Eq. 25).
        let mut pos: Vec<f64> = depth.iter().copied().filter(|&c| c > 0.0).collect();
        pos.sort_by(f64::total_cmp);
        let median = if pos.is_empty() {
            0.0
        } else if pos.len() % 2 == 1 {
            pos[pos.len() / 2]
        } else {
            0.5 * (pos[pos.len() / 2 - 1] + pos[pos.len() / 2])
        };
        for (row, &j) in pix.iter().enumerate() {
            if depth[row] == 0.0 || depth[row] > 2.0 * median {
                mask[j] |= cubebits::LOWCOV;
            }
        }
        // DEADFIBER: a dead fiber would have contributed (within the fit radius).
        let rl = self.cfg.fit_radius;
        for i in 0..nsample {
            if r.mask[(i, l)] & rssbits::DEADFIBER == 0 || !xs[i].is_finite() {
                continue;
            }
            for j in self.grid.pixels_near(&[xs[i]], &[ys[i]], rl) {
                mask[j] |= cubebits::DEADFIBER;
            }
        }
        for m in mask.iter_mut() {
            if *m & (cubebits::NOCOV | cubebits::LOWCOV) != 0 {
                *m |= cubebits::DONOTUSE;
            }
        }
        let band = band.map(|b| self.band_products(b, l, pix, w, &xs, &ys, &good));
        SliceOut {
            flux,
            ivar,
            mask,
            lsf,
            band,
            failed: false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn band_products(
        &self,
        b: usize,
        l: usize,
        pix: &[usize],
        w: &Mat<f64>,
        xs: &[f64],
        ys: &[f64],
        good: &[bool],
    ) -> BandSlice {
        let r = self.rss;
        let conv = self.conversion();
        let seeing = self.seeing_rows(l);
        let rf = 0.5 * self.cfg.fiber_diameter;
        let area = std::f64::consts::PI * rf * rf;
        // Fiber fluxes of a unit point source at the centre, through the same kernel model.
        let fpsf: Vec<f64> = (0..xs.len())
            .map(|i| area * self.table.eval(xs[i].hypot(ys[i]), seeing[i]))
            .collect();
        let n = self.grid.nside;
        let mut psf = Array2::<f64>::zeros((n, n));
        for (row, &j) in pix.iter().enumerate() {
            let g: f64 = (0..xs.len())
                .filter(|&i| good[i])
                .map(|i| w[(row, i)] * fpsf[i])
                .sum();
            psf[(j / n, j % n)] = g * conv;
        }
        // C = W N Wᵀ over good samples, then ρ.
        let gi: Vec<usize> = (0..xs.len()).filter(|&i| good[i]).collect();
        let wn = Mat::from_fn(pix.len(), gi.len(), |a, k| {
            w[(a, gi[k])] / (r.ivar[(gi[k], l)] as f64).sqrt()
        });
        let c = &wn * wn.transpose();
        let mut correl = Correl::default();
        for a in 0..pix.len() {
            for bb in a..pix.len() {
                let d = (c[(a, a)] * c[(bb, bb)]).sqrt();
                if d <= 0.0 {
                    continue;
                }
                let rho = c[(a, bb)] / d;
                if rho.abs() > self.cfg.corr_threshold {
                    correl.i_c1.push((pix[a] % n) as i32);
                    correl.i_c2.push((pix[a] / n) as i32);
                    correl.j_c1.push((pix[bb] % n) as i32);
                    correl.j_c2.push((pix[bb] / n) as i32);
                    correl.rho.push(rho);
                }
            }
        }
        BandSlice {
            band: b,
            index: l,
            psf,
            correl,
        }
    }

    /// For each slice in [start, end), the slice whose weights it uses. With
    /// `reuse_tolerance` > 0, a slice reuses the weights of the last anchor in its block of
    /// [`REUSE_BLOCK`] slices when the good-sample mask is identical and every position and
    /// seeing differs from the anchor's by at most the tolerance (arcsec). Blocks are aligned to
    /// absolute slice numbers and anchors are replayed from the block start, so a shard makes
    /// the same choices as a one-shot build.
    pub fn anchors(&self, start: usize, end: usize) -> Vec<usize> {
        let tol = self.cfg.reuse_tolerance;
        if tol <= 0.0 {
            return (start..end).collect();
        }
        let mut out = Vec::with_capacity(end - start);
        // (slice, x, y, seeing, good) of the current anchor.
        type Anchor = (usize, Vec<f64>, Vec<f64>, Vec<f64>, Vec<bool>);
        let mut anchor: Option<Anchor> = None;
        let first = (start / REUSE_BLOCK) * REUSE_BLOCK;
        for l in first..end {
            if l % REUSE_BLOCK == 0 {
                anchor = None;
            }
            let (xs, ys, good) = self.samples(l);
            let see = self.seeing_rows(l);
            let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(p, q)| (p - q).abs() <= tol);
            let reuse = match &anchor {
                Some((_, ax, ay, asee, ag)) => {
                    *ag == good && close(ax, &xs) && close(ay, &ys) && close(asee, &see)
                }
                None => false,
            };
            if !reuse {
                anchor = Some((l, xs, ys, see, good));
            }
            if l >= start {
                out.push(anchor.as_ref().map(|a| a.0).unwrap_or(l));
            }
        }
        out
    }

    /// Reconstruct slices [start, end) in parallel (one slice per task; each task holds only
    /// its own W, so memory stays bounded by threads × one slice's matrices).
    pub fn build_range(&self, start: usize, end: usize, pb: &ProgressBar) -> Part {
        let n = self.grid.nside;
        // Group slices by the anchor whose weights they use (each slice its own when reuse is
        // off); groups run in parallel, each holding one W at a time.
        let anchors = self.anchors(start, end);
        let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
        for (k, &a) in anchors.iter().enumerate() {
            match groups.last_mut() {
                Some((ga, v)) if *ga == a => v.push(start + k),
                _ => groups.push((a, vec![start + k])),
            }
        }
        let outs: Vec<SliceOut> = groups
            .into_par_iter()
            .flat_map_iter(|(a, ls)| {
                let w = self.weights(a);
                let outs: Vec<SliceOut> = ls
                    .into_iter()
                    .map(|l| {
                        let o = self.slice(l, w.as_ref());
                        pb.inc(1);
                        o
                    })
                    .collect();
                outs
            })
            .collect();
        let m = end - start;
        let mut flux = Array3::<f32>::zeros((m, n, n));
        let mut ivar = Array3::<f32>::zeros((m, n, n));
        let mut mask = Array3::<i32>::zeros((m, n, n));
        let mut lsf = self.rss.lsf.as_ref().map(|_| {
            (
                Array3::<f32>::zeros((m, n, n)),
                Array3::<f32>::zeros((m, n, n)),
            )
        });
        let mut bands = Vec::new();
        let mut failed = Vec::new();
        for (k, o) in outs.into_iter().enumerate() {
            let put = |dst: &mut Array3<f32>, v: &[f32]| {
                dst.index_axis_mut(Axis(0), k)
                    .assign(&Array2::from_shape_vec((n, n), v.to_vec()).expect("nside²"))
            };
            put(&mut flux, &o.flux);
            put(&mut ivar, &o.ivar);
            mask.index_axis_mut(Axis(0), k)
                .assign(&Array2::from_shape_vec((n, n), o.mask).expect("nside²"));
            if let (Some((a, b)), Some((va, vb))) = (&mut lsf, &o.lsf) {
                put(a, va);
                put(b, vb);
            }
            if let Some(b) = o.band {
                bands.push(b);
            }
            if o.failed {
                failed.push(start + k);
            }
        }
        bands.sort_by_key(|b| b.band);
        Part {
            start,
            flux,
            ivar,
            mask,
            lsf,
            bands,
            failed,
        }
    }
}

/// Slices per block within which weights may be reused (see [`Builder::anchors`]).
pub const REUSE_BLOCK: usize = 64;

pub fn nearest(wave: &[f64], w: f64) -> usize {
    (0..wave.len())
        .min_by(|&a, &b| (wave[a] - w).abs().total_cmp(&(wave[b] - w).abs()))
        .unwrap_or(0)
}

/// Approximate g/r/i/z band edges (Å) for the top-hat band images.
pub const BAND_EDGES: [(f64, f64); 4] = [
    (4000.0, 5500.0),
    (5500.0, 6950.0),
    (6950.0, 8400.0),
    (8400.0, 10000.0),
];

/// Assemble parts covering every slice (in any order) into one.
pub fn join_parts(mut parts: Vec<Part>, nwave: usize) -> Result<Part, String> {
    parts.sort_by_key(|p| p.start);
    let mut next = 0;
    for p in &parts {
        if p.start != next {
            return Err(format!("slices {next}..{} are missing", p.start));
        }
        next += p.flux.dim().0;
    }
    if next != nwave {
        return Err(format!("parts cover {next} of {nwave} slices"));
    }
    let cat3 = |f: &dyn Fn(&Part) -> ndarray::ArrayView3<'_, f32>| {
        let views: Vec<_> = parts.iter().map(f).collect();
        ndarray::concatenate(Axis(0), &views).expect("same spatial shape")
    };
    let flux = cat3(&|p| p.flux.view());
    let ivar = cat3(&|p| p.ivar.view());
    let mviews: Vec<_> = parts.iter().map(|p| p.mask.view()).collect();
    let mask = ndarray::concatenate(Axis(0), &mviews).expect("same spatial shape");
    let lsf = if parts.iter().all(|p| p.lsf.is_some()) {
        Some((
            cat3(&|p| p.lsf.as_ref().expect("checked").0.view()),
            cat3(&|p| p.lsf.as_ref().expect("checked").1.view()),
        ))
    } else {
        None
    };
    let mut bands: Vec<BandSlice> = parts.iter().flat_map(|p| p.bands.clone()).collect();
    bands.sort_by_key(|b| b.band);
    let failed = parts.iter().flat_map(|p| p.failed.clone()).collect();
    Ok(Part {
        start: 0,
        flux,
        ivar,
        mask,
        lsf,
        bands,
        failed,
    })
}

/// Summary of a written cube.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CubeSummary {
    pub nside: usize,
    pub nwave: usize,
    pub failed_slices: usize,
    /// Per band: (name, FWHM ″ of the reconstructed PSF, pseudo-Strehl, total PSF flux).
    pub bands: Vec<(String, f64, f64, f64)>,
}

/// Write the LOGCUBE-layout FITS file from a complete part.
pub fn write_cube(
    path: &Path,
    b: &Builder<'_>,
    cube: &Part,
    config_toml: &str,
) -> Result<CubeSummary, SpxError> {
    let rss = b.rss;
    let n = b.grid.nside;
    let p = b.grid.pixel;
    let nwave = rss.nwave();
    let crpix = (n as f64 + 1.0) / 2.0;
    let spatial: Vec<(&str, Card)> = vec![
        ("CTYPE1", "RA---TAN".into()),
        ("CTYPE2", "DEC--TAN".into()),
        ("CUNIT1", "deg".into()),
        ("CUNIT2", "deg".into()),
        ("CRPIX1", crpix.into()),
        ("CRPIX2", crpix.into()),
        ("CRVAL1", rss.ifura.into()),
        ("CRVAL2", rss.ifudec.into()),
        ("CD1_1", (-p / 3600.0).into()),
        ("CD1_2", 0.0.into()),
        ("CD2_1", 0.0.into()),
        ("CD2_2", (p / 3600.0).into()),
    ];
    let mut cubecards = spatial.clone();
    cubecards.extend([
        ("CTYPE3", Card::from("WAVE-LOG")),
        ("CUNIT3", "Angstrom".into()),
        ("CRPIX3", 1.0.into()),
        ("CRVAL3", rss.wave[0].into()),
        (
            "CD3_3",
            (if nwave > 1 {
                rss.wave[1] - rss.wave[0]
            } else {
                1.0
            })
            .into(),
        ),
        ("HDUCLAS1", "CUBE".into()),
    ]);
    let mut fluxcards = cubecards.clone();
    fluxcards.push(("BUNIT", "1E-17 erg/s/cm^2/Angstrom/spaxel".into()));
    let mut ivarcards = cubecards.clone();
    ivarcards.push(("BUNIT", "1E-34 (erg/s/cm^2/Angstrom/spaxel)^-2".into()));
    let mut maskcards = cubecards.clone();
    maskcards.push(("MASKNAME", "MANGA_DRP3PIXMASK".into()));
    // PSF fits and quality numbers per band.
    let mut summary = CubeSummary {
        nside: n,
        nwave,
        failed_slices: cube.failed.len(),
        bands: Vec::new(),
    };
    let mut band_cards: Vec<(String, f64)> = Vec::new();
    for bs in &cube.bands {
        let name = BANDS[bs.band].0;
        let fit = quality::fit_psf(&bs.psf, &b.grid, &b.table);
        let seeing = b.mean_seeing(bs.index);
        let strehl = quality::pseudo_strehl(&bs.psf, 1.0, &b.grid, &b.table, seeing);
        let total = bs.psf.sum();
        summary
            .bands
            .push((name.to_string(), fit.fwhm, strehl, total));
        band_cards.push((format!("{name}FWHM"), fit.fwhm));
    }
    // Top-hat band images: mean over good slices in each band.
    let images: Vec<Array2<f32>> = BAND_EDGES
        .iter()
        .map(|&(lo, hi)| {
            let mut sum = Array2::<f64>::zeros((n, n));
            let mut cnt = Array2::<f64>::zeros((n, n));
            for (l, &w) in rss.wave.iter().enumerate() {
                if w < lo || w >= hi {
                    continue;
                }
                for ((iy, ix), &v) in cube.flux.slice(s![l, .., ..]).indexed_iter() {
                    if cube.mask[(l, iy, ix)] & cubebits::DONOTUSE == 0 {
                        sum[(iy, ix)] += v as f64;
                        cnt[(iy, ix)] += 1.0;
                    }
                }
            }
            Array2::from_shape_fn((n, n), |ix| {
                if cnt[ix] > 0.0 {
                    (sum[ix] / cnt[ix]) as f32
                } else {
                    0.0
                }
            })
        })
        .collect();
    let failed_list = cube
        .failed
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    fits::write_fits(path, |w| {
        w.primary_card("ORIGIN", "spx crr")?;
        w.primary_card("SPXVERS", env!("CARGO_PKG_VERSION"))?;
        w.primary_card("METHOD", b.cfg.method.name())?;
        w.primary_card("PIXSCALE", p)?;
        w.primary_card("CRRLAMBD", b.cfg.lambda)?;
        w.primary_card("NEXP", rss.nexp as i64)?;
        w.primary_card("IFURA", rss.ifura)?;
        w.primary_card("IFUDEC", rss.ifudec)?;
        let src = rss
            .path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        w.primary_card("INFILE", src)?;
        w.primary_card("NFAILED", cube.failed.len() as i64)?;
        if !failed_list.is_empty() {
            let mut t = failed_list.clone();
            t.truncate(60);
            w.primary_card("FAILSLIC", t)?;
        }
        for (k, v) in &band_cards {
            w.primary_card(k, *v)?;
        }
        w.image_f32("FLUX", &cube.flux.clone().into_dyn(), &fluxcards)?;
        w.image_f32("IVAR", &cube.ivar.clone().into_dyn(), &ivarcards)?;
        w.image_i32("MASK", &cube.mask.clone().into_dyn(), &maskcards)?;
        if let Some((post, pre)) = &cube.lsf {
            let mut c = cubecards.clone();
            c.push(("BUNIT", "Angstrom".into()));
            w.image_f32("LSFPOST", &post.clone().into_dyn(), &c)?;
            w.image_f32("LSFPRE", &pre.clone().into_dyn(), &c)?;
        }
        w.image_f64(
            "WAVE",
            &Array1::from(rss.wave.clone()).into_dyn(),
            &[("BUNIT", "Angstrom".into())],
        )?;
        if let Some(sr) = &rss.specres {
            w.image_f64("SPECRES", &Array1::from(sr.clone()).into_dyn(), &[])?;
        }
        let cols: Vec<Column> = rss
            .obsinfo
            .iter()
            .map(|(nm, v)| Column::F64(nm.clone(), v.clone()))
            .collect();
        w.table("OBSINFO", &cols, &[])?;
        for (bi, img) in images.iter().enumerate() {
            let mut c = spatial.clone();
            c.push(("BUNIT", "1E-17 erg/s/cm^2/Angstrom/spaxel".into()));
            c.push(("BANDLO", BAND_EDGES[bi].0.into()));
            c.push(("BANDHI", BAND_EDGES[bi].1.into()));
            w.image_f32(&format!("{}IMG", BANDS[bi].0), &img.clone().into_dyn(), &c)?;
        }
        for bs in &cube.bands {
            let name = BANDS[bs.band].0;
            let mut c = spatial.clone();
            c.push(("BBWAVE", rss.wave[bs.index].into()));
            c.push(("BBINDEX", (bs.index as i64).into()));
            c.push(("SEEING", b.mean_seeing(bs.index).into()));
            w.image_f64(&format!("{name}PSF"), &bs.psf.clone().into_dyn(), &c)?;
        }
        for bs in &cube.bands {
            let name = BANDS[bs.band].0;
            let cr = &bs.correl;
            w.table(
                &format!("{name}CORREL"),
                &cr.columns(),
                &[
                    ("BBWAVE", rss.wave[bs.index].into()),
                    ("BBINDEX", (bs.index as i64).into()),
                    ("COVTYPE", "Correlation".into()),
                    ("COVSHAPE", format!("({},{})", n * n, n * n).into()),
                ],
            )?;
        }
        let lines: Vec<String> = config_toml.lines().map(str::to_string).collect();
        w.table("CONFIG", &[Column::Str("LINE".into(), lines)], &[])
    })?;
    Ok(summary)
}

/// Output name stem for an input RSS: `manga-8485-1901-LOGRSS.fits.gz` → `manga-8485-1901-CRR`.
pub fn output_stem(input: &Path, method: Method) -> String {
    let name = input
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "rss".into());
    let mut stem = name.as_str();
    for ext in [".gz", ".fits", ".fit"] {
        stem = stem.strip_suffix(ext).unwrap_or(stem);
    }
    let stem = stem
        .strip_suffix("-LOGRSS")
        .or_else(|| stem.strip_suffix("-LINRSS"))
        .unwrap_or(stem);
    format!("{stem}-{}", method.name().to_uppercase())
}
