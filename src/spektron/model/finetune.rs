//! Supervised fine-tuning of the regression head (LoRA or full) with early stopping, and
//! test-time training (masked reconstruction on unlabelled target spectra, norms only).

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{SpektronModel, TokenLayout, lora, losses};
use crate::backend::{tensor_from, to_vec};
use crate::error::SpxError;
use crate::train::Monitor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinetuneMode {
    Lora,
    Full,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    pub mode: FinetuneMode,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lr: f64,
    pub weight_decay: f64,
    pub epochs: usize,
    pub batch: usize,
    pub patience: usize,
    pub val_fraction: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TttConfig {
    pub steps: usize,
    pub lr: f64,
    pub mask_ratio: f64,
    pub batch: usize,
    /// Which parameters TTT updates.
    #[serde(default)]
    pub scope: TttScope,
    /// Experiments (E3/E4): keep the TTT-adapted model only if its RMSEP on the labelled source
    /// calibration set is not worse than the master's; otherwise use the master unchanged.
    #[serde(default)]
    pub guard: bool,
}

/// Parameters test-time training adapts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TttScope {
    /// LayerNorm γ/β only.
    #[default]
    Norms,
    /// The whole encoder (embeddings, blocks, norms); the heads stay fixed.
    Encoder,
}

/// Labelled spectra: `x` row-major `[n, n_points]`, `y` row-major `[n, n_targets]`.
pub struct Labelled<'a> {
    pub x: &'a [f32],
    pub y: &'a [f32],
    pub modality: &'a [i8],
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FinetuneReport {
    pub epochs_run: usize,
    pub best_epoch: usize,
    /// NaN (JSON `null`) without a validation split.
    #[serde(deserialize_with = "nan_if_null")]
    pub best_val_loss: f64,
    pub train_loss: Vec<f64>,
    pub val_loss: Vec<f64>,
    pub trainable_params: usize,
    /// Target standardisation applied inside the model's regression head.
    pub y_mean: Vec<f64>,
    pub y_std: Vec<f64>,
}

/// JSON writes a NaN as `null`; read it back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

pub fn patches(lay: &TokenLayout, x: &[f32], rows: &[usize], device: &Device) -> Tensor<3> {
    let flat: Vec<f32> = rows
        .iter()
        .flat_map(|&r| lay.encode(&x[r * lay.n_points..(r + 1) * lay.n_points]))
        .collect();
    tensor_from(flat, [rows.len(), lay.n_patches, lay.patch], device)
}

fn domains(m: &[i8], rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let v: Vec<i64> = rows.iter().map(|&r| i64::from(m[r])).collect();
    Tensor::<1, Int>::from_ints(v.as_slice(), device)
}

/// Predictions in the original units: `[n, n_targets]` row-major.
pub fn predict(
    model: &SpektronModel,
    lay: &TokenLayout,
    x: &[f32],
    modality: &[i8],
    rep: &FinetuneReport,
    device: &Device,
) -> Vec<f64> {
    let n = modality.len();
    let k = rep.y_mean.len();
    let mut out = Vec::with_capacity(n * k);
    let rows: Vec<usize> = (0..n).collect();
    for chunk in rows.chunks(64) {
        let p = model.predict(
            patches(lay, x, chunk, device),
            domains(modality, chunk, device),
        );
        for (i, v) in to_vec(p).into_iter().enumerate() {
            out.push(f64::from(v) * rep.y_std[i % k] + rep.y_mean[i % k]);
        }
    }
    out
}

/// Reconstructed spectra: the unmasked forward pass's reconstructed tokens of every row of `x`
/// decoded back to `n_points` values (row-major, as `x`).
pub fn reconstruct(
    model: &SpektronModel,
    lay: &TokenLayout,
    x: &[f32],
    modality: &[i8],
    device: &Device,
) -> Vec<f32> {
    let n = modality.len();
    let mut out = Vec::with_capacity(n * lay.n_points);
    let rows: Vec<usize> = (0..n).collect();
    for chunk in rows.chunks(64) {
        let o = model.forward(
            patches(lay, x, chunk, device),
            domains(modality, chunk, device),
            None,
        );
        let tok = to_vec(o.recon);
        for t in tok.chunks(lay.padded()) {
            out.extend(lay.decode(t));
        }
    }
    out
}

