//! Fitting the deep image prior: Adam on the U-Net weights, loss = data term + λ·Σ|CWT|.
//!
//! Fluxes are divided by `scale` (median |y|) before fitting so that the spectrum the network
//! produces is O(1) and the regularisation weight is independent of the source's brightness.
//! The data term is χ² of the forward model (`forward`) or the plan's pixel expansion
//! (`pixel`); the spectrum with the lowest total loss seen is returned.
//!
//! A deep image prior regularises by stopping: left running it fits the noise (χ²/M ≈ 0.3 after
//! 3000 epochs on a simulated source). The fit can stop when χ²/M of the forward model reaches
//! `stop_chi2` (Morozov's discrepancy principle), or on a held-out validation split of the
//! observations (`validation_fraction`): the spectrum of the epoch with the lowest held-out χ² is
//! returned. Optional terms: the output passed through one resolution element λ/R
//! (`smooth_output`), a second-difference penalty tied to the Tikhonov baseline's discrepancy λ
//! (`smoothness_weight`), and an exponential moving average of the output (`ema_decay`).

use burn::tensor::module::conv1d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Serialize;

use super::forward::Operator;
use super::grid::{linspace, resolution_width};
use super::kernel::ricker_bank;
use super::{DipConfig, LossMode, Weighting};

use crate::backend::{self, Elem};

/// Observations in fitting units plus the operator, ready to upload.
#[derive(Clone, Debug)]
pub struct Problem<'a> {
    pub op: &'a Operator,
    /// Fluxes and errors in µJy.
    pub y: &'a [f64],
    pub sigma: &'a [f64],
}

/// Median |y| (1 if all zero): the unit the network works in.
pub fn flux_scale(y: &[f64]) -> f64 {
    let mut a: Vec<f64> = y.iter().map(|v| v.abs()).collect();
    a.sort_by(|p, q| p.total_cmp(q));
    let n = a.len();
    let med = if n == 0 {
        0.0
    } else if n % 2 == 1 {
        a[n / 2]
    } else {
        0.5 * (a[n / 2 - 1] + a[n / 2])
    };
    if med > 0.0 && med.is_finite() {
        med
    } else {
        1.0
    }
}

/// Per-observation weights in scaled units.
pub fn obs_weights(sigma_scaled: &[f64], weighting: Weighting, eps: f64) -> Vec<f64> {
    sigma_scaled
        .iter()
        .map(|&s| match weighting {
            Weighting::Variance => 1.0 / (s * s),
            Weighting::Sigma => 1.0 / (s + eps),
        })
        .collect()
}

/// One epoch's losses (scaled units).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct EpochLoss {
    pub epoch: usize,
    pub total: f64,
    pub data: f64,
    pub reg: f64,
    /// χ²/M of the forward model with 1/σ² weights over the fitted (non-held-out) observations,
    /// whatever the loss mode.
    pub chi2: f64,
    /// χ²/M over the held-out observations (NaN without a validation split).
    pub val_chi2: f64,
}

/// Why a fit ended.
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All `epochs` ran.
    Epochs,
    /// χ²/M reached `stop_chi2`.
    Discrepancy,
    /// No relative improvement for `early_stop_patience` epochs.
    Patience,
    /// The held-out χ² did not improve for `validation_patience` epochs.
    Validation,
    /// The fit ended fitting the data worse than the Tikhonov baseline (and than the
    /// discrepancy target), which is returned instead (`train.fallback_baseline`).
    Baseline,
}

#[derive(Clone, Debug)]
pub struct FitResult {
    /// Best spectrum on the grid, µJy.
    pub spectrum: Vec<f64>,
    pub best_epoch: usize,
    pub best_loss: f64,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub stop_reason: StopReason,
    pub seconds: f64,
    pub history: Vec<EpochLoss>,
    pub seed: u64,
    pub scale: f64,
    /// Observations held out for validation (indices into the problem's rows).
    pub held_out: Vec<usize>,
    /// Weight of ‖D2 x‖² used (scaled units; 0 = none).
    pub d2_lambda: f64,
    /// Factor of the baseline's λ at which the held-out-checked Tikhonov step was taken after
    /// the fit (0 = not taken; see [`super::refine`]).
    pub refine_factor: f64,
    /// The fit's restores to a snapshot after a jump of its loss (`train.restore_jump`), in order.
    pub restores: Vec<Restore>,
}

