//! Issue #17, item 1: two ways to let the Spektron network add to the PLS/SBC calibration on N
//! target samples without replacing it.
//!
//! - **PLS-anchored head** ([`fit_head`], `spektron.experiment.pls_head`): a regression head on
//!   the latent-variable contributions of the source-instrument PLS model (the prediction with A
//!   LVs is `ȳ + Σₐ (x − x̄)·dₐ`, `dₐ = Bₐ − Bₐ₋₁` = the a-th LV's weight vector times its
//!   y-loading) and on the network's z_chem mean: `ŷ = m + σ·(Σₐ qₐ fₐ + c + v·z)`, with
//!   `fₐ = b₀ (x − x̄)·dₐ / σ`. It starts at `qₐ = 1`, `c` = the SBC offset, `v = 0`, so its
//!   initial prediction is PLS + slope/bias exactly (`a₀ + b₀ ŷ_PLS`); then the head and LoRA
//!   adapters of the network are trained on the N target samples with the penalty
//!   `λ (Σₐ (qₐ − 1)² + ‖v‖²)` towards that start. Without the network (`net = None`) the same
//!   head is a classical re-weighting of the PLS latent variables (the honest control row).
//! - **Gate of the residual correction** ([`gate_factor`], `spektron.experiment.residual_gate_folds`):
//!   the residual arm's network correction `c(x)` is scaled by γ ∈ [0, γ_max], the least-squares
//!   factor of the out-of-fold residuals on the out-of-fold corrections (k-fold on the N target
//!   samples: SBC and the LoRA correction refitted without the held-out fold).

use burn::module::{Module, Param};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor};

use super::baselines::pls::Pls;
use super::model::finetune::patches;
use super::model::{SpektronModel, TokenLayout, lora};
use crate::backend::{tensor_from, to_vec};
use crate::error::SpxError;

/// The head's trainable numbers (standardised units).
#[derive(Module, Debug)]
pub struct AnchoredHead {
    /// Weights of the A PLS latent-variable contributions (start 1).
    pub q: Param<Tensor<1>>,
    /// Offset (start: the SBC offset).
    pub c: Param<Tensor<1>>,
    /// Weights of z_chem's mean `[z_chem, 1]` (start 0).
    pub v: Param<Tensor<2>>,
}

/// The network (with LoRA adapters) and the head, trained together.
#[derive(Module, Debug)]
pub struct Anchored {
    pub net: Option<SpektronModel>,
    pub head: AnchoredHead,
}

/// Where the head starts: the source PLS model with `lvs` LVs, SBC `y ≈ a0 + b0·ŷ_PLS` fitted on
/// the N target samples, and the standardisation `(y_mean, y_std)` of the head's output.
#[derive(Clone, Copy, Debug)]
pub struct Start<'a> {
    pub pls: &'a Pls,
    pub lvs: usize,
    pub a0: f64,
    pub b0: f64,
    pub y_mean: f64,
    pub y_std: f64,
}

impl Start<'_> {
    /// Number of latent-variable contributions (the PLS model's LVs, at most `lvs`).
    pub fn n_lv(&self) -> usize {
        self.lvs.clamp(1, self.pls.n_lv())
    }

    /// `fₐ = b₀ (x − x̄)·dₐ / σ` of every row of `x` (`[n, p]` row-major): `[n, A]` row-major.
    pub fn features(&self, x: &[f32], p: usize) -> Vec<f32> {
        let a = self.n_lv();
        let d: Vec<Vec<f64>> = (0..a)
            .map(|i| {
                let hi = &self.pls.coefs[i];
                if i == 0 {
                    hi.to_vec()
                } else {
                    let lo = &self.pls.coefs[i - 1];
                    hi.iter().zip(lo).map(|(h, l)| h - l).collect()
                }
            })
            .collect();
        let mut out = Vec::with_capacity(x.len() / p.max(1) * a);
        for row in x.chunks(p) {
            let xc: Vec<f64> = row
                .iter()
                .zip(&self.pls.x_mean)
                .map(|(&v, m)| f64::from(v) - m)
                .collect();
            for di in &d {
                let s: f64 = xc.iter().zip(di).map(|(u, w)| u * w).sum();
                out.push((self.b0 * s / self.y_std) as f32);
            }
        }
        out
    }

    /// The offset `c` that makes the start equal `a0 + b0·ŷ_PLS`.
    pub fn offset(&self) -> f64 {
        (self.a0 + self.b0 * self.pls.y_mean - self.y_mean) / self.y_std
    }
}

/// Training of the head (`spektron.experiment.pls_head_*`, LoRA size from `[spektron.finetune]`).
#[derive(Clone, Copy, Debug)]
pub struct HeadSettings {
    /// Full-batch AdamW steps (0: the start itself).
    pub steps: usize,
    pub lr: f64,
    /// λ of the penalty towards the start.
    pub penalty: f64,
    pub lora_rank: usize,
    pub lora_alpha: f64,
}

/// One sample set as the head reads it: the model-input spectra (`[n, p]`, for the PLS features),
/// the same spectra as the network reads them (centred), modality codes.
pub struct HeadInput<'a> {
    pub x_pls: &'a [f32],
    pub x_net: &'a [f32],
    pub modality: &'a [i8],
}

/// A trained head (and network).
pub struct HeadFit {
    model: Anchored,
    y_mean: f64,
    y_std: f64,
    /// Final q (LV weights), c and ‖v‖ (for the report).
    pub q: Vec<f64>,
    pub c: f64,
    pub v_norm: f64,
}