/// The latent means of every row of `x`: z_chem `[n, z_chem]` and z_inst `[n, z_inst]`,
/// row-major.
pub fn latents(
    model: &SpektronModel,
    lay: &TokenLayout,
    x: &[f32],
    modality: &[i8],
    device: &Device,
) -> (Vec<f32>, Vec<f32>) {
    let n = modality.len();
    let (mut chem, mut inst) = (Vec::new(), Vec::new());
    let rows: Vec<usize> = (0..n).collect();
    for chunk in rows.chunks(64) {
        let o = model.forward(
            patches(lay, x, chunk, device),
            domains(modality, chunk, device),
            None,
        );
        chem.extend(to_vec(o.chem.mu));
        inst.extend(to_vec(o.inst.mu));
    }
    (chem, inst)
}

/// Count of parameters that currently receive gradients.
pub fn trainable_params(model: &SpektronModel) -> usize {
    struct C(usize);
    impl burn::module::ModuleVisitor for C {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<D>>) {
            if p.is_require_grad() {
                self.0 += p.shape().num_elements();
            }
        }
    }
    let mut c = C(0);
    model.visit(&mut c);
    c.0
}

/// Fine-tune on labelled target spectra. LoRA mode injects adapters first (backbone frozen);
/// full mode trains every parameter. Early stopping on a held-out part when there are ≥ 5
/// samples; the best model by validation loss is returned.
pub fn finetune(
    model: SpektronModel,
    lay: &TokenLayout,
    data: &Labelled,
    cfg: &FinetuneConfig,
    device: &Device,
    seed: u64,
) -> Result<(SpektronModel, FinetuneReport), SpxError> {
    finetune_scaled(model, lay, data, cfg, device, seed, None)
}

/// [`finetune`] with a given target standardisation `(mean, std)` instead of one estimated from
/// the training rows: a transfer step on a few samples must keep the scale the regression head
/// was trained with (a 5-sample standard deviation would rescale every prediction).
pub fn finetune_scaled(
    model: SpektronModel,
    lay: &TokenLayout,
    data: &Labelled,
    cfg: &FinetuneConfig,
    device: &Device,
    seed: u64,
    scale: Option<(&[f64], &[f64])>,
) -> Result<(SpektronModel, FinetuneReport), SpxError> {
    let n = data.modality.len();
    if n == 0
        || data.x.len() != n * lay.n_points
        || data.y.is_empty()
        || !data.y.len().is_multiple_of(n)
    {
        return Err(SpxError::field(
            "finetune",
            "data",
            format!(
                "inconsistent sizes: {n} spectra, {} values, {} targets",
                data.x.len(),
                data.y.len()
            ),
        ));
    }
    let k = data.y.len() / n;
    let mut model = match cfg.mode {
        FinetuneMode::Lora => lora::with_lora(model, cfg.lora_rank, cfg.lora_alpha)?,
        FinetuneMode::Full => model,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng);
    let n_val = if n >= 5 && cfg.patience > 0 {
        ((cfg.val_fraction * n as f64).round() as usize).clamp(1, n - 2)
    } else {
        0
    };
    let (val, train) = idx.split_at(n_val);
    let (val, mut train) = (val.to_vec(), train.to_vec());
    let mut y_mean = vec![0.0; k];
    let mut y_std = vec![0.0; k];
    for j in 0..k {
        let v: Vec<f64> = train
            .iter()
            .map(|&r| f64::from(data.y[r * k + j]))
            .collect();
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let s = (v.iter().map(|a| (a - m).powi(2)).sum::<f64>()
            / v.len().max(2).saturating_sub(1) as f64)
            .sqrt();
        y_mean[j] = m;
        y_std[j] = if s > 0.0 { s } else { 1.0 };
    }
    if let Some((m, s)) = scale {
        if m.len() != k || s.len() != k {
            return Err(SpxError::field(
                "finetune",
                "scale",
                format!("{} / {} scale values for {k} targets", m.len(), s.len()),
            ));
        }
        y_mean = m.to_vec();
        y_std = s.to_vec();
    }
    let (ym, ysd) = (&y_mean, &y_std);
    let ys = |rows: &[usize]| -> Tensor<2> {
        let v: Vec<f32> = rows
            .iter()
            .flat_map(|&r| {
                (0..k).map(move |j| ((f64::from(data.y[r * k + j]) - ym[j]) / ysd[j]) as f32)
            })
            .collect();
        tensor_from(v, [rows.len(), k], device)
    };
    let mut opt = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay as f32)
        .init();
    let trainable = trainable_params(&model);
    let (mut train_loss, mut val_loss) = (Vec::new(), Vec::new());
    // Early stopping on the validation loss; the best epoch's model is returned.
    let mut monitor = Monitor::new(0.0);
    let mut best_model = model.clone();
    let mut epochs_run = 0;
    for epoch in 0..cfg.epochs {
        train.shuffle(&mut rng);
        let mut acc = 0.0;
        for b in train.chunks(cfg.batch.max(1)) {
            let pred = model.predict(
                patches(lay, data.x, b, device),
                domains(data.modality, b, device),
            );
            let loss = losses::mse(pred, ys(b));
            acc += f64::from(loss.clone().into_scalar::<f32>()) * b.len() as f64;
            let g = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(cfg.lr, model, g);
        }
        train_loss.push(acc / train.len() as f64);
        epochs_run = epoch + 1;
        if val.is_empty() {
            continue;
        }
        let vm = model.valid();
        let pred = vm.predict(
            patches(lay, data.x, &val, device),
            domains(data.modality, &val, device),
        );
        let vl = f64::from(losses::mse(pred, ys(&val)).into_scalar::<f32>());
        val_loss.push(vl);
        if monitor.observe(epoch + 1, vl) {
            best_model = model.clone();
        } else if monitor.stalled(cfg.patience) {
            break;
        }
    }
    let (best_val_loss, best_epoch, model) = if val.is_empty() {
        (f64::NAN, epochs_run, model)
    } else {
        (monitor.best, monitor.best_at, best_model)
    };
    Ok((
        model,
        FinetuneReport {
            epochs_run,
            best_epoch,
            best_val_loss,
            train_loss,
            val_loss,
            trainable_params: trainable,
            y_mean,
            y_std,
        },
    ))
}

