//! Fitting the deep image prior: Adam on the U-Net weights, loss = data term + λ·Σ|CWT|.
//!
//! Fluxes are divided by `scale` (median |y|) before fitting so that the spectrum the network
//! produces is O(1) and the regularisation weight is independent of the source's brightness.
//! The data term is χ² of the forward model (`forward`) or the plan's pixel expansion
//! (`pixel`); the spectrum with the lowest total loss seen is returned.
//!
//! A deep image prior regularises by stopping: left running it fits the noise (χ²/M ≈ 0.3 after
//! 3000 epochs on a simulated source). By default the fit stops when χ²/M of the forward model
//! reaches `stop_chi2` (Morozov's discrepancy principle: the data are fitted to their noise
//! level, no further).

use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::module::conv1d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::ProgressBar;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

use super::forward::Operator;
use super::kernel::ricker_bank;
use super::unet::{UNet, UNetSpec};
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
    /// χ²/M of the forward model with 1/σ² weights, whatever the loss mode.
    pub chi2: f64,
}

/// Why a fit ended.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All `epochs` ran.
    Epochs,
    /// χ²/M reached `stop_chi2`.
    Discrepancy,
    /// No relative improvement for `early_stop_patience` epochs.
    Patience,
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
}

/// Device-side constants of the loss.
pub struct LossTerms {
    idx: Tensor<1, Int>,
    w: Tensor<2>,
    y: Tensor<2>,
    wt: Tensor<2>,
    /// 1/σ² (scaled units), for χ² whatever the loss weights.
    ivar: Tensor<2>,
    bank: Tensor<3>,
    pad: usize,
    m: usize,
    k: usize,
    mode: LossMode,
    lambda: f64,
}

impl LossTerms {
    pub fn new(cfg: &DipConfig, p: &Problem, scale: f64, device: &Device) -> Self {
        let op = p.op;
        let ys: Vec<f64> = p.y.iter().map(|v| v / scale).collect();
        let ss: Vec<f64> = p.sigma.iter().map(|v| v / scale).collect();
        let wt = obs_weights(&ss, cfg.weighting, cfg.epsilon_weight);
        let ivar = obs_weights(&ss, Weighting::Variance, 0.0);
        let f = |v: &[f64]| v.iter().map(|&x| x as Elem).collect::<Vec<_>>();
        let idx: Vec<i64> = op.idx.iter().map(|&i| i as i64).collect();
        let (bank, kmax, pad) = ricker_bank(&cfg.cwt_scales);
        let ns = cfg.cwt_scales.len();
        LossTerms {
            idx: Tensor::<1, Int>::from_data(TensorData::new(idx, [op.m * op.k]), device),
            w: backend::tensor_from(f(&op.w), [op.m, op.k], device),
            y: backend::tensor_from(f(&ys), [op.m, 1], device),
            wt: backend::tensor_from(f(&wt), [op.m, 1], device),
            ivar: backend::tensor_from(f(&ivar), [op.m, 1], device),
            bank: backend::tensor_from(f(&bank), [ns, 1, kmax], device),
            pad,
            m: op.m,
            k: op.k,
            mode: cfg.loss_mode,
            lambda: cfg.regularization_weight,
        }
    }

    /// Predicted observations H x for a spectrum x: [N] → [m, 1].
    pub fn predict(&self, x: Tensor<1>) -> Tensor<2> {
        let g = x.select(0, self.idx.clone()).reshape([self.m, self.k]);
        (g * self.w.clone()).sum_dim(1)
    }

    /// χ²/M of the forward model for spectrum x [N].
    pub fn chi2_per_obs(&self, x: Tensor<1>) -> Tensor<1> {
        let r = self.y.clone() - self.predict(x);
        (r.powi_scalar(2) * self.ivar.clone())
            .sum()
            .div_scalar(self.m as f64)
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

    /// λ·Σ|CWT(x)|.
    pub fn reg(&self, x: Tensor<1>) -> Tensor<1> {
        self.cwt(x).abs().sum().mul_scalar(self.lambda)
    }
}

/// Fit one network with `seed`. `device` must be an autodiff device.
pub fn fit(
    cfg: &DipConfig,
    p: &Problem,
    device: &Device,
    seed: u64,
    pb: &ProgressBar,
) -> FitResult {
    let t0 = Instant::now();
    let n = p.op.n;
    let scale = if cfg.scale_flux { flux_scale(p.y) } else { 1.0 };
    let mut rng = backend::seeded(device, seed);
    let terms = LossTerms::new(cfg, p, scale, device);
    let normal = Normal::new(0.0, cfg.noise_std.max(0.0)).expect("finite noise std");
    let z: Vec<Elem> = (0..n).map(|_| normal.sample(&mut rng) as Elem).collect();
    let z = backend::tensor_from(z, [1, 1, n], device);

    let spec = UNetSpec {
        length: n,
        depth: cfg.depth,
        filters: cfg.filters,
        kernel_size: cfg.kernel_size,
        leaky_slope: cfg.leaky_slope,
        init: cfg.init,
        positivity: cfg.positivity,
    };
    let mut net = UNet::new(&spec, device);
    let mut opt = AdamConfig::new().init();

    let mut best = (f64::INFINITY, 0usize, vec![0f32; n]);
    let mut history = Vec::with_capacity(cfg.epochs);
    let mut last_improve = (f64::INFINITY, 0usize);
    let mut stop = StopReason::Epochs;
    let mut epochs_run = 0;
    for epoch in 0..cfg.epochs {
        let x = net.forward(z.clone()).reshape([n]);
        let data = terms.data(x.clone());
        let reg = terms.reg(x.clone());
        let chi2 = terms.chi2_per_obs(x.clone().detach());
        let loss = data.clone() + reg.clone();
        // One host read for all three numbers.
        let v = backend::to_vec(Tensor::cat(vec![data.detach(), reg.detach(), chi2], 0));
        let (d, r, c2) = (v[0] as f64, v[1] as f64, v[2] as f64);
        let total = d + r;
        history.push(EpochLoss {
            epoch,
            total,
            data: d,
            reg: r,
            chi2: c2,
        });
        epochs_run = epoch + 1;
        // At the discrepancy stop this epoch's spectrum is returned: it is the one that meets the
        // noise level (an earlier lower-loss epoch may not).
        let reached = cfg.stop_chi2 > 0.0 && c2 <= cfg.stop_chi2;
        if total < best.0 || reached {
            best = (total, epoch, backend::to_vec(x.detach()));
        }
        if reached {
            stop = StopReason::Discrepancy;
            pb.inc(1);
            break;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        net = opt.step(cfg.lr, net, grads);
        if epoch % 10 == 0 {
            pb.set_prefix(format!("loss {total:.4e} χ²/M {c2:.3}"));
        }
        pb.inc(1);
        if cfg.early_stop_patience > 0 {
            if total < last_improve.0 * (1.0 - cfg.early_stop_min_delta) {
                last_improve = (total, epoch);
            } else if epoch - last_improve.1 >= cfg.early_stop_patience {
                stop = StopReason::Patience;
                break;
            }
        }
    }
    let _ = net.valid();
    FitResult {
        spectrum: best.2.iter().map(|&v| v as f64 * scale).collect(),
        best_epoch: best.1,
        best_loss: best.0,
        epochs_run,
        stopped_early: stop != StopReason::Epochs,
        stop_reason: stop,
        seconds: t0.elapsed().as_secs_f64(),
        history,
        seed,
        scale,
    }
}
