//! Per-slice reconstruction: G = W f, IVAR, masks, LSF, and the PSF and correlation products at
//! the g/r/i/z pivot slices, for a block of slices (a [`Part`]: one shard, or the whole cube).
//! The LOGCUBE file is written by [`super::logcube`].

use faer::Mat;
use indicatif::ProgressBar;
use ndarray::{Array2, Array3, Axis};
use rayon::prelude::*;

use super::grid::Grid;
use super::kernel::{KernelModel, KernelTable, seeing_at};
use super::quality::Correl;
use super::rss::Rss;
use super::shepard::shepard_weights;
use super::weights::{Workspace, crr_weights, design_matrix};
use super::{BANDS, CrrConfig, Method, cubebits, rssbits};
use crate::error::SpxError;

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
    /// Slices whose weights could not be computed (SVD/EVD failure).
    pub failed: Vec<usize>,
    /// Slices without a single usable sample.
    pub empty: Vec<usize>,
    /// Weight reuse: the largest estimated |flux(reused) − flux(exact)| ([`REUSE_SAFETY`] ×
    /// the first-order estimate) of a slice that kept reused weights, in noise units (≤
    /// `reuse_max_error`), and the number of slices between run ends solved
    /// exactly (bisection midpoints, and slices whose estimate exceeded the bound; run ends,
    /// always exact, not counted).
    pub reuse_max_error: f64,
    pub reuse_fallbacks: usize,
}

struct SliceOut {
    flux: Vec<f32>,
    ivar: Vec<f32>,
    mask: Vec<i32>,
    lsf: Option<(Vec<f32>, Vec<f32>)>,
    band: Option<BandSlice>,
    failed: bool,
    empty: bool,
}

/// Weights of one slice: listed pixels and W (npix_listed × nsample).
pub type SliceWeights = (Vec<usize>, Mat<f64>);

/// Everything shared by all slices of one cube.
pub struct Builder<'a> {
    pub rss: &'a Rss,
    pub cfg: CrrConfig,
    pub table: KernelTable,
    pub grid: Grid,
    /// Slice index of each band's pivot wavelength.
    pub band_index: [usize; 4],
}

/// Largest output grid side accepted (pixels); with the ranges of `pixel_scale` and
/// `grid_size` this bounds one slice to 512² spaxels.
pub const MAX_NSIDE: usize = 512;

impl<'a> Builder<'a> {
    pub fn new(rss: &'a Rss, cfg: &CrrConfig) -> Result<Self, SpxError> {
        cfg.validate().map_err(SpxError::Config)?;
        let usable =
            (0..rss.nrow()).any(|i| (0..rss.nwave()).any(|l| usable_sample(rss, cfg, i, l)));
        if !usable {
            return Err(SpxError::field(
                &rss.path,
                "IVAR",
                "no usable sample (IVAR > 0, finite FLUX/XPOS/YPOS, not 3DREJECT) in any slice",
            ));
        }
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
        // Positions were checked against rss::MAX_POSITION when read.
        let max_abs = rss
            .xpos
            .iter()
            .chain(rss.ypos.iter())
            .filter(|v| v.is_finite())
            .fold(0.0f64, |a, &b| a.max(b.abs() as f64));
        let grid = Grid::for_bundle(rss.nfiber, cfg.pixel_scale, cfg.grid_size, max_abs);
        if grid.nside > MAX_NSIDE {
            return Err(SpxError::Config(format!(
                "crr.pixel_scale: a {}-pixel grid side exceeds the limit of {MAX_NSIDE}",
                grid.nside
            )));
        }
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
        let good = (0..n).map(|i| usable_sample(r, &self.cfg, i, l)).collect();
        (xs, ys, good)
    }

