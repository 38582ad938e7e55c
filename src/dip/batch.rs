//! Batched DIP fitting: B independent fits (sources, or ensemble members) in one forward and
//! one backward per epoch.
//!
//! Each fit keeps everything a one-at-a-time fit has: its own network weights (initialised from
//! its own seed exactly as [`UNet::new`] does), noise input, flux scale, observation rows,
//! validation split, Adam moments and stopping rule. The weights of the B networks are stacked
//! along a leading batch dimension and every conv runs as B per-source convs inside one op
//! ([`super::stacked::conv`]); the element-wise layers (LeakyReLU, max-pool, interpolation, Softplus, λ/R
//! smoothing) and the loss act row by row. Adam is per parameter, so stacked moments give each
//! network exactly the update it would get alone. A fit that stops leaves the batch: its rows are
//! removed from the weights, the moments and the loss before the next epoch.
//!
//! Why this equals a one-at-a-time run (tested): a source's row never mixes with another row,
//! its convs run the same kernel on the same sizes (one sample, on one thread: spx's conv
//! kernels sum the weight gradient over rayon splits whose grouping depends on work stealing,
//! so a source's kernels run on a one-thread pool of their own and the sources of a batch run
//! in parallel instead), and the stopping decisions are made on the host in f64 from the
//! spectrum read back each epoch, so they do not depend on how a device reduction groups a
//! padded batch. A batch of one is how [`super::train::fit`] runs.
//!
//! Restores (`train.restore_*`, the original DIP code's remedy for a diverging fit): every
//! `restore_every` epochs each fit keeps a snapshot of its rows of the stacked weights and Adam
//! moments (reference-counted handles of the stack of that epoch, no copy: each step writes new
//! tensors), with its loss and Adam step count there. When a fit's total loss rises above
//! `restore_jump` × its snapshot's loss, its rows alone are put back to the snapshot, its step
//! count too, and its step size is multiplied by `restore_lr_factor`; the next epoch reproduces
//! the snapshot's loss. Rows whose step count or step size differ take their Adam steps in groups
//! (Adam is element-wise, so every row gets the bits it would get alone); a batch whose rows
//! agree, the usual case, takes one step as before.
//!
//! Stall restores (`train.stall_restore_epochs` = P): a fit whose total loss has not improved
//! (by `early_stop_min_delta`) for P epochs while its best spectrum fits the data worse than both
//! `stop_chi2` and the baseline — the fit the plateau stop would hand to the baseline fallback —
//! goes back to the snapshot with the lowest loss it has taken, at `restore_lr_factor` × its step
//! size, and patience counts again from there. Dense fits (1000 observations per band) run at
//! the edge of Adam's stability: their loss spikes by 2–15 % every 50–150 epochs and recovers;
//! a larger spike (2.2× on the default source, seed 42, with the snapshot taken partway up it, so
//! no doubling over the snapshot) can leave the fit creeping above χ²/M = 1 until the plateau
//! stop. With P = `early_stop_patience` the rule touches only fits that would otherwise return
//! the baseline.

use std::sync::Arc;
use std::time::Instant;

use burn::tensor::activation::softplus;
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::ProgressBar;
use rand_distr::{Distribution, Normal};

use super::DipConfig;
use super::kernel::ricker_bank;
use super::simulate::smooth_to_resolution;
use super::stacked::conv;
use super::train::{
    EpochLoss, FitResult, Problem, Restore, StopReason, flux_scale, obs_weights,
    resolution_operator, validation_rows,
};
use super::unet::{UNet, UNetSpec};
use super::{LossMode, Weighting};
use crate::backend::{self, Elem};
use crate::train::{Monitor, on_pool_worker};

/// How many fits one batch holds: `dip.batch_sources`, or for 0 (auto) 8 per rayon thread on the
/// CPU (measured, README) and 64 on a GPU.
pub fn batch_size(dip: &DipConfig, device: &crate::backend::DeviceSpec) -> usize {
    match (dip.batch_sources, device) {
        (0, crate::backend::DeviceSpec::Cpu) => 8 * rayon::current_num_threads().max(1),
        (0, _) => 64,
        (b, _) => b,
    }
}

/// The second-difference weight of the fit: `smoothness_weight` × the Tikhonov baseline's
/// discrepancy λ on the same data, converted to this fit's flux units. 0 when off, when the
/// baseline cannot be solved, or when its λ sits at an end of its search range: then no λ meets
/// the discrepancy (at the cap, e.g. a blackbody, even the smoothest solution fits), the value is
/// the range's end, not a measurement, and a weight of 3·10⁷ froze the fit at χ²/M ≈ 34 on a
/// simulated star.
/// `baseline`: the Tikhonov solution on the fit's data (`None` when it could not be solved).
pub fn d2_lambda(
    cfg: &DipConfig,
    baseline: Option<&super::tikhonov::TikhonovResult>,
    scale: f64,
) -> f64 {
    if cfg.prior.smoothness_weight <= 0.0 {
        return 0.0;
    }
    baseline
        .filter(|t| !(t.lambda_at_cap || t.lambda_at_floor))
        .map(|t| cfg.prior.smoothness_weight * t.lambda * (scale / t.scale).powi(2))
        .unwrap_or(0.0)
}

