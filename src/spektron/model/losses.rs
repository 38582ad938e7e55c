//! Pretraining losses, each a standalone function on tensors (or host data for the mask).

use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Int, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Loss terms of one step (already weighted sum in `total`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LossTerms {
    pub total: f64,
    pub msrp: f64,
    pub contrastive: f64,
    pub denoise: f64,
    pub ot: f64,
    pub physics: f64,
    pub vib: f64,
    /// MoE balance loss (mean of the two views; 0 without MoE).
    #[serde(default)]
    pub moe: f64,
}

/// Contiguous block mask over `n` patches: blocks of `block` patches at random starts until
/// exactly `round(ratio·n)` patches are masked (the last block is cut to hit the count).
pub fn block_mask(n: usize, ratio: f64, block: usize, rng: &mut impl Rng) -> Vec<bool> {
    let target = ((ratio * n as f64).round() as usize).min(n);
    let block = block.max(1).min(n.max(1));
    let mut m = vec![false; n];
    let mut count = 0;
    while count < target {
        let start = rng.random_range(0..=n - block);
        for v in m.iter_mut().skip(start).take(block) {
            if count < target && !*v {
                *v = true;
                count += 1;
            }
        }
    }
    m
}

/// Which patches MSRP masks (`spektron.loss.mask_strategy`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum MaskStrategy {
    /// Blocks of `mask_block` patches at uniform random starts ([`block_mask`]).
    #[default]
    Contiguous,
    /// Single patches drawn uniformly without replacement ([`random_mask`]).
    Random,
    /// Blocks of `mask_block` patches centred on patches drawn with probability proportional to
    /// their energy plus the mean energy ([`peak_mask`]): patches holding bands (large token
    /// values) are masked more often than flat ones.
    PeakAware,
}

/// Scattered mask: exactly `round(ratio·n)` patches, drawn uniformly without replacement.
pub fn random_mask(n: usize, ratio: f64, rng: &mut impl Rng) -> Vec<bool> {
    let target = ((ratio * n as f64).round() as usize).min(n);
    let mut idx: Vec<usize> = (0..n).collect();
    // Partial Fisher–Yates: the first `target` entries are a uniform sample.
    for i in 0..target {
        let j = rng.random_range(i..n);
        idx.swap(i, j);
    }
    let mut m = vec![false; n];
    for &i in &idx[..target] {
        m[i] = true;
    }
    m
}

/// Peak-aware block mask over `n` patches with energies `energy` (one per patch, ≥ 0): block
/// centres are drawn with probability ∝ energy + mean energy (uniform when every energy is 0),
/// blocks of `block` patches are masked around them until exactly `round(ratio·n)` patches are
/// masked (the last block is cut to hit the count).
pub fn peak_mask(energy: &[f64], ratio: f64, block: usize, rng: &mut impl Rng) -> Vec<bool> {
    let n = energy.len();
    let target = ((ratio * n as f64).round() as usize).min(n);
    let block = block.max(1).min(n.max(1));
    let mean = energy.iter().sum::<f64>() / n.max(1) as f64;
    let mut cum = Vec::with_capacity(n);
    let mut total = 0.0;
    for &e in energy {
        total += if mean > 0.0 && e.is_finite() {
            e.max(0.0) + mean
        } else {
            1.0
        };
        cum.push(total);
    }
    let mut m = vec![false; n];
    let mut count = 0;
    while count < target {
        let u = rng.random::<f64>() * total;
        let c = cum.partition_point(|&x| x <= u).min(n - 1);
        let start = c.saturating_sub(block / 2).min(n - block);
        for v in m.iter_mut().skip(start).take(block) {
            if count < target && !*v {
                *v = true;
                count += 1;
            }
        }
    }
    m
}

/// The mask of one spectrum's `n` patches under `strategy`; `patches` (row-major `[n, patch]`
/// token values) are read by the peak-aware strategy only.
pub fn strategy_mask(
    strategy: MaskStrategy,
    patches: &[f32],
    n: usize,
    ratio: f64,
    block: usize,
    rng: &mut impl Rng,
) -> Vec<bool> {
    match strategy {
        MaskStrategy::Contiguous => block_mask(n, ratio, block, rng),
        MaskStrategy::Random => random_mask(n, ratio, rng),
        MaskStrategy::PeakAware => {
            let k = patches.len() / n.max(1);
            let energy: Vec<f64> = patches
                .chunks(k.max(1))
                .take(n)
                .map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum())
                .collect();
            peak_mask(&energy, ratio, block, rng)
        }
    }
}