/// Test-time training: masked-reconstruction steps on unlabelled target spectra, updating only
/// the LayerNorm parameters. Returns the adapted model and the MSRP loss per step.
#[allow(clippy::too_many_arguments)]
pub fn ttt(
    model: SpektronModel,
    lay: &TokenLayout,
    x: &[f32],
    modality: &[i8],
    cfg: &TttConfig,
    mask_block: usize,
    device: &Device,
    seed: u64,
) -> Result<(SpektronModel, Vec<f64>), SpxError> {
    ttt_observed(
        model,
        lay,
        x,
        modality,
        cfg,
        mask_block,
        device,
        seed,
        |_, _| Ok(()),
    )
}

/// [`ttt`] calling `observe(k, model)` with the model after k steps, for k = 0..=steps.
#[allow(clippy::too_many_arguments)]
pub fn ttt_observed(
    model: SpektronModel,
    lay: &TokenLayout,
    x: &[f32],
    modality: &[i8],
    cfg: &TttConfig,
    mask_block: usize,
    device: &Device,
    seed: u64,
    mut observe: impl FnMut(usize, &SpektronModel) -> Result<(), SpxError>,
) -> Result<(SpektronModel, Vec<f64>), SpxError> {
    let n = modality.len();
    if n == 0 || x.len() != n * lay.n_points {
        return Err(SpxError::field(
            "ttt",
            "data",
            format!("{n} spectra but {} values", x.len()),
        ));
    }
    let mut model = match cfg.scope {
        TttScope::Norms => lora::norms_only(model)?,
        TttScope::Encoder => lora::encoder_only(model)?,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut opt = AdamWConfig::new().with_weight_decay(0.0).init();
    let mut hist = Vec::with_capacity(cfg.steps);
    let mut order: Vec<usize> = (0..n).collect();
    observe(0, &model)?;
    for step in 0..cfg.steps {
        order.shuffle(&mut rng);
        let b: Vec<usize> = order.iter().copied().take(cfg.batch.max(1)).collect();
        let mask: Vec<f32> = b
            .iter()
            .flat_map(|_| losses::block_mask(lay.n_patches, cfg.mask_ratio, mask_block, &mut rng))
            .map(|m| if m { 1.0 } else { 0.0 })
            .collect();
        let mask = tensor_from(mask, [b.len(), lay.n_patches], device);
        let p = patches(lay, x, &b, device);
        let out = model.forward(p.clone(), domains(modality, &b, device), Some(mask.clone()));
        let loss = losses::masked_mse(out.recon, p, mask);
        hist.push(f64::from(loss.clone().into_scalar::<f32>()));
        let g = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(cfg.lr, model, g);
        observe(step + 1, &model)?;
    }
    Ok((model, hist))
}