/// The smoothed Tikhonov start (µJy): the solution at λ × `net.baseline_smoothing`, λ being the
/// baseline `t`'s. With `net.start_fit_sigmas` = k > 0 the factor is lowered, by bisection in
/// log between 1 and `baseline_smoothing`, until the start fits the data within k standard
/// deviations of χ²/M (√(2/M)) of the baseline's fit: at high density the smoothed start fits
/// much worse than the baseline (ice at 1000 per band: χ²/M 1.14–1.24, 8–13 σ), and a network
/// that cannot improve on it returns it. `None` when a solve fails.
pub fn smoothed_start(
    cfg: &DipConfig,
    p: &Problem,
    t: &super::tikhonov::TikhonovResult,
) -> Option<Vec<f64>> {
    let at = |s: f64| {
        let mut tc = cfg.tikhonov.clone();
        tc.lambda = t.lambda * s;
        super::tikhonov::solve(p.op, p.y, p.sigma, &tc, cfg.weighting, cfg.epsilon_weight)
    };
    let smax = cfg.net.baseline_smoothing;
    let first = at(smax)?;
    let k = cfg.net.start_fit_sigmas;
    if k <= 0.0 {
        return Some(first.spectrum);
    }
    let limit = t.chi2_per_obs + k * (2.0 / p.op.m.max(1) as f64).sqrt();
    if first.chi2_per_obs <= limit {
        return Some(first.spectrum);
    }
    // χ²/M rises with λ: keep the largest factor found whose start is within the limit.
    let (mut lo, mut hi) = (0.0, smax.ln());
    let mut best = t.spectrum.clone();
    for _ in 0..12 {
        let mid = 0.5 * (lo + hi);
        let r = at(mid.exp())?;
        if r.chi2_per_obs <= limit {
            lo = mid;
            best = r.spectrum;
        } else {
            hi = mid;
        }
    }
    Some(best)
}

/// Whether the λ/R pass brings the baseline closer to held-out observations: `folds`-fold
/// cross-validation (row i in fold i mod `folds`) of the Tikhonov solution at the baseline `t`'s
/// λ (the same penalty in µJy units on every fold), each held-out observation compared, in units
/// of its error, with the solution read at its filter's centre (the middle of the pixels it
/// covers), as solved and after the λ/R pass. A filter of width λ/R centred at c measures the
/// λ/R-smoothed spectrum at c, so the pass wins where the solution resolves structure below λ/R
/// that the smoothed spectrum does not have, and loses where it only blurs. `None` when a solve
/// fails or there are too few observations for the folds.
pub fn written_pass_helps(
    cfg: &DipConfig,
    p: &Problem,
    t: &super::tikhonov::TikhonovResult,
    grid: &[f64],
    folds: usize,
) -> Option<bool> {
    let op = p.op;
    if folds < 2 || op.m < 4 * folds {
        return None;
    }
    // Penalty in µJy units: the solver divides fluxes by its own scale.
    let lambda_ujy = t.lambda / (t.scale * t.scale);
    let at_centre = |x: &[f64], i: usize| {
        let (s, l) = (op.start[i], op.len[i]);
        0.5 * (x[s + (l - 1) / 2] + x[s + l / 2])
    };
    let (mut raw, mut passed) = (0.0, 0.0);
    for f in 0..folds {
        let fit: Vec<usize> = (0..op.m).filter(|i| i % folds != f).collect();
        let sub = op.rows(&fit);
        let y: Vec<f64> = fit.iter().map(|&i| p.y[i]).collect();
        let s: Vec<f64> = fit.iter().map(|&i| p.sigma[i]).collect();
        let mut tc = cfg.tikhonov.clone();
        let scale = flux_scale(&y);
        tc.lambda = lambda_ujy * scale * scale;
        let x =
            super::tikhonov::solve(&sub, &y, &s, &tc, cfg.weighting, cfg.epsilon_weight)?.spectrum;
        let xs = smooth_to_resolution(grid, &x);
        for i in (f..op.m).step_by(folds) {
            raw += ((p.y[i] - at_centre(&x, i)) / p.sigma[i]).powi(2);
            passed += ((p.y[i] - at_centre(&xs, i)) / p.sigma[i]).powi(2);
        }
    }
    Some(passed < raw)
}

/// How many instrument resolution elements λ/R the grid spans (Σ Δλ / (λ/R) over its pixels):
/// ~16 per band, ~95 on 0.75–5 µm.
pub fn resolution_elements(grid: &[f64]) -> f64 {
    let n = grid.len();
    if n < 2 {
        return 1.0;
    }
    let d = (grid[n - 1] - grid[0]) / (n - 1) as f64;
    grid.iter()
        .map(|&l| d / super::grid::resolution_width(l))
        .sum::<f64>()
        .max(1.0)
}

/// Fit one network with `seed`. `device` must be an autodiff device. A batch of one
/// ([`fit_batch`]), so a fit inside a batch equals this.
pub fn fit(
    cfg: &DipConfig,
    p: &Problem,
    device: &Device,
    seed: u64,
    pb: &ProgressBar,
) -> FitResult {
    let job = Job {
        problem: p.clone(),
        seed,
    };
    fit_batch(cfg, &[job], device, pb)
        .pop()
        .expect("one result per job")
}

/// One fit of a batch: the observations and the seed of its network and noise.
#[derive(Clone, Debug)]
pub struct Job<'a> {
    pub problem: Problem<'a>,
    pub seed: u64,
}

/// The loss terms of one fit on the host, in f64 (scaled units): the numbers the stopping rules
/// read, computed from the spectrum read back each epoch.
struct HostTerms {
    idx: Vec<usize>,
    w: Vec<f64>,
    k: usize,
    y: Vec<f64>,
    wt: Vec<f64>,
    ivar: Vec<f64>,
    ivar_val: Vec<f64>,
    m_fit: usize,
    m_val: usize,
    d2: f64,
}

/// Shared host constants: the CWT bank.
struct Cwt {
    bank: Vec<f64>,
    kmax: usize,
    pad: usize,
    scales: usize,
    lambda: f64,
}

fn reflect(i: isize, n: usize) -> usize {
    let n = n as isize;
    let r = if i < 0 {
        -i
    } else if i >= n {
        2 * (n - 1) - i
    } else {
        i
    };
    r.clamp(0, n - 1) as usize
}