fn domains(m: &[i8], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = m.iter().map(|&r| i64::from(r)).collect();
    Tensor::<1, Int>::from_ints(v.as_slice(), device)
}

impl Anchored {
    /// Standardised predictions `[n]` of `features` `[n, A]` (+ the network on `x_net`).
    fn forward(
        &self,
        lay: &TokenLayout,
        features: Tensor<2>,
        inp: &HeadInput,
        device: &Device,
    ) -> Tensor<1> {
        let n = inp.modality.len();
        let a = self.head.q.dims()[0];
        let mut t =
            features.matmul(self.head.q.val().reshape([a, 1])) + self.head.c.val().reshape([1, 1]);
        if let Some(net) = &self.net {
            let rows: Vec<usize> = (0..n).collect();
            let h = net.encode(
                patches(lay, inp.x_net, &rows, device),
                domains(inp.modality, device),
                None,
            );
            let [b, _, d] = h.dims();
            let z = net.heads.chem(h.narrow(1, 0, 1).reshape([b, d])).mu;
            t = t + z.matmul(self.head.v.val());
        }
        t.reshape([n])
    }
}

/// Train the PLS-anchored head on `train` (values `y` in original units); `net`: the master
/// model (LoRA adapters added here) or `None` for the head alone.
pub fn fit_head(
    net: Option<SpektronModel>,
    lay: &TokenLayout,
    start: Start<'_>,
    train: &HeadInput,
    y: &[f64],
    cfg: HeadSettings,
    device: &Device,
) -> Result<HeadFit, SpxError> {
    let n = train.modality.len();
    let p = lay.n_points;
    if n == 0 || y.len() != n || train.x_pls.len() != n * p || train.x_net.len() != n * p {
        return Err(SpxError::field(
            "experiment",
            "pls_head",
            format!("{n} samples, {} values", y.len()),
        ));
    }
    let a = start.n_lv();
    let z = match &net {
        Some(m) => m.heads.z_chem,
        None => 1,
    };
    let net = match net {
        Some(m) => Some(lora::with_lora(m, cfg.lora_rank, cfg.lora_alpha)?),
        None => None,
    };
    let head = AnchoredHead {
        q: Param::from_tensor(tensor_from(vec![1.0; a], [a], device)),
        c: Param::from_tensor(tensor_from(vec![start.offset() as f32], [1], device)),
        v: Param::from_tensor(tensor_from(vec![0.0; z], [z, 1], device)),
    };
    let mut model = Anchored { net, head };
    let f = tensor_from(start.features(train.x_pls, p), [n, a], device);
    let t: Vec<f32> = y
        .iter()
        .map(|&v| ((v - start.y_mean) / start.y_std) as f32)
        .collect();
    let t = tensor_from(t, [n], device);
    let q0 = tensor_from(vec![1.0; a], [a], device);
    let mut opt = AdamWConfig::new().with_weight_decay(0.0).init();
    for _ in 0..cfg.steps {
        let pred = model.forward(lay, f.clone(), train, device);
        let mse = (pred - t.clone()).powf_scalar(2.0).mean();
        let pen = ((model.head.q.val() - q0.clone()).powf_scalar(2.0).sum()
            + model.head.v.val().powf_scalar(2.0).sum())
            * cfg.penalty;
        let loss = mse + pen;
        let g = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(cfg.lr, model, g);
    }
    let model = model.valid();
    let q: Vec<f64> = to_vec(model.head.q.val())
        .into_iter()
        .map(f64::from)
        .collect();
    let c = f64::from(to_vec(model.head.c.val())[0]);
    let v_norm = to_vec(model.head.v.val())
        .iter()
        .map(|&w| f64::from(w).powi(2))
        .sum::<f64>()
        .sqrt();
    Ok(HeadFit {
        model,
        y_mean: start.y_mean,
        y_std: start.y_std,
        q,
        c,
        v_norm,
    })
}

impl HeadFit {
    /// Predictions in original units for `inp`, in chunks of 64 rows; `start` as trained.
    pub fn predict(
        &self,
        lay: &TokenLayout,
        start: Start<'_>,
        inp: &HeadInput,
        device: &Device,
    ) -> Vec<f64> {
        let p = lay.n_points;
        let n = inp.modality.len();
        let a = start.n_lv();
        let mut out = Vec::with_capacity(n);
        let mut r0 = 0;
        while r0 < n {
            let r1 = (r0 + 64).min(n);
            let chunk = HeadInput {
                x_pls: &inp.x_pls[r0 * p..r1 * p],
                x_net: &inp.x_net[r0 * p..r1 * p],
                modality: &inp.modality[r0..r1],
            };
            let f = tensor_from(start.features(chunk.x_pls, p), [r1 - r0, a], device);
            let t = self.model.forward(lay, f, &chunk, device);
            out.extend(
                to_vec(t)
                    .into_iter()
                    .map(|v| self.y_mean + self.y_std * f64::from(v)),
            );
            r0 = r1;
        }
        out
    }
}

/// Shrinkage of the residual correction: the least-squares factor γ of `resid ≈ γ·corr` over
/// out-of-fold pairs, clamped to `[0, max]`; 0 when the corrections are all zero or not finite.
pub fn gate_factor(resid: &[f64], corr: &[f64], max: f64) -> f64 {
    let rc: f64 = resid.iter().zip(corr).map(|(r, c)| r * c).sum();
    let cc: f64 = corr.iter().map(|c| c * c).sum();
    if cc <= 0.0 || !rc.is_finite() || !cc.is_finite() {
        return 0.0;
    }
    (rc / cc).clamp(0.0, max.max(0.0))
}