/// One restore: at `epoch` the total loss exceeded `train.restore_jump` × the loss at
/// `to_epoch`, whose weights and Adam moments the fit continued from (at the next epoch).
#[derive(Clone, Copy, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Restore {
    pub epoch: usize,
    pub to_epoch: usize,
}

/// Device-side constants of the loss.
pub struct LossTerms {
    idx: Tensor<1, Int>,
    w: Tensor<2>,
    y: Tensor<2>,
    wt: Tensor<2>,
    /// 1/σ² (scaled units) on fitted rows, 0 on held-out rows, for χ².
    ivar: Tensor<2>,
    /// 1/σ² on held-out rows, 0 elsewhere.
    ivar_val: Tensor<2>,
    m_fit: usize,
    m_val: usize,
    bank: Tensor<3>,
    pad: usize,
    m: usize,
    k: usize,
    mode: LossMode,
    lambda: f64,
    d2_lambda: f64,
    /// The λ/R boxcar (gathered rows, one per grid pixel) when `smooth_output`, and how many
    /// times it is applied.
    smooth: Option<(Tensor<1, Int>, Tensor<2>, usize)>,
    smooth_passes: usize,
}

/// The λ/R resolution element as an operator on the grid: row j is the Δν-weighted boxcar of
/// width λ_j/R centred on pixel j (what a filter there would measure).
pub fn resolution_operator(grid: &[f64]) -> Operator {
    let widths: Vec<f64> = grid.iter().map(|&l| resolution_width(l)).collect();
    Operator::build(grid, grid, &widths).0
}

impl LossTerms {
    /// `held_out` rows are excluded from the loss and scored separately; `d2_lambda` weighs
    /// ‖D2 x‖² (scaled units).
    pub fn new(
        cfg: &DipConfig,
        p: &Problem,
        scale: f64,
        held_out: &[usize],
        d2_lambda: f64,
        device: &Device,
    ) -> Self {
        let op = p.op;
        let ys: Vec<f64> = p.y.iter().map(|v| v / scale).collect();
        let ss: Vec<f64> = p.sigma.iter().map(|v| v / scale).collect();
        let mut wt = obs_weights(&ss, cfg.weighting, cfg.epsilon_weight);
        let mut ivar = obs_weights(&ss, Weighting::Variance, 0.0);
        let mut ivar_val = vec![0.0; op.m];
        for &i in held_out {
            ivar_val[i] = ivar[i];
            ivar[i] = 0.0;
            wt[i] = 0.0;
        }
        let f = |v: &[f64]| v.iter().map(|&x| x as Elem).collect::<Vec<_>>();
        let int = |v: &[usize]| {
            let v: Vec<i64> = v.iter().map(|&i| i as i64).collect();
            let n = v.len();
            Tensor::<1, Int>::from_data(TensorData::new(v, [n]), device)
        };
        let (bank, kmax, pad) = ricker_bank(&cfg.prior.cwt_scales);
        let ns = cfg.prior.cwt_scales.len();
        let smooth = cfg.prior.smooth_output.then(|| {
            let grid = linspace(cfg.wavelength_min, cfg.wavelength_max, op.n);
            let s = resolution_operator(&grid);
            (
                int(&s.idx),
                backend::tensor_from(f(&s.w), [s.m, s.k], device),
                s.k,
            )
        });
        LossTerms {
            idx: int(&op.idx),
            w: backend::tensor_from(f(&op.w), [op.m, op.k], device),
            y: backend::tensor_from(f(&ys), [op.m, 1], device),
            wt: backend::tensor_from(f(&wt), [op.m, 1], device),
            ivar: backend::tensor_from(f(&ivar), [op.m, 1], device),
            ivar_val: backend::tensor_from(f(&ivar_val), [op.m, 1], device),
            m_fit: op.m - held_out.len(),
            m_val: held_out.len(),
            bank: backend::tensor_from(f(&bank), [ns, 1, kmax], device),
            pad,
            m: op.m,
            k: op.k,
            mode: cfg.train.loss_mode,
            lambda: cfg.prior.cwt_weight,
            d2_lambda,
            smooth,
            smooth_passes: cfg.prior.smooth_passes.max(1),
        }
    }