impl HostTerms {
    /// (data, reg, χ²/M fitted, χ²/M held out) of spectrum `x` (scaled units).
    fn eval(&self, x: &[f64], mode: LossMode, cwt: &Cwt) -> (f64, f64, f64, f64) {
        let m = self.y.len();
        let (mut data, mut c2, mut c2v) = (0.0, 0.0, 0.0);
        for i in 0..m {
            let row = i * self.k..(i + 1) * self.k;
            let pred: f64 = self.idx[row.clone()]
                .iter()
                .zip(&self.w[row.clone()])
                .map(|(&j, &w)| w * x[j])
                .sum();
            let r2 = (self.y[i] - pred).powi(2);
            c2 += self.ivar[i] * r2;
            c2v += self.ivar_val[i] * r2;
            data += match mode {
                LossMode::Forward => self.wt[i] * r2,
                LossMode::Pixel => self.idx[row.clone()]
                    .iter()
                    .zip(&self.w[row])
                    .map(|(&j, &w)| w * self.wt[i] * (self.y[i] - x[j]).powi(2))
                    .sum(),
            };
        }
        let n = x.len();
        let mut l1 = 0.0;
        for s in 0..cwt.scales {
            let kern = &cwt.bank[s * cwt.kmax..(s + 1) * cwt.kmax];
            for j in 0..n {
                let c: f64 = kern
                    .iter()
                    .enumerate()
                    .map(|(t, &b)| b * x[reflect(j as isize + t as isize - cwt.pad as isize, n)])
                    .sum();
                l1 += c.abs();
            }
        }
        let mut reg = cwt.lambda * l1;
        if self.d2 > 0.0 {
            let d2: f64 = (0..n.saturating_sub(2))
                .map(|j| (x[j + 2] - 2.0 * x[j + 1] + x[j]).powi(2))
                .sum();
            reg += self.d2 * d2;
        }
        (
            data,
            reg,
            c2 / self.m_fit.max(1) as f64,
            c2v / self.m_val.max(1) as f64,
        )
    }
}

/// Host bookkeeping of one fit while it runs.
struct Running {
    job: usize,
    t0: Instant,
    scale: f64,
    held_out: Vec<usize>,
    d2: f64,
    terms: HostTerms,
    best: (f64, usize, Vec<f64>),
    /// χ²/M at which the discrepancy stop fires: `stop_base` lowered by `train.stop_sigmas`.
    stop_at: f64,
    /// `train.stop_chi2` (less p/M with `train.stop_dof`).
    stop_base: f64,
    /// The first epoch e at which χ²/M reached `stop_base`: from epoch 2e on, the fit also stops
    /// at any epoch at or below `stop_base` (the lowered target costs at most about as many epochs
    /// again; a start already at `stop_base`, e.g. the baseline at its λ cap, stops at once).
    at_base: Option<usize>,
    ema: Option<Vec<f64>>,
    history: Vec<EpochLoss>,
    /// The plateau rule's tracker of the total loss.
    plateau: Monitor,
    /// The Tikhonov baseline (scaled units) returned instead of a fit that ends fitting the
    /// data worse than it (`train.fallback_baseline`).
    fallback: Option<Vec<f64>>,
    /// Pass the returned spectrum through the λ/R kernel (`prior.smooth_written_density`).
    smooth_written: bool,
    /// The baseline whose problem, centred on the fit, the held-out-checked step after the fit
    /// re-solves (`prior.refine_cv_folds`; see [`super::refine`]).
    refine: Option<super::tikhonov::TikhonovResult>,
    /// Adam steps taken (restored with the weights).
    time: i32,
    /// Factor of `train.lr` of this fit's steps (× `restore_lr_factor` at each restore).
    lr_factor: f64,
    /// The last snapshot of this fit's weights and moments.
    snap: Option<RowSnap>,
    /// The snapshot with the lowest total loss (where a stall restore goes back to).
    best_snap: Option<RowSnap>,
    /// χ²/M above which the fit's best spectrum would fall back (the larger of `stop_chi2` and
    /// the baseline's χ²/M; `stop_chi2` without a baseline): the stall restore's condition.
    stall_above: f64,
    /// A rise of the total loss above the snapshot's by more than this is also a jump:
    /// `train.restore_jump_sigmas` standard deviations of χ² over the fitted observations,
    /// `k·√(2M)` (∞ when off).
    jump_margin: f64,
    restores: Vec<Restore>,
}

/// The stacked weights and moments of one epoch (shared by the fits that took a snapshot then).
struct StackSnap {
    w: Vec<Tensor<4>>,
    b: Vec<Tensor<2>>,
    mw: Vec<(Tensor<4>, Tensor<4>)>,
    mb: Vec<(Tensor<2>, Tensor<2>)>,
}

/// One fit's snapshot: its row of a [`StackSnap`], and its loss, epoch and Adam step count then.
#[derive(Clone)]
struct RowSnap {
    stack: Arc<StackSnap>,
    row: usize,
    epoch: usize,
    total: f64,
    time: i32,
}

/// Stacked weights and their Adam moments.
struct Stack {
    w: Vec<Tensor<4>>,
    b: Vec<Tensor<2>>,
    mw: Vec<Option<(Tensor<4>, Tensor<4>)>>,
    mb: Vec<Option<(Tensor<2>, Tensor<2>)>>,
}

/// burn's Adam (β₁ 0.9, β₂ 0.999, ε 1e-5, no weight decay), operation for operation, on a
/// stacked parameter: every element gets the update it would get alone (fused into one pass on
/// the CPU: [`crate::nn::adam`]).
pub use crate::nn::adam::adam;