/// Mean squared error over the masked patches only: Σ mask·mean_k (p−t)² / Σ mask.
/// `pred`, `target`: `[B, P, K]`; `mask`: `[B, P]` of 0/1.
pub fn masked_mse(pred: Tensor<3>, target: Tensor<3>, mask: Tensor<2>) -> Tensor<1> {
    let [b, p, _] = pred.dims();
    let per = (pred - target).powi_scalar(2).mean_dim(2).reshape([b, p]);
    (per * mask.clone()).sum() / mask.sum().clamp_min(1.0)
}

/// Plain MSE (denoising: reconstruction of a corrupted view vs the clean patches).
pub fn mse<const D: usize>(pred: Tensor<D>, target: Tensor<D>) -> Tensor<1> {
    (pred - target).powi_scalar(2).mean()
}

/// Symmetric InfoNCE between two views `[B, Z]`: row i of `a` must pick row i of `b` among
/// the batch (cosine similarity / τ).
pub fn info_nce(a: Tensor<2>, b: Tensor<2>, tau: f64) -> Tensor<1> {
    let [n, _] = a.dims();
    let norm = |x: Tensor<2>| {
        let l = x.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-8);
        x / l
    };
    let logits = norm(a).matmul(norm(b).transpose()) / tau;
    let eye = Tensor::<2, Int>::eye(n, &logits.device()).float();
    let ab = -(log_softmax(logits.clone(), 1) * eye.clone()).sum() / n as f64;
    let ba = -(log_softmax(logits.transpose(), 1) * eye).sum() / n as f64;
    (ab + ba) / 2.0
}

/// Entropic optimal transport cost ⟨P, C⟩ between two point clouds `[N, Z]`, `[M, Z]` with
/// uniform weights and squared-Euclidean cost, by log-domain Sinkhorn (`reg` = ε).
pub fn sinkhorn(x: Tensor<2>, y: Tensor<2>, reg: f64, iters: usize) -> Tensor<1> {
    let [n, _] = x.dims();
    let [m, _] = y.dims();
    let xx = x.clone().powi_scalar(2).sum_dim(1); // [N,1]
    let yy = y.clone().powi_scalar(2).sum_dim(1).transpose(); // [1,M]
    let c = (xx + yy - x.matmul(y.transpose()) * 2.0).clamp_min(0.0); // [N,M]
    let k = c.clone().neg() / reg;
    let (la, lb) = (-(n as f64).ln(), -(m as f64).ln());
    let dev = c.device();
    let mut f = Tensor::<2>::zeros([n, 1], &dev);
    let mut g = Tensor::<2>::zeros([1, m], &dev);
    for _ in 0..iters {
        f = lse(k.clone() + g.clone(), 1).neg() + la;
        g = lse(k.clone() + f.clone(), 0).neg() + lb;
    }
    let plan = (k + f + g).exp();
    (plan * c).sum()
}

/// Stable log-sum-exp along `dim` (kept as size 1).
fn lse(x: Tensor<2>, dim: usize) -> Tensor<2> {
    let m = x.clone().max_dim(dim);
    (x - m.clone()).exp().sum_dim(dim).log() + m
}

/// Smoothness: mean squared second difference along the spectrum `[B, N]`.
pub fn smoothness(s: Tensor<2>) -> Tensor<1> {
    let [_, n] = s.dims();
    let d2 =
        s.clone().narrow(1, 2, n - 2) - s.clone().narrow(1, 1, n - 2) * 2.0 + s.narrow(1, 0, n - 2);
    d2.powi_scalar(2).mean()
}

/// Non-negativity: mean of relu(−s)².
pub fn nonneg(s: Tensor<2>) -> Tensor<1> {
    relu(s.neg()).powi_scalar(2).mean()
}

/// Derivative consistency: mean squared difference of first differences.
pub fn derivative(pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    let [_, n] = pred.dims();
    let dp = pred.clone().narrow(1, 1, n - 1) - pred.narrow(1, 0, n - 1);
    let dt = target.clone().narrow(1, 1, n - 1) - target.narrow(1, 0, n - 1);
    (dp - dt).powi_scalar(2).mean()
}

/// KL(N(μ, σ²) ‖ N(0, 1)) summed over latent dims, averaged over the batch.
pub fn vib_kl(mu: Tensor<2>, logvar: Tensor<2>) -> Tensor<1> {
    let [b, _] = mu.dims();
    ((mu.powi_scalar(2) + logvar.clone().exp() - logvar - 1.0).sum() * 0.5) / b as f64
}