    /// The spectrum for a network output u [N]: u itself, or u seen through λ/R
    /// (`smooth_passes` times: 2 = a triangle of FWHM λ/R, without the boxcar's sidelobes).
    pub fn spectrum(&self, u: Tensor<1>) -> Tensor<1> {
        match &self.smooth {
            None => u,
            Some((idx, w, k)) => {
                let n = u.dims()[0];
                let mut x = u;
                for _ in 0..self.smooth_passes {
                    let g = x.select(0, idx.clone()).reshape([n, *k]);
                    x = (g * w.clone()).sum_dim(1).reshape([n]);
                }
                x
            }
        }
    }

    /// Predicted observations H x for a spectrum x: [N] → [m, 1].
    pub fn predict(&self, x: Tensor<1>) -> Tensor<2> {
        let g = x.select(0, self.idx.clone()).reshape([self.m, self.k]);
        (g * self.w.clone()).sum_dim(1)
    }

    /// χ²/M of the forward model for spectrum x [N] over the fitted rows, and over the held-out
    /// rows (0 without any): [2].
    pub fn chi2_per_obs(&self, x: Tensor<1>) -> Tensor<1> {
        let r2 = (self.y.clone() - self.predict(x)).powi_scalar(2);
        let fit = (r2.clone() * self.ivar.clone())
            .sum()
            .div_scalar(self.m_fit.max(1) as f64);
        let val = (r2 * self.ivar_val.clone())
            .sum()
            .div_scalar(self.m_val.max(1) as f64);
        Tensor::cat(vec![fit, val], 0)
    }

    /// Data term for spectrum x [N].
    pub fn data(&self, x: Tensor<1>) -> Tensor<1> {
        match self.mode {
            LossMode::Forward => {
                let r = self.y.clone() - self.predict(x);
                (r.powi_scalar(2) * self.wt.clone()).sum()
            }
            LossMode::Pixel => {
                let g = x.select(0, self.idx.clone()).reshape([self.m, self.k]);
                let r = self.y.clone() - g;
                (r.powi_scalar(2) * self.w.clone() * self.wt.clone()).sum()
            }
        }
    }

    /// CWT coefficients of x [N] at every scale: [S, N].
    pub fn cwt(&self, x: Tensor<1>) -> Tensor<2> {
        let n = x.dims()[0];
        let xp = x
            .reshape([1, 1, n])
            .pad([(self.pad, self.pad)], PadMode::Reflect);
        let c = conv1d(
            xp,
            self.bank.clone(),
            None,
            ConvOptions::new([1], [0], [1], 1),
        );
        let s = c.dims()[1];
        c.reshape([s, n])
    }

    /// λ·Σ|CWT(x)| + λ_D2·‖D2 x‖².
    pub fn reg(&self, x: Tensor<1>) -> Tensor<1> {
        let cwt = self.cwt(x.clone()).abs().sum().mul_scalar(self.lambda);
        if self.d2_lambda > 0.0 {
            let n = x.dims()[0];
            let d2 = x.clone().narrow(0, 2, n - 2) - x.clone().narrow(0, 1, n - 2).mul_scalar(2.0)
                + x.narrow(0, 0, n - 2);
            cwt + d2.powi_scalar(2).sum().mul_scalar(self.d2_lambda)
        } else {
            cwt
        }
    }
}

/// A validation split: `round(fraction·m)` rows drawn without replacement by a generator of its
/// own (seeded from `seed`), so that the split does not shift the network's initialisation.
pub fn validation_rows(m: usize, fraction: f64, seed: u64) -> Vec<usize> {
    use rand::SeedableRng;
    use rand::seq::index::sample;
    let k = ((fraction * m as f64).round() as usize).min(m.saturating_sub(1));
    if k == 0 {
        return Vec::new();
    }
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x7661_6c69_6461_7465);
    let mut v = sample(&mut r, m, k).into_vec();
    v.sort_unstable();
    v
}