/// [`adam`] on a stack whose rows take steps at their own (step count, step size): `groups`
/// lists each distinct pair with its rows, `order` (when there is more than one group) puts the
/// concatenated group results back in row order. One group: one call on the whole stack.
fn adam_rows<const D: usize>(
    p: Tensor<D>,
    g: Tensor<D>,
    state: Option<(Tensor<D>, Tensor<D>)>,
    groups: &[(i32, f64, Tensor<1, Int>)],
    order: Option<&Tensor<1, Int>>,
) -> (Tensor<D>, (Tensor<D>, Tensor<D>)) {
    let Some(order) = order else {
        let (time, lr, _) = &groups[0];
        return adam(p, g, state, *time, *lr);
    };
    let (mut ps, mut ms, mut vs) = (Vec::new(), Vec::new(), Vec::new());
    for (time, lr, rows) in groups {
        let sel = |t: &Tensor<D>| t.clone().select(0, rows.clone());
        let st = state.as_ref().map(|(m, v)| (sel(m), sel(v)));
        let (pn, (mn, vn)) = adam(sel(&p), sel(&g), st, *time, *lr);
        ps.push(pn);
        ms.push(mn);
        vs.push(vn);
    }
    let back = |parts: Vec<Tensor<D>>| Tensor::cat(parts, 0).select(0, order.clone());
    (back(ps), (back(ms), back(vs)))
}

/// `t` with its row `r` replaced by row `i` of `from` (a copy; used only on a restore).
fn put_row<const D: usize>(
    t: Tensor<D>,
    r: usize,
    from: &Tensor<D>,
    i: usize,
    inner: &Device,
) -> Tensor<D> {
    let b = t.dims()[0];
    let idx: Vec<i64> = (0..b)
        .map(|k| if k == r { b as i64 } else { k as i64 })
        .collect();
    let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [b]), inner);
    Tensor::cat(vec![t, from.clone().narrow(0, i, 1)], 0).select(0, idx)
}

fn int_tensor(v: Vec<i64>, shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::<2, Int>::from_data(TensorData::new(v, shape), device)
}

/// Fit every job; results in job order. `device` must be an autodiff device. Rows run together
/// and leave the batch as they stop; `pb` counts epochs of the batch.
pub fn fit_batch(
    cfg: &DipConfig,
    jobs: &[Job],
    device: &Device,
    pb: &ProgressBar,
) -> Vec<FitResult> {
    fit_batch_with(cfg, jobs, device, pb, &mut |_, _| {})
}

/// [`fit_batch`], calling `on_done(job index, result)` as soon as each fit ends (e.g. to store
/// it before the rest of the batch finishes).
///
/// The fit runs on a worker of rayon's global pool ([`on_pool_worker`]); batched and lone fits
/// both run there, so they agree bit for bit.
pub fn fit_batch_with(
    cfg: &DipConfig,
    jobs: &[Job],
    device: &Device,
    pb: &ProgressBar,
    on_done: &mut (dyn FnMut(usize, &FitResult) + Send),
) -> Vec<FitResult> {
    on_pool_worker(|| fit_batch_here(cfg, jobs, device, pb, on_done))
}