    /// The output pixels that slice `l`'s weights cover (rows of W): for CRR the fit pixels
    /// near any fiber-exposure (the authors keep masked ones too), for Shepard the pixels
    /// within `shepard_rlim` of a good sample.
    fn weight_pixels(&self, xs: &[f64], ys: &[f64], good: &[bool]) -> Vec<usize> {
        match self.cfg.method {
            Method::Crr => self.grid.pixels_near(xs, ys, self.cfg.fit_radius),
            Method::Shepard => {
                let gx: Vec<f64> = (0..xs.len()).filter(|&i| good[i]).map(|i| xs[i]).collect();
                let gy: Vec<f64> = (0..ys.len()).filter(|&i| good[i]).map(|i| ys[i]).collect();
                self.grid.pixels_near(&gx, &gy, self.cfg.shepard_rlim)
            }
        }
    }

    /// The weights of slice `l`; `None` if the SVD/EVD failed.
    pub fn weights(&self, l: usize, ws: &mut Workspace) -> Option<SliceWeights> {
        let (xs, ys, good) = self.samples(l);
        let pix = self.weight_pixels(&xs, &ys, &good);
        match self.cfg.method {
            Method::Crr => {
                let seeing = self.seeing_rows(l);
                let na = design_matrix(&self.table, &self.grid, &pix, &xs, &ys, &seeing, &good);
                let w = crr_weights(
                    na.as_ref(),
                    &good,
                    self.cfg.lambda,
                    self.cfg.sv_cutoff,
                    self.cfg.solver,
                    ws,
                )
                .ok()?;
                Some((pix, w))
            }
            Method::Shepard => {
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
    fn slice(&self, l: usize, weights: Option<&SliceWeights>) -> SliceOut {
        let r = self.rss;
        let npix = self.grid.npix();
        let band = self.band_index.iter().position(|&b| b == l);
        let uncovered = cubebits::NOCOV | cubebits::LOWCOV | cubebits::DONOTUSE;
        let (xs, ys, good) = self.samples(l);
        let empty = !good.iter().any(|&g| g);
        let failed_out = |failed: bool| SliceOut {
            flux: vec![0.0; npix],
            ivar: vec![0.0; npix],
            mask: vec![uncovered; npix],
            lsf: r.lsf.as_ref().map(|_| (vec![0.0; npix], vec![0.0; npix])),
            band: band.map(|b| BandSlice {
                band: b,
                index: l,
                psf: Array2::zeros((self.grid.nside, self.grid.nside)),
                correl: Correl::default(),
            }),
            failed,
            empty: !failed,
        };
        let Some((pix, w)) = weights else {
            return failed_out(true);
        };
        if empty {
            return failed_out(false);
        }
        let conv = self.conversion();
        let nsample = xs.len();
        let mut flux = vec![0.0f32; npix];
        let mut ivar = vec![0.0f32; npix];
        let mut mask = vec![uncovered; npix];
        let mut lsf = r
            .lsf
            .as_ref()
            .map(|_| (vec![0.0f32; npix], vec![0.0f32; npix]));
        // Per-sample inputs of this slice, then one pass down each (contiguous) column of W.
        let np = pix.len();
        let (mut g, mut var, mut depth) = (vec![0.0; np], vec![0.0; np], vec![0.0f64; np]);
        let (mut lw, mut l1, mut l2) = (vec![0.0; np], vec![0.0; np], vec![0.0; np]);
        for i in (0..nsample).filter(|&i| good[i]) {
            let (f, sig2) = (r.flux[(i, l)] as f64, 1.0 / r.ivar[(i, l)] as f64);
            let col = w.col(i);
            for row in 0..np {
                let wi = col[row];
                g[row] += wi * f;
                var[row] += wi * wi * sig2;
                depth[row] += wi * wi;
            }
            if let Some((post, pre)) = &r.lsf {
                let (a, b) = (post[(i, l)] as f64, pre[(i, l)] as f64);
                for row in 0..np {
                    let aw = col[row].abs();
                    lw[row] += aw;
                    l1[row] += aw * a;
                    l2[row] += aw * b;
                }
            }
        }
        for (row, &j) in pix.iter().enumerate() {
            flux[j] = (g[row] * conv) as f32;
            let v = var[row] * conv * conv;
            ivar[j] = if v > 0.0 { (1.0 / v) as f32 } else { 0.0 };
            mask[j] = 0;
            if let Some((a, b)) = &mut lsf
                && lw[row] > 0.0
            {
                a[j] = (l1[row] / lw[row]) as f32;
                b[j] = (l2[row] / lw[row]) as f32;
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
        self.flag_dead_fibers(l, &xs, &ys, pix, &mut mask);
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
            empty: false,
        }
    }

    /// DEADFIBER over the weight footprint of a dead fiber (RSS bit 13): the fit pixels within
    /// the kernel radius for CRR (where its A column is non-zero), every pixel within
    /// `shepard_rlim` for Shepard.
    fn flag_dead_fibers(&self, l: usize, xs: &[f64], ys: &[f64], pix: &[usize], mask: &mut [i32]) {
        let r = self.rss;
        let dead: Vec<usize> = (0..xs.len())
            .filter(|&i| r.mask[(i, l)] & rssbits::DEADFIBER != 0)
            .filter(|&i| xs[i].is_finite() && ys[i].is_finite())
            .collect();
        if dead.is_empty() {
            return;
        }
        let (radius, candidates): (f64, Vec<usize>) = match self.cfg.method {
            Method::Crr => (self.cfg.kernel_radius, pix.to_vec()),
            Method::Shepard => (self.cfg.shepard_rlim, (0..self.grid.npix()).collect()),
        };
        for j in candidates {
            let (px, py) = self.grid.centre(j);
            if dead
                .iter()
                .any(|&i| (xs[i] - px).hypot(ys[i] - py) < radius)
            {
                mask[j] |= cubebits::DEADFIBER;
            }
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
    /// `reuse_tolerance` > 0 (CRR only), a slice reuses the weights of the last anchor in its block of
    /// [`REUSE_BLOCK`] slices when the good-sample mask is identical and every position and
    /// seeing differs from the anchor's by at most the tolerance (arcsec). Blocks are aligned to
    /// absolute slice numbers and anchors are replayed from the block start, so a shard makes
    /// the same choices as a one-shot build.
    pub fn anchors(&self, start: usize, end: usize) -> Vec<usize> {
        let tol = self.cfg.reuse_tolerance;
        // Shepard weights are an explicit formula, cheaper than the reuse checks, and jump where
        // a sample crosses `shepard_rlim` (reused, they broke a 1σ bound: 1.10σ).
        if tol <= 0.0 || self.cfg.method == Method::Shepard {
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

    /// What a slice's weights depend on besides the fit pixels: every good sample's x, y and
    /// seeing (arcsec), in row order.
    fn reuse_params(&self, l: usize) -> Vec<f64> {
        let (xs, ys, good) = self.samples(l);
        let see = self.seeing_rows(l);
        (0..xs.len())
            .filter(|&i| good[i])
            .flat_map(|i| [xs[i], ys[i], see[i]])
            .collect()
    }

    /// First-order estimate of the flux error of slice `l` reconstructed as `out` with one end
    /// of its run's exact weights: `dist` (run units, 0 at that end, 1 at the other) times the
    /// difference from the other end's exact weights `other` applied to the same data, in noise
    /// units of `out`. A spaxel that `other` does not cover counts its whole flux.
    fn reuse_estimate(&self, l: usize, out: &SliceOut, other: &SliceWeights, dist: f64) -> f64 {
        let r = self.rss;
        let (pix, w) = other;
        let (_, _, good) = self.samples(l);
        let mut g = vec![0.0f64; pix.len()];
        for i in (0..good.len()).filter(|&i| good[i]) {
            let f = r.flux[(i, l)] as f64;
            for (gr, wi) in g.iter_mut().zip(w.col(i).iter()) {
                *gr += wi * f;
            }
        }
        let conv = self.conversion();
        let mut flux_other = vec![0.0f64; self.grid.npix()];
        for (&j, gr) in pix.iter().zip(&g) {
            flux_other[j] = gr * conv;
        }
        let diff = out
            .flux
            .iter()
            .zip(&out.ivar)
            .zip(&flux_other)
            .filter(|((_, iv), _)| **iv > 0.0)
            .map(|((f, iv), fo)| (*f as f64 - fo).abs() * (*iv as f64).sqrt())
            .fold(0.0, f64::max);
        dist * diff
    }

    /// Slice `l` strictly between two slices with exact weights (`p`, `q`): reconstructed
    /// with the nearer end's weights (the farther one's when only its fit pixels match `l`'s),
    /// with the first-order estimate of that choice's error (before [`REUSE_SAFETY`]), or
    /// `None` when no end's fit pixels match, its parameters leave the line between the ends
    /// or an end failed.
    fn reused(&self, l: usize, (p, q): (&RunEnd, &RunEnd)) -> Option<(SliceOut, f64)> {
        let (Some(wp), Some(wq)) = (&p.w, &q.w) else {
            return None;
        };
        let (t, off) = run_position(&p.params, &self.reuse_params(l), &q.params)?;
        let (xs, ys, good) = self.samples(l);
        let pix = self.weight_pixels(&xs, &ys, &good);
        let mut ends = [(wp, wq, t), (wq, wp, 1.0 - t)];
        if t > 0.5 {
            ends.swap(0, 1);
        }
        let (w, other, dist) = ends.into_iter().find(|(w, _, _)| w.0 == pix)?;
        let out = self.slice(l, Some(w));
        let est = self.reuse_estimate(l, &out, other, dist + off);
        Some((out, est))
    }

    /// Exact weights and [`Self::reuse_params`] of slice `l`, the end of a run or sub-run.
    fn run_end(&self, l: usize, ws: &mut Workspace) -> RunEnd {
        RunEnd {
            l,
            w: self.weights(l, ws),
            params: self.reuse_params(l),
        }
    }

    /// Whether the first-order model holds between `p` and `q`, checked at their middle slice
    /// `m` whose exact output is `exact`: the error of reusing the nearer end's weights there,
    /// measured against the exact slice in its noise units, equals its first-order estimate to
    /// within [`REUSE_LINEARITY`] of the estimate (plus 1e-3 of the bound, so that errors far
    /// below the bound need not match).
    fn linear_at(&self, m: usize, (p, q): (&RunEnd, &RunEnd), exact: &SliceOut) -> bool {
        let Some((out, est)) = self.reused(m, (p, q)) else {
            return false;
        };
        let err = out
            .flux
            .iter()
            .zip(&exact.flux)
            .zip(&exact.ivar)
            .filter(|(_, iv)| **iv > 0.0)
            .map(|((a, b), iv)| (a - b).abs() as f64 * (*iv as f64).sqrt())
            .fold(0.0, f64::max);
        (err - est).abs() <= REUSE_LINEARITY * est + 1e-3 * self.cfg.reuse_max_error
    }

    /// Slices `ls` (sorted, strictly between `p` and `q`) of a sub-run whose ends have exact
    /// weights, appended to `outs` in order. Its middle slice m is solved exactly and checks
    /// the first-order error model ([`Self::linear_at`]). If it holds, every slice of both
    /// halves takes the nearer end's weights (p, m or q) when its own estimate times
    /// [`REUSE_SAFETY`] is within `reuse_max_error`, and is solved exactly otherwise; if not,
    /// each half is split the same way (bisection). Only sub-runs holding a slice of `ls` are
    /// visited and each decision depends on the sub-run alone, so a shard makes the same
    /// choices as a one-shot build. `stats`: (largest estimate kept, exact solves between run
    /// ends).
    fn sub_run(
        &self,
        (p, q): (&RunEnd, &RunEnd),
        ls: &[usize],
        ws: &mut Workspace,
        outs: &mut Vec<SliceOut>,
        stats: &mut (f64, usize),
        pb: &ProgressBar,
    ) {
        if ls.is_empty() {
            return;
        }
        let m = (p.l + q.l) / 2;
        let me = self.run_end(m, ws);
        stats.1 += 1;
        let exact_m = self.slice(m, me.w.as_ref());
        let linear = self.cfg.reuse_max_error > 0.0 && self.linear_at(m, (p, q), &exact_m);
        let k = ls.partition_point(|&l| l < m);
        let has_m = ls.get(k) == Some(&m);
        let right = &ls[k + usize::from(has_m)..];
        let mut half = |ends: (&RunEnd, &RunEnd), part: &[usize], outs: &mut Vec<SliceOut>| {
            if linear {
                self.reuse_between(ends, part, ws, outs, stats, pb);
            } else {
                self.sub_run(ends, part, ws, outs, stats, pb);
            }
        };
        half((p, &me), &ls[..k], outs);
        if has_m {
            outs.push(exact_m);
            pb.inc(1);
        }
        half((&me, q), right, outs);
    }

    /// Slices `ls` between `p` and `q` (a half checked by [`Self::sub_run`]): the nearer end's
    /// weights where the estimated error times [`REUSE_SAFETY`] is within `reuse_max_error`,
    /// exact weights elsewhere.
    fn reuse_between(
        &self,
        (p, q): (&RunEnd, &RunEnd),
        ls: &[usize],
        ws: &mut Workspace,
        outs: &mut Vec<SliceOut>,
        stats: &mut (f64, usize),
        pb: &ProgressBar,
    ) {
        for &l in ls {
            let kept = self
                .reused(l, (p, q))
                .map(|(o, est)| (o, REUSE_SAFETY * est))
                .filter(|(_, est)| *est <= self.cfg.reuse_max_error);
            let o = match kept {
                Some((o, est)) => {
                    stats.0 = stats.0.max(est);
                    o
                }
                None => {
                    stats.1 += 1;
                    self.slice(l, self.weights(l, ws).as_ref())
                }
            };
            outs.push(o);
            pb.inc(1);
        }
    }

    /// One run of slices [a, last] that may share weights (`ls`: those in the range being
    /// built; `last`: the run's last slice in the whole cube, so shards decide as a one-shot
    /// build does). Both ends are solved exactly; the slices between them go through
    /// [`Self::sub_run`]. Returns (outputs, largest estimated error of a reused slice, slices
    /// between the ends solved exactly).
    fn run_group(
        &self,
        a: usize,
        ls: &[usize],
        last: usize,
        ws: &mut Workspace,
        pb: &ProgressBar,
    ) -> (Vec<SliceOut>, f64, usize) {
        let mut outs = Vec::with_capacity(ls.len());
        let mut stats = (0.0, 0);
        let inner: Vec<usize> = ls
            .iter()
            .copied()
            .filter(|&l| l != a && l != last)
            .collect();
        let need = |l: usize| !inner.is_empty() || ls.contains(&l);
        let ea = need(a).then(|| self.run_end(a, ws));
        let ez = (last != a && need(last)).then(|| self.run_end(last, ws));
        if ls.first() == Some(&a)
            && let Some(ea) = &ea
        {
            outs.push(self.slice(a, ea.w.as_ref()));
            pb.inc(1);
        }
        if let (Some(ea), Some(ez)) = (&ea, &ez) {
            self.sub_run((ea, ez), &inner, ws, &mut outs, &mut stats, pb);
            if ls.last() == Some(&last) {
                outs.push(self.slice(last, ez.w.as_ref()));
                pb.inc(1);
            }
        }
        (outs, stats.0, stats.1)
    }

    /// Reconstruct slices [start, end) in parallel (one group of slices per task; each task
    /// holds only its own W and one linear-algebra workspace per worker thread, so memory
    /// stays bounded by threads × one slice's matrices).
    pub fn build_range(&self, start: usize, end: usize, pb: &ProgressBar) -> Part {
        let n = self.grid.nside;
        // Group slices by the anchor whose weights they use (each slice its own when reuse is
        // off).
        let block_end = (end.div_ceil(REUSE_BLOCK) * REUSE_BLOCK).min(self.nwave());
        let anchors = self.anchors(start, block_end);
        let mut groups: Vec<(usize, Vec<usize>, usize)> = Vec::new();
        for (k, &a) in anchors.iter().enumerate() {
            let l = start + k;
            match groups.last_mut() {
                Some((ga, v, last)) if *ga == a => {
                    *last = l;
                    if l < end {
                        v.push(l);
                    }
                }
                _ if l < end => groups.push((a, vec![l], l)),
                _ => break,
            }
        }
        let runs: Vec<(Vec<SliceOut>, f64, usize)> = groups
            .into_par_iter()
            .map_init(Workspace::default, |ws, (a, ls, last)| {
                self.run_group(a, &ls, last, ws, pb)
            })
            .collect();
        let reuse_max_error = runs.iter().map(|r| r.1).fold(0.0, f64::max);
        let reuse_fallbacks = runs.iter().map(|r| r.2).sum();
        let outs = runs.into_iter().flat_map(|r| r.0);
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
        let mut empty = Vec::new();
        for (k, o) in outs.enumerate() {
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
            if o.empty {
                empty.push(start + k);
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
            empty,
            reuse_max_error,
            reuse_fallbacks,
        }
    }
}

/// A sample enters the reconstruction when IVAR > 0, FLUX/IVAR/XPOS/YPOS are finite and (with
/// `reject_3d`) it is not flagged 3DREJECT.
fn usable_sample(r: &Rss, cfg: &CrrConfig, i: usize, l: usize) -> bool {
    let m = r.mask[(i, l)];
    r.ivar[(i, l)] > 0.0
        && r.ivar[(i, l)].is_finite()
        && r.flux[(i, l)].is_finite()
        && r.xpos[(i, l)].is_finite()
        && r.ypos[(i, l)].is_finite()
        && !(cfg.reject_3d && m & rssbits::REJECT3D != 0)
}

/// Slices per block within which weights may be reused (see [`Builder::anchors`]).
pub const REUSE_BLOCK: usize = 64;

/// A slice with exact weights that bounds a run or sub-run of reused weights.
struct RunEnd {
    l: usize,
    w: Option<SliceWeights>,
    params: Vec<f64>,
}

/// How far (relative) the measured reuse error at a sub-run's middle slice may differ from
/// its first-order estimate for the halves to reuse weights ([`Builder::linear_at`]). Where the
/// weights are smooth the two agree to ≈ 1–4 %; near-singular slices (smallest singular value
/// ≈ 1e-5, 100× below its usual value) miss by 30–400 %.
const REUSE_LINEARITY: f64 = 0.1;

/// Safety factor on the first-order reuse error estimate ([`Builder::reuse_between`]): a
/// reused slice keeps its weights only if this many times its estimate is within
/// `reuse_max_error`. Where the midpoint check passes, measured errors stayed within 1.7× their
/// estimate on the 300-slice reference file (near-singular slices beside a checked midpoint).
pub const REUSE_SAFETY: f64 = 2.5;

/// Where parameters `pl` lie between `pa` (0) and `pz` (1): the projection t of pl − pa on
/// pz − pa, clamped to [0, 1], and the largest component of pl − pa − t (pz − pa) as a fraction
/// of the largest of pz − pa (the motion not along the line between the ends). `None` when the
/// ends have equal parameters but `pl` differs, or the lengths differ.
fn run_position(pa: &[f64], pl: &[f64], pz: &[f64]) -> Option<(f64, f64)> {
    if pl.len() != pa.len() || pz.len() != pa.len() {
        return None;
    }
    let dz: Vec<f64> = pz.iter().zip(pa).map(|(z, a)| z - a).collect();
    let dl: Vec<f64> = pl.iter().zip(pa).map(|(p, a)| p - a).collect();
    let zz: f64 = dz.iter().map(|d| d * d).sum();
    let span = dz.iter().fold(0.0f64, |m, d| m.max(d.abs()));
    if zz == 0.0 || span == 0.0 {
        return dl.iter().all(|&d| d == 0.0).then_some((0.0, 0.0));
    }
    let t = (dl.iter().zip(&dz).map(|(l, z)| l * z).sum::<f64>() / zz).clamp(0.0, 1.0);
    let off = dl
        .iter()
        .zip(&dz)
        .fold(0.0f64, |m, (l, z)| m.max((l - t * z).abs()));
    Some((t, off / span))
}

pub fn nearest(wave: &[f64], w: f64) -> usize {
    (0..wave.len())
        .min_by(|&a, &b| (wave[a] - w).abs().total_cmp(&(wave[b] - w).abs()))
        .unwrap_or(0)
}
