//! Supervised deep baselines of the plan's E3/E4 tables: a 1-D CNN ([`cnn::Cnn1d`]), a plain
//! Transformer ([`transformer::SpectrumTransformer`]) and LoRA-CT (LoRA fine-tuning of that
//! Transformer). Each is trained on the labelled source-instrument calibration spectra (no
//! pretraining) and transferred with the same N labelled target spectra as the classical rows,
//! on the same seeded splits ([`arms::run_arms`]).

pub mod arms;
pub mod cnn;
pub mod transformer;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backend::{tensor_from, to_vec};
use crate::error::SpxError;
use crate::train::Monitor;

/// `[spektron.supervised]`: sizes and training of the supervised deep baselines (used when
/// `spektron.experiment.supervised = true`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SupervisedConfig {
    /// CNN: filters of the first layer (the second has twice as many), kernel, stride.
    pub cnn_channels: usize,
    pub cnn_kernel: usize,
    pub cnn_stride: usize,
    /// Transformer: points per token, width, heads, layers, feed-forward width.
    pub tf_patch: usize,
    pub tf_d_model: usize,
    pub tf_heads: usize,
    pub tf_layers: usize,
    pub tf_d_ff: usize,
    /// Source training (AdamW): epochs, learning rate, batch, weight decay.
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub weight_decay: f64,
    /// Early stopping: epochs without validation improvement (0 = off), held-out fraction
    /// (source training and transfer; transfer holds out only when N ≥ 5).
    pub patience: usize,
    pub val_fraction: f64,
    /// Transfer on the N target spectra: epochs, and the learning rate of full fine-tuning.
    pub transfer_epochs: usize,
    pub transfer_lr: f64,
    /// LoRA-CT: adapter rank, α, learning rate.
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub lora_lr: f64,
}

/// A model that maps spectra `[B, n_points]` to one standardised property `[B, 1]`.
pub trait Regressor: Module + Clone {
    fn regress(&self, x: Tensor<2>) -> Tensor<2>;
}

/// One training run's settings.
#[derive(Clone, Copy, Debug)]
pub struct Fit {
    pub epochs: usize,
    pub lr: f64,
    pub batch: usize,
    pub weight_decay: f64,
    pub patience: usize,
    pub val_fraction: f64,
}

/// What a training run did.
#[derive(Clone, Debug, Serialize)]
pub struct FitReport {
    pub epochs_run: usize,
    /// The epoch whose model is returned (the last one without a validation split).
    pub best_epoch: usize,
    pub train_loss: Vec<f64>,
}

fn rows_tensor(x: &[f32], p: usize, rows: &[usize], device: &Device) -> Tensor<2> {
    let v: Vec<f32> = rows
        .iter()
        .flat_map(|&r| x[r * p..(r + 1) * p].iter().copied())
        .collect();
    tensor_from(v, [rows.len(), p], device)
}

fn mse(pred: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
    (pred - y).powi_scalar(2).mean()
}

/// Train `model` on spectra `x` (row-major, `p` points) and standardised targets `y` with AdamW
/// (MSE). With ≥ 5 rows and `patience > 0`, a seeded `val_fraction` of the rows is held out and
/// the model of the best validation epoch is returned.
pub fn fit<M: Regressor>(
    mut model: M,
    x: &[f32],
    y: &[f32],
    p: usize,
    s: &Fit,
    device: &Device,
    seed: u64,
) -> Result<(M, FitReport), SpxError> {
    let n = y.len();
    if n == 0 || p == 0 || x.len() != n * p {
        return Err(SpxError::field(
            "supervised",
            "data",
            format!("{n} targets but {} spectrum values of {p} points", x.len()),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut rng);
    let n_val = if n >= 5 && s.patience > 0 {
        ((s.val_fraction * n as f64).round() as usize).clamp(1, n - 2)
    } else {
        0
    };
    let (val, train) = idx.split_at(n_val);
    let (val, mut train) = (val.to_vec(), train.to_vec());
    let ys = |rows: &[usize]| {
        tensor_from(
            rows.iter().map(|&r| y[r]).collect(),
            [rows.len(), 1],
            device,
        )
    };
    let mut opt = AdamWConfig::new()
        .with_weight_decay(s.weight_decay as f32)
        .init();
    let mut monitor = Monitor::new(0.0);
    let mut best = model.clone();
    let mut train_loss = Vec::with_capacity(s.epochs);
    for epoch in 0..s.epochs {
        train.shuffle(&mut rng);
        let mut acc = 0.0;
        for b in train.chunks(s.batch.max(1)) {
            let loss = mse(model.regress(rows_tensor(x, p, b, device)), ys(b));
            acc += f64::from(loss.clone().into_scalar::<f32>()) * b.len() as f64;
            let g = GradientsParams::from_grads(loss.backward(), &model);
            model = opt.step(s.lr, model, g);
        }
        train_loss.push(acc / train.len() as f64);
        if val.is_empty() {
            continue;
        }
        let vl = mse(
            model.valid().regress(rows_tensor(x, p, &val, device)),
            ys(&val),
        );
        if monitor.observe(epoch + 1, f64::from(vl.into_scalar::<f32>())) {
            best = model.clone();
        } else if monitor.stalled(s.patience) {
            break;
        }
    }
    let epochs_run = train_loss.len();
    let (model, best_epoch) = if val.is_empty() {
        (model, epochs_run)
    } else {
        (best, monitor.best_at)
    };
    Ok((
        model,
        FitReport {
            epochs_run,
            best_epoch,
            train_loss,
        },
    ))
}

/// Standardised predictions of `model` for every row of `x` (`p` points).
pub fn predict<M: Regressor>(model: &M, x: &[f32], p: usize, device: &Device) -> Vec<f32> {
    let m = model.valid();
    let n = x.len() / p.max(1);
    let rows: Vec<usize> = (0..n).collect();
    rows.chunks(64)
        .flat_map(|c| to_vec(m.regress(rows_tensor(x, p, c, device))))
        .collect()
}