fn fit_batch_here(
    cfg: &DipConfig,
    jobs: &[Job],
    device: &Device,
    pb: &ProgressBar,
    on_done: &mut (dyn FnMut(usize, &FitResult) + Send),
) -> Vec<FitResult> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let inner = device.clone().inner();
    let n = jobs[0].problem.op.n;
    let spec = UNetSpec {
        length: n,
        depth: cfg.net.depth,
        filters: cfg.net.filters,
        kernel_size: cfg.net.kernel_size,
        leaky_slope: cfg.net.leaky_slope,
        init: cfg.net.init,
        positivity: false,
    };
    let (bank, kmax, pad) = ricker_bank(&cfg.prior.cwt_scales);
    let cwt = Cwt {
        bank: bank.clone(),
        kmax,
        pad,
        scales: cfg.prior.cwt_scales.len(),
        lambda: cfg.prior.cwt_weight,
    };
    let f32s = |v: &[f64]| v.iter().map(|&x| x as Elem).collect::<Vec<_>>();
    // Loss constants live on the autodiff device (untracked); weights and moments on `inner`.
    let bank_t = backend::tensor_from(f32s(&bank), [1, cwt.scales, 1, kmax], device);
    let bank_b = Tensor::<2>::zeros([1, cwt.scales], device);
    let smooth = cfg.prior.smooth_output.then(|| {
        let grid = super::grid::linspace(cfg.wavelength_min, cfg.wavelength_max, n);
        let s = resolution_operator(&grid);
        let idx: Vec<i64> = s.idx.iter().map(|&i| i as i64).collect();
        (
            Tensor::<1, Int>::from_data(TensorData::new(idx, [s.m * s.k]), device),
            backend::tensor_from(f32s(&s.w), [1, s.m, s.k], device),
            s.k,
        )
    });

    let grid = super::grid::linspace(cfg.wavelength_min, cfg.wavelength_max, n);
    // Per job, in job order and in the order a lone fit draws them: seed, split, λ_D2, noise,
    // network.
    let mut net: Option<UNet> = None;
    let mut runs = Vec::with_capacity(jobs.len());
    let mut zs = Vec::with_capacity(jobs.len());
    let mut params: Vec<Vec<(Tensor<3>, Tensor<1>)>> = Vec::with_capacity(jobs.len());
    let mut bases: Vec<Vec<f64>> = Vec::with_capacity(jobs.len());
    for (j, job) in jobs.iter().enumerate() {
        let t0 = Instant::now();
        let p = &job.problem;
        let scale = if cfg.train.scale_flux {
            flux_scale(p.y)
        } else {
            1.0
        };
        let mut rng = backend::seeded(device, job.seed);
        let held_out = validation_rows(p.op.m, cfg.train.validation_fraction, job.seed);
        // The baseline, solved once: it sets λ_D2, the start and the dof-corrected stop.
        let tik = (cfg.prior.smoothness_weight > 0.0
            || cfg.net.start_baseline
            || cfg.train.stop_dof
            || cfg.train.fallback_baseline)
            .then(|| {
                super::tikhonov::solve(
                    p.op,
                    p.y,
                    p.sigma,
                    &cfg.tikhonov,
                    cfg.weighting,
                    cfg.epsilon_weight,
                )
            })
            .flatten();
        let d2 = d2_lambda(cfg, tik.as_ref(), scale);
        let m_fit = (p.op.m - held_out.len()).max(1) as f64;
        let stop_base = cfg.train.stop_chi2
            - if cfg.train.stop_dof {
                tik.as_ref()
                    .and_then(|t| {
                        let ss: Vec<f64> = p.sigma.iter().map(|v| v / t.scale).collect();
                        super::tikhonov::effective_parameters(p.op, &ss, t.lambda)
                    })
                    .map_or(0.0, |pe| pe / m_fit)
            } else {
                0.0
            };
        let stop_at = stop_base - cfg.train.stop_sigmas * (2.0 / m_fit).sqrt();
        let jump_margin = if cfg.train.restore_jump_sigmas > 0.0 {
            cfg.train.restore_jump_sigmas * (2.0 * m_fit).sqrt()
        } else {
            f64::INFINITY
        };
        // The start: a smoother Tikhonov solution (λ × baseline_smoothing), or the baseline
        // itself when its λ sits at the cap (the smoothest solution already fits the data below
        // the target: a smoother one would only be a worse fit, e.g. a blackbody).
        let start_spec = match &tik {
            Some(t)
                if cfg.net.start_baseline
                    && cfg.net.baseline_smoothing > 1.0
                    && !t.lambda_at_cap =>
            {
                smoothed_start(cfg, p, t)
            }
            Some(t) if cfg.net.start_baseline => Some(t.spectrum.clone()),
            _ => None,
        };
        // The baseline this fit must not fit worse than (`train.fallback_baseline`).
        let fallback = tik
            .as_ref()
            .filter(|_| cfg.train.fallback_baseline)
            .map(|t| t.spectrum.iter().map(|v| v / scale).collect::<Vec<f64>>());
        bases.push(match start_spec {
            Some(v) => v.iter().map(|v| v / scale).collect(),
            None => vec![0.0; n],
        });
        let normal = Normal::new(0.0, cfg.net.noise_std.max(0.0)).expect("finite noise std");
        let z: Vec<Elem> = (0..n).map(|_| normal.sample(&mut rng) as Elem).collect();
        let unet = UNet::new(&spec, device);
        params.push(unet.conv_params());
        net.get_or_insert(unet);
        zs.push(z);
        let ys: Vec<f64> = p.y.iter().map(|v| v / scale).collect();
        let ss: Vec<f64> = p.sigma.iter().map(|v| v / scale).collect();
        let mut wt = obs_weights(&ss, cfg.weighting, cfg.epsilon_weight);
        let mut ivar = obs_weights(&ss, Weighting::Variance, 0.0);
        let mut ivar_val = vec![0.0; p.op.m];
        for &i in &held_out {
            ivar_val[i] = ivar[i];
            ivar[i] = 0.0;
            wt[i] = 0.0;
        }
        // Observations per λ/R element of the grid: at or above `smooth_written_density` the
        // written spectrum is passed through the λ/R kernel.
        // With `smooth_written_cv_folds`, only when cross-validation of the baseline says the
        // pass helps (see [`written_pass_helps`]; the pass is kept when that cannot be decided).
        let smooth_written = cfg.prior.smooth_written_density > 0.0
            && p.op.m as f64 / resolution_elements(&grid) >= cfg.prior.smooth_written_density
            && (cfg.prior.smooth_written_cv_folds == 0
                || tik
                    .as_ref()
                    .and_then(|t| {
                        written_pass_helps(cfg, p, t, &grid, cfg.prior.smooth_written_cv_folds)
                    })
                    .unwrap_or(true));
        let refine = tik.clone().filter(|_| cfg.prior.refine_cv_folds > 0);
        let terms = HostTerms {
            idx: p.op.idx.clone(),
            w: p.op.w.clone(),
            k: p.op.k,
            y: ys,
            wt,
            ivar,
            ivar_val,
            m_fit: p.op.m - held_out.len(),
            m_val: held_out.len(),
            d2,
        };
        let stall_above = fallback.as_ref().map_or(cfg.train.stop_chi2, |b| {
            terms
                .eval(b, cfg.train.loss_mode, &cwt)
                .2
                .max(cfg.train.stop_chi2)
        });
        runs.push(Running {
            refine,
            fallback,
            smooth_written,
            job: j,
            t0,
            scale,
            terms,
            held_out,
            d2,
            best: (f64::INFINITY, 0, vec![0f64; n]),
            stop_at,
            stop_base,
            jump_margin,
            at_base: None,
            ema: None,
            history: Vec::with_capacity(cfg.train.epochs),
            plateau: Monitor::new(cfg.train.early_stop_min_delta),
            time: 0,
            lr_factor: 1.0,
            snap: None,
            best_snap: None,
            stall_above,
            restores: Vec::new(),
        });
    }
    let Some(net) = net else {
        return Vec::new();
    };
    let nconv = params[0].len();
    let mut st = Stack {
        w: (0..nconv)
            .map(|c| Tensor::stack(params.iter().map(|p| p[c].0.clone()).collect(), 0))
            .collect(),
        b: (0..nconv)
            .map(|c| Tensor::stack(params.iter().map(|p| p[c].1.clone()).collect(), 0))
            .collect(),
        mw: vec![None; nconv],
        mb: vec![None; nconv],
    };
    drop(params);

    // Device constants of the loss, rows padded to the longest problem (zero weights).
    let mmax = jobs
        .iter()
        .map(|j| j.problem.op.m)
        .max()
        .unwrap_or(1)
        .max(1);
    let kmax_op = jobs
        .iter()
        .map(|j| j.problem.op.k)
        .max()
        .unwrap_or(1)
        .max(1);
    let nb = jobs.len();
    let (mut idx, mut w, mut y, mut wt) = (
        vec![0i64; nb * mmax * kmax_op],
        vec![0f32; nb * mmax * kmax_op],
        vec![0f32; nb * mmax],
        vec![0f32; nb * mmax],
    );
    let mut d2v = vec![0f32; nb];
    for (r, run) in runs.iter().enumerate() {
        let t = &run.terms;
        for i in 0..t.y.len() {
            for c in 0..t.k {
                let at = (r * mmax + i) * kmax_op + c;
                idx[at] = t.idx[i * t.k + c] as i64;
                w[at] = t.w[i * t.k + c] as Elem;
            }
            y[r * mmax + i] = t.y[i] as Elem;
            wt[r * mmax + i] = t.wt[i] as Elem;
        }
        d2v[r] = run.d2 as Elem;
    }
    let mut idx_t = int_tensor(idx, [nb, mmax * kmax_op], device);
    let mut w_t = backend::tensor_from(w, [nb, mmax, kmax_op], device);
    let mut y_t = backend::tensor_from(y, [nb, mmax], device);
    let mut wt_t = backend::tensor_from(wt, [nb, mmax], device);
    let mut d2_t = backend::tensor_from(d2v, [nb, 1], device);
    let zall: Vec<Elem> = zs.concat();
    let mut z_t = backend::tensor_from(zall, [nb, 1, n], device);

    // Flat start: each network's own initial output subtracted (see `train::fit`).
    let mut base_t = cfg
        .net
        .start_baseline
        .then(|| backend::tensor_from(f32s(&bases.concat()), [nb, n], device));
    let mut start = (cfg.net.start_flat || cfg.net.start_baseline).then(|| {
        let level = if cfg.net.start_baseline {
            0.0
        } else if cfg.net.positivity {
            (1f64.exp() - 1.0).ln()
        } else {
            1.0
        };
        let w: Vec<Tensor<4>> = st.w.iter().map(|t| Tensor::from_inner(t.clone())).collect();
        let b: Vec<Tensor<2>> = st.b.iter().map(|t| Tensor::from_inner(t.clone())).collect();
        net.forward_stacked(&w, &b, z_t.clone())
            .detach()
            .reshape([nb, n])
            .neg()
            .add_scalar(level)
    });

    let mut active: Vec<Running> = runs;
    let mut done: Vec<(usize, FitResult)> = Vec::with_capacity(nb);
    let mut finish = |mut run: Running, epochs_run: usize, mut stop: StopReason, secs: f64| {
        let job = run.job;
        if let Some(b) = run.fallback.take() {
            // χ²/M over the fitted rows of the spectrum the fit would return, and of the
            // baseline: the fit falls back when it fits worse than both the baseline and the
            // discrepancy target.
            let fit_c2 = run.terms.eval(&run.best.2, cfg.train.loss_mode, &cwt).2;
            let base_c2 = run.terms.eval(&b, cfg.train.loss_mode, &cwt).2;
            if fit_c2 > base_c2.max(cfg.train.stop_chi2) {
                run.best.2 = b;
                stop = StopReason::Baseline;
            }
        }
        let mut spectrum: Vec<f64> = run.best.2.iter().map(|&v| v * run.scale).collect();
        // The held-out-checked Tikhonov step around the fit, before the λ/R pass.
        let mut refine_factor = 0.0;
        if let Some(t) = run.refine.take() {
            let p = &jobs[job].problem;
            let step = super::refine::choose(
                p,
                &spectrum,
                &t,
                &cfg.prior.refine_factors,
                cfg.prior.refine_cv_folds,
                cfg.weighting,
                cfg.epsilon_weight,
            )
            .and_then(|c| c.chosen)
            .and_then(|f| {
                super::refine::apply(p, &spectrum, &t, f, cfg.weighting, cfg.epsilon_weight)
                    .map(|x| (f, x))
            });
            if let Some((f, x)) = step {
                refine_factor = f;
                spectrum = x;
            }
        }
        if run.smooth_written {
            spectrum = smooth_to_resolution(&grid, &spectrum);
        }
        let f = FitResult {
            spectrum,
            best_epoch: run.best.1,
            best_loss: run.history.get(run.best.1).map_or(f64::NAN, |h| h.total),
            epochs_run,
            stopped_early: stop != StopReason::Epochs,
            stop_reason: stop,
            seconds: secs,
            history: run.history,
            seed: jobs[job].seed,
            scale: run.scale,
            held_out: run.held_out,
            d2_lambda: run.d2,
            refine_factor,
            restores: run.restores,
        };
        on_done(job, &f);
        (job, f)
    };
    for epoch in 0..cfg.train.epochs {
        let b = active.len();
        let wa: Vec<Tensor<4>> =
            st.w.iter()
                .map(|t| Tensor::from_inner(t.clone()).require_grad())
                .collect();
        let ba: Vec<Tensor<2>> =
            st.b.iter()
                .map(|t| Tensor::from_inner(t.clone()).require_grad())
                .collect();
        let mut u = net.forward_stacked(&wa, &ba, z_t.clone()).reshape([b, n]);
        if let Some(s) = &start {
            u = u + s.clone();
        }
        if cfg.net.positivity && !cfg.net.start_baseline {
            u = softplus(u, 1.0);
        }
        let mut x = match &smooth {
            None => u,
            Some((sidx, sw, k)) => {
                let mut x = u;
                for _ in 0..cfg.prior.smooth_passes.max(1) {
                    let g = x.select(1, sidx.clone()).reshape([b, n, *k]);
                    x = (g * sw.clone()).sum_dim(2).reshape([b, n]);
                }
                x
            }
        };
        if let Some(bt) = &base_t {
            x = x + bt.clone();
        }
        // Device loss (for the gradient only).
        let ya = y_t.clone();
        let wta = wt_t.clone();
        let g = x
            .clone()
            .gather(1, idx_t.clone())
            .reshape([b, mmax, kmax_op]);
        let data = match cfg.train.loss_mode {
            LossMode::Forward => {
                let pred = (g * w_t.clone()).sum_dim(2).reshape([b, mmax]);
                ((ya - pred).powi_scalar(2) * wta).sum_dim(1)
            }
            LossMode::Pixel => {
                let r = ya.reshape([b, mmax, 1]) - g;
                (r.powi_scalar(2) * w_t.clone() * wta.reshape([b, mmax, 1]))
                    .reshape([b, mmax * kmax_op])
                    .sum_dim(1)
            }
        };
        let c = conv(
            x.clone().reshape([b, 1, n]),
            bank_t.clone(),
            bank_b.clone(),
            cwt.pad,
        );
        let mut reg = c
            .abs()
            .reshape([b, cwt.scales * n])
            .sum_dim(1)
            .mul_scalar(cwt.lambda);
        if active.iter().any(|r| r.d2 > 0.0) {
            let d2 = x.clone().narrow(1, 2, n - 2) - x.clone().narrow(1, 1, n - 2).mul_scalar(2.0)
                + x.clone().narrow(1, 0, n - 2);
            reg = reg + d2.powi_scalar(2).sum_dim(1) * d2_t.clone();
        }
        let loss = (data + reg).sum();
        let xs: Vec<Elem> = backend::to_vec(x.clone().detach());

        // Host decisions, per row.
        let mut stop_now = vec![None; b];
        // Per row: take a snapshot of this epoch's weights; put a snapshot back after the step
        // (the last one after a jump, the lowest-loss one after a stall).
        let (mut snap_now, mut restore_now) = (vec![false; b], vec![None; b]);
        let restoring = cfg.train.max_restores > 0;
        let have_moments = st.mw.iter().all(Option::is_some);
        for (r, run) in active.iter_mut().enumerate() {
            let xr: Vec<f64> = xs[r * n..(r + 1) * n].iter().map(|&v| v as f64).collect();
            let (d, rg, c2, vc2) = run.terms.eval(&xr, cfg.train.loss_mode, &cwt);
            let validate = !run.held_out.is_empty();
            let vc2 = if validate { vc2 } else { f64::NAN };
            let total = d + rg;
            run.history.push(EpochLoss {
                epoch,
                total,
                data: d,
                reg: rg,
                chi2: c2,
                val_chi2: vc2,
            });
            let current = match run.ema.as_mut() {
                Some(e) if cfg.train.ema_decay > 0.0 => {
                    let a = cfg.train.ema_decay;
                    for (e, v) in e.iter_mut().zip(&xr) {
                        *e = a * *e + (1.0 - a) * v;
                    }
                    e.clone()
                }
                _ => {
                    run.ema = Some(xr.clone());
                    xr
                }
            };
            if run.at_base.is_none() && c2 <= run.stop_base {
                run.at_base = Some(epoch);
            }
            let reached = cfg.train.stop_chi2 > 0.0
                && (c2 <= run.stop_at
                    || (c2 <= run.stop_base && run.at_base.is_some_and(|e| epoch >= 2 * e)));
            let score = if validate { vc2 } else { total };
            if score < run.best.0 || (reached && !validate) {
                run.best = (score, epoch, current);
            }
            let stall_p = cfg.train.stall_restore_epochs;
            if cfg.train.early_stop_patience > 0 || stall_p > 0 {
                run.plateau.observe(epoch, total);
            }
            // A stall above the baseline: no improvement for `stall_restore_epochs` while the
            // best spectrum would fall back; restores left and a snapshot to go back to.
            let stall = restoring
                && stall_p > 0
                && run.plateau.since >= stall_p
                && run.restores.len() < cfg.train.max_restores
                && run.best_snap.is_some()
                && run.terms.eval(&run.best.2, cfg.train.loss_mode, &cwt).2 > run.stall_above;
            stop_now[r] = if reached {
                Some(StopReason::Discrepancy)
            } else if validate && epoch - run.best.1 >= cfg.train.validation_patience {
                Some(StopReason::Validation)
            } else if cfg.train.early_stop_patience > 0 && !stall {
                run.plateau
                    .stalled(cfg.train.early_stop_patience)
                    .then_some(StopReason::Patience)
            } else {
                None
            };
            if restoring && stop_now[r].is_none() {
                // NaN counts as a jump.
                let jump = run.snap.as_ref().is_some_and(|s| {
                    total.is_nan()
                        || total > cfg.train.restore_jump * s.total
                        || total > s.total + run.jump_margin
                });
                if jump {
                    if run.restores.len() < cfg.train.max_restores {
                        restore_now[r] = run.snap.clone();
                    }
                } else if stall {
                    restore_now[r] = run.best_snap.clone();
                    // Patience (and the next stall) count from the restore.
                    run.plateau.since = 0;
                } else if have_moments
                    && total.is_finite()
                    && epoch.is_multiple_of(cfg.train.restore_every)
                {
                    snap_now[r] = true;
                }
            }
            if epoch % 10 == 0 && r == 0 {
                pb.set_prefix(format!("loss {total:.4e} χ²/M {c2:.3}"));
            }
        }
        pb.inc(1);
        let last = epoch + 1 == cfg.train.epochs;
        let keep: Vec<usize> = (0..b).filter(|&r| stop_now[r].is_none()).collect();
        if snap_now.iter().any(|&s| s) {
            // Handles of this epoch's stack (the step below writes new tensors).
            let stack = Arc::new(StackSnap {
                w: st.w.clone(),
                b: st.b.clone(),
                mw: st.mw.iter().flatten().cloned().collect(),
                mb: st.mb.iter().flatten().cloned().collect(),
            });
            for (r, run) in active.iter_mut().enumerate() {
                if snap_now[r] {
                    let s = RowSnap {
                        stack: stack.clone(),
                        row: r,
                        epoch,
                        total: run.history.last().map_or(f64::NAN, |h| h.total),
                        time: run.time,
                    };
                    if cfg.train.stall_restore_epochs > 0
                        && run.best_snap.as_ref().is_none_or(|b| s.total < b.total)
                    {
                        run.best_snap = Some(s.clone());
                    }
                    run.snap = Some(s);
                }
            }
        }
        if !keep.is_empty() && !last {
            let grads = loss.backward();
            // Per row: its step count and its step size, with a linear warm-up over
            // `warmup_epochs` steps; rows grouped by equal (count, size).
            let mut groups: Vec<(i32, f64, Vec<i64>)> = Vec::new();
            for (r, run) in active.iter_mut().enumerate() {
                run.time += 1;
                let lr = match cfg.train.warmup_epochs {
                    0 => cfg.train.lr,
                    w => cfg.train.lr * (run.time as f64 / w as f64).min(1.0),
                } * run.lr_factor;
                match groups
                    .iter_mut()
                    .find(|g| g.0 == run.time && g.1.to_bits() == lr.to_bits())
                {
                    Some(g) => g.2.push(r as i64),
                    None => groups.push((run.time, lr, vec![r as i64])),
                }
            }
            let order = (groups.len() > 1).then(|| {
                let mut at = vec![0i64; b];
                for (k, &r) in groups.iter().flat_map(|g| g.2.iter()).enumerate() {
                    at[r as usize] = k as i64;
                }
                Tensor::<1, Int>::from_data(TensorData::new(at, [b]), &inner)
            });
            let groups: Vec<(i32, f64, Tensor<1, Int>)> = groups
                .into_iter()
                .map(|(t, lr, rows)| {
                    let n = rows.len();
                    (
                        t,
                        lr,
                        Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &inner),
                    )
                })
                .collect();
            for c in 0..nconv {
                let gw = wa[c]
                    .grad(&grads)
                    .expect("stacked weights are tracked leaves");
                let gb = ba[c]
                    .grad(&grads)
                    .expect("stacked biases are tracked leaves");
                let (p, s) = adam_rows(
                    st.w[c].clone(),
                    gw,
                    st.mw[c].take(),
                    &groups,
                    order.as_ref(),
                );
                st.w[c] = p;
                st.mw[c] = Some(s);
                let (p, s) = adam_rows(
                    st.b[c].clone(),
                    gb,
                    st.mb[c].take(),
                    &groups,
                    order.as_ref(),
                );
                st.b[c] = p;
                st.mb[c] = Some(s);
            }
        }
        // Jumped rows go back to their snapshots (after the step, which they discard).
        for (r, run) in active.iter_mut().enumerate() {
            let Some(s) = restore_now[r].take() else {
                continue;
            };
            for c in 0..nconv {
                let k = &s.stack;
                st.w[c] = put_row(st.w[c].clone(), r, &k.w[c], s.row, &inner);
                st.b[c] = put_row(st.b[c].clone(), r, &k.b[c], s.row, &inner);
                st.mw[c] = st.mw[c].take().map(|(m, v)| {
                    (
                        put_row(m, r, &k.mw[c].0, s.row, &inner),
                        put_row(v, r, &k.mw[c].1, s.row, &inner),
                    )
                });
                st.mb[c] = st.mb[c].take().map(|(m, v)| {
                    (
                        put_row(m, r, &k.mb[c].0, s.row, &inner),
                        put_row(v, r, &k.mb[c].1, s.row, &inner),
                    )
                });
            }
            run.time = s.time;
            run.lr_factor *= cfg.train.restore_lr_factor;
            run.restores.push(Restore {
                epoch,
                to_epoch: s.epoch,
            });
            // Jumps are judged against the snapshot the fit continues from.
            run.snap = Some(s);
        }
        // Rows that stopped leave the batch.
        if keep.len() < b {
            let mut still = Vec::with_capacity(keep.len());
            for (r, run) in active.into_iter().enumerate() {
                match stop_now[r] {
                    Some(reason) => {
                        let secs = run.t0.elapsed().as_secs_f64();
                        done.push(finish(run, epoch + 1, reason, secs));
                    }
                    None => still.push(run),
                }
            }
            active = still;
            if active.is_empty() {
                break;
            }
            let ki: Vec<i64> = keep.iter().map(|&r| r as i64).collect();
            let kt = Tensor::<1, Int>::from_data(TensorData::new(ki.clone(), [keep.len()]), &inner);
            let ka = Tensor::<1, Int>::from_data(TensorData::new(ki, [keep.len()]), device);
            let sel4 = |t: Tensor<4>| t.select(0, kt.clone());
            let sel2 = |t: Tensor<2>| t.select(0, kt.clone());
            st.w = st.w.drain(..).map(sel4).collect();
            st.b = st.b.drain(..).map(sel2).collect();
            st.mw = st
                .mw
                .drain(..)
                .map(|s| s.map(|(m, v)| (sel4(m), sel4(v))))
                .collect();
            st.mb = st
                .mb
                .drain(..)
                .map(|s| s.map(|(m, v)| (sel2(m), sel2(v))))
                .collect();
            idx_t = idx_t.select(0, ka.clone());
            w_t = w_t.select(0, ka.clone());
            y_t = y_t.select(0, ka.clone());
            wt_t = wt_t.select(0, ka.clone());
            d2_t = d2_t.select(0, ka.clone());
            z_t = z_t.select(0, ka.clone());
            start = start.map(|s| s.select(0, ka.clone()));
            base_t = base_t.map(|s| s.select(0, ka.clone()));
        }
    }
    for run in active {
        let secs = run.t0.elapsed().as_secs_f64();
        let e = run.history.len();
        done.push(finish(run, e, StopReason::Epochs, secs));
    }
    done.sort_by_key(|d| d.0);
    done.into_iter().map(|(_, f)| f).collect()
}
